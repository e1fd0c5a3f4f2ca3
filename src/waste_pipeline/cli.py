"""``waste-pipeline``: the command line (the sync twin, :class:`~waste_pipeline.ScanPipeline`).

Commands::

    waste-pipeline scan PATH_OR_URL... [--text T] [--language ko|en] [--json] [--no-store]
    waste-pipeline serve [--host H] [--port P]
    waste-pipeline stand-in [stand-in options...]
    waste-pipeline db init
    waste-pipeline demo

Every command runs with nothing configured: a missing database URL, broker URL or API key is
replaced by an embedded PostgreSQL, an embedded Redis or the OpenAI stand-in (announced on
stderr; see :mod:`waste_pipeline.stack`).

``scan`` takes files, folders (their image files: ``.jpg .jpeg .png .webp .gif``) and
``http(s)://`` or ``data:`` URLs; each input is one scan. Several inputs are scanned at once,
at most ``settings.scan_concurrency`` (``--concurrency``), with a progress bar on stderr and a
summary. Results go to stdout: readable text, or one JSON object per line with ``--json``.

Exit status: 0 every scan ``done``; 1 at least one scan failed (or an input could not be
read); 2 usage error; 3 the stack could not start (database, embedded servers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import _sync_compat as compat
from .errors import InvalidInputError, WastePipelineError
from .models import ScanResult, new_scan_id
from .settings import Settings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_SETUP", "EXIT_USAGE", "IMAGE_SUFFIXES", "main"]

log = logging.getLogger("waste_pipeline.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SETUP = 3

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
"""File name suffixes taken from a folder (case-insensitive)."""

PROBLEM_BASE = "https://waste-pipeline.dev/problems/"


# --- inputs ------------------------------------------------------------------------------------


@dataclass
class ScanInput:
    """One thing to scan: a URL string or a local file; ``error`` when it cannot be used."""

    label: str
    url: str | None = None
    path: Path | None = None
    error: str | None = None


@dataclass
class Outcome:
    """What became of one input."""

    item: ScanInput
    result: ScanResult | None = None
    error: dict[str, Any] | None = None
    scan_id: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the scan ended ``done``."""
        return self.result is not None and self.result.status == "done"


# The API's rule (waste_pipeline.api.schemas.clean_user_text), kept here so the CLI does not
# import FastAPI: C0/C1 controls but tab and newline, DEL, lone surrogates (what a non-UTF-8
# argument decodes to), and non-characters; none of them may reach the database.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean_text(value: str) -> str:
    """``--text`` as passed on: unsafe characters removed, surrounding whitespace stripped."""
    return _UNSAFE_TEXT.sub("", value).strip()


def _is_url(text: str) -> bool:
    low = text[:16].lower()
    return "://" in text[:32] or low.startswith("data:")


def collect_inputs(raw: Sequence[str]) -> list[ScanInput]:
    """Expand the command line's inputs: URLs as given, files, and folders' image files."""
    items: list[ScanInput] = []
    for value in raw:
        if _is_url(value):
            items.append(ScanInput(label=_short(value), url=value))
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                items.append(ScanInput(label=value, error="no image files in this folder"))
            items.extend(ScanInput(label=str(p), path=p) for p in files)
        elif path.is_file():
            items.append(ScanInput(label=value, path=path))
        elif path.exists():
            items.append(ScanInput(label=value, error="not a regular file or folder"))
        else:
            items.append(
                ScanInput(
                    label=_short(value),
                    error="no such file or folder (and not an http(s):// or data: URL)",
                )
            )
    return items


def _short(text: str, limit: int = 80) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_file(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: enough for the pipeline to refuse an oversized file."""
    with path.open("rb") as fh:
        return fh.read(limit + 1)


# --- scan --------------------------------------------------------------------------------------


def _scan_one(
    pipeline: Any, item: ScanInput, text: str, language: str | None, max_bytes: int
) -> Outcome:
    start = time.perf_counter()
    outcome = Outcome(item=item)
    if item.error is not None:
        outcome.error = {"code": "input_unreadable", "message": item.error}
        return outcome
    scan_id = new_scan_id()
    outcome.scan_id = scan_id
    try:
        image: str | bytes
        if item.path is not None:
            try:
                image = _read_file(item.path, max_bytes)
            except OSError as exc:
                outcome.scan_id = None
                outcome.error = {
                    "code": "input_unreadable",
                    "message": f"cannot read the file ({exc.strerror or type(exc).__name__})",
                }
                return outcome
        else:
            assert item.url is not None
            image = item.url
        outcome.result = pipeline.scan(image, text, scan_id, language=language)
    except WastePipelineError as exc:
        outcome.error = exc.to_dict()
    finally:
        outcome.seconds = time.perf_counter() - start
    return outcome


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    if outcome.result is not None:
        data = outcome.result.model_dump(mode="json")
        data["input"] = outcome.item.label
        return data
    error = outcome.error or {"code": "error", "message": "unknown failure"}
    return {
        "input": outcome.item.label,
        "scan_id": outcome.scan_id,
        "status": "failed",
        "type": PROBLEM_BASE + str(error.get("code", "error")),
        "error": error,
    }


def _print_readable(outcomes: Sequence[Outcome], out: TextIO) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(file=out, highlight=False, soft_wrap=True)
    for outcome in outcomes:
        label = escape(outcome.item.label)
        if outcome.ok and outcome.result is not None:
            result = outcome.result
            cls = result.classification
            where = " / ".join(x for x in (cls.major, cls.middle) if x) if cls else "?"
            console.print(f"[green]done[/]  {label}  →  [bold]{escape(where)}[/]")
            console.print(f"      scan {result.scan_id}  rules: {escape(str(result.rules_key))}")
            if result.answer is not None:
                for n, step in enumerate(result.answer.disposal_steps, 1):
                    console.print(f"      {n}. {escape(step)}")
                for fix in result.answer.to_fix:
                    console.print(f"      [yellow]fix:[/] {escape(fix)}")
                console.print(f"      {escape(result.answer.answer)}")
        else:
            error = outcome.error or {}
            scan = f"  (scan {outcome.scan_id})" if outcome.scan_id else ""
            console.print(
                f"[red]failed[/] {label}  {escape(str(error.get('code', 'error')))}: "
                f"{escape(str(error.get('message', '')))}{scan}"
            )


def _summary(outcomes: Sequence[Outcome], seconds: float, err: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    done = sum(1 for o in outcomes if o.ok)
    failed = len(outcomes) - done
    table = Table(title=None, show_header=True, header_style="bold")
    table.add_column("scans", justify="right")
    table.add_column("done", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    table.add_column("seconds", justify="right")
    table.add_row(str(len(outcomes)), str(done), str(failed), f"{seconds:.2f}")
    Console(file=err, highlight=False).print(table)
    codes: dict[str, int] = {}
    for o in outcomes:
        if not o.ok and o.error:
            code = str(o.error.get("code", "error"))
            codes[code] = codes.get(code, 0) + 1
    if codes:
        shown = ", ".join(f"{code} ×{n}" for code, n in sorted(codes.items()))
        print(f"failures: {shown}", file=err)


@contextlib.contextmanager
def _progress(total: int, err: TextIO, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=err),
        transient=True,
    )
    with progress:
        task = progress.add_task("scan", total=total)

        def advance() -> None:
            progress.advance(task)

        yield advance


def cmd_scan(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    """``waste-pipeline scan``."""
    from ._sync.pipeline import ScanPipeline
    from .stack import EmbeddedStack

    items = collect_inputs(args.inputs)
    text = clean_text(args.text or "")
    if args.no_store:
        settings = settings.model_copy(update={"store_results": False})
    if args.concurrency is not None:
        settings = settings.model_copy(update={"scan_concurrency": args.concurrency})
    started = time.perf_counter()
    try:
        embedded = EmbeddedStack(settings, need_broker=False, stream=err)
        stack = embedded.start()
    except Exception as exc:
        print(f"error: could not start the local stack: {_safe(exc, settings)}", file=err)
        return EXIT_SETUP
    try:
        try:
            pipeline = ScanPipeline(stack.settings).open()
        except WastePipelineError as exc:
            print(f"error: {exc.code}: {exc.message}", file=err)
            return EXIT_SETUP
        try:
            lock = threading.Lock()
            with _progress(len(items), err, enabled=not args.quiet) as advance:

                def run(item: ScanInput) -> Outcome:
                    outcome = _scan_one(
                        pipeline, item, text, args.language, stack.settings.image_max_bytes
                    )
                    if advance is not None:
                        with lock:
                            advance()
                    return outcome

                results = compat.map_bounded(
                    run, items, limit=stack.settings.scan_concurrency
                )
        finally:
            pipeline.close()
    finally:
        embedded.close()
    outcomes: list[Outcome] = []
    for item, res in zip(items, results, strict=True):
        if isinstance(res, BaseException):
            # A bug, not a scan failure: report it without a traceback (logged at DEBUG).
            log.debug("scan of %s raised", item.label, exc_info=res)
            outcomes.append(
                Outcome(item=item, error={"code": "internal_error", "message": type(res).__name__})
            )
        else:
            outcomes.append(res)
    if args.json:
        for outcome in outcomes:
            out.write(json.dumps(_outcome_json(outcome), ensure_ascii=False) + "\n")
        out.flush()
    else:
        _print_readable(outcomes, out)
    if not args.quiet:
        _summary(outcomes, time.perf_counter() - started, err)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def _safe(exc: BaseException, settings: Settings) -> str:
    from .errors import redact

    return redact(f"{type(exc).__name__}: {exc}", settings.api_key(), settings.dsn())[:500]


# --- serve, db, stand-in, demo -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    """``waste-pipeline serve``: the API under uvicorn, with embedded defaults."""
    import uvicorn

    from .api import create_app
    from .stack import EmbeddedStack

    try:
        embedded = EmbeddedStack(settings, stream=err)
        stack = embedded.start()
    except Exception as exc:
        print(f"error: could not start the local stack: {_safe(exc, settings)}", file=err)
        return EXIT_SETUP
    try:
        # Whatever is imported later (the Celery app of queued mode) sees the same config.
        os.environ.update(stack.env())
        app = create_app(stack.settings)
        print(f"serving on http://{args.host}:{args.port} (docs at /docs)", file=err, flush=True)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=5,
        )
    finally:
        embedded.close()
    return EXIT_OK


def cmd_db_init(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    """``waste-pipeline db init``: create the ``scans`` table (safe to run twice)."""
    from ._sync.store import ScanStore
    from .stack import EmbeddedStack, describe_url

    settings = settings.model_copy(update={"store_results": True})
    try:
        embedded = EmbeddedStack(settings, need_broker=False, need_model=False, stream=err)
        stack = embedded.start()
    except Exception as exc:
        print(f"error: could not start the local stack: {_safe(exc, settings)}", file=err)
        return EXIT_SETUP
    try:
        try:
            store = ScanStore.from_settings(stack.settings)
            try:
                store.create_schema()
            finally:
                store.close()
        except WastePipelineError as exc:
            print(f"error: {exc.code}: {exc.message}", file=err)
            return EXIT_SETUP
        print(f"database schema ready ({describe_url(stack.settings.dsn())})", file=out)
    finally:
        embedded.close()
    return EXIT_OK


def cmd_standin(argv: Sequence[str]) -> int:
    """``waste-pipeline stand-in ...``: the stand-in's own command line."""
    from .standin.__main__ import main as standin_main

    try:
        return standin_main(list(argv))
    except SystemExit as exc:  # its argparse: --help, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def cmd_demo(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    """``waste-pipeline demo``: every door, then the gevent failure replay (``demo.py``)."""
    from .demo import run_demo

    report = run_demo(users=args.users, seconds=args.seconds, out=out, report_path=args.report)
    doors_ok = all(d.status == "done" for d in report.doors)
    twin = [r for r in report.replays if "twin" in r.worker]
    twin_ok = all(r.failure_rate == 0.0 and r.submitted > 0 for r in twin)
    return EXIT_OK if doors_ok and twin_ok else EXIT_FAILED


# --- parser ------------------------------------------------------------------------------------


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The ``waste-pipeline`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="waste-pipeline",
        description="Photograph an item, learn how to throw it away. Missing configuration is "
        "replaced by embedded servers and the OpenAI stand-in (announced on stderr).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = sub.add_parser(
        "scan",
        help="scan photos (files, folders, http(s):// or data: URLs)",
        description="Scan each input (a folder: its .jpg/.jpeg/.png/.webp/.gif files). Exit "
        "status 1 when any scan failed.",
    )
    scan.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    scan.add_argument("--text", default="", help="what you say about the item (all inputs)")
    scan.add_argument("--language", choices=("ko", "en"), default=None, help="answer language")
    scan.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    scan.add_argument(
        "--no-store", action="store_true", help="do not store results (no database needed)"
    )
    scan.add_argument(
        "--concurrency", type=_positive, default=None, help="scans at once (default: setting)"
    )
    scan.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr"
    )

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default %(default)s)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn log level",
    )

    sub.add_parser(
        "stand-in",
        help="run the OpenAI stand-in (a test double); options: stand-in --help",
        add_help=False,
    )

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_sub.add_parser("init", help="create the scans table (safe to run twice)")

    demo = sub.add_parser(
        "demo", help="the whole system on embedded defaults: every door, then the gevent replay"
    )
    demo.add_argument("--users", type=_positive, default=100, help="replay users (100)")
    demo.add_argument("--seconds", type=float, default=10.0, help="replay duration (10)")
    demo.add_argument("--report", type=Path, default=None, help="also write the report as JSON")
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    # 'stand-in' hands every following argument to the stand-in's own parser.
    if args_list[:1] == ["stand-in"]:
        return cmd_standin(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: a bad variable
        print(f"error: invalid configuration: {_first_line(exc)}", file=err)
        return EXIT_SETUP
    commands = {"scan": cmd_scan, "serve": cmd_serve, "demo": cmd_demo}
    try:
        if args.command == "db":
            return cmd_db_init(args, settings, out, err)
        return commands[args.command](args, settings, out, err)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except InvalidInputError as exc:
        print(f"error: {exc.message}", file=err)
        return EXIT_USAGE


def _first_line(exc: BaseException) -> str:
    from .errors import redact

    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return redact(" ".join(lines[:3]))[:300]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
