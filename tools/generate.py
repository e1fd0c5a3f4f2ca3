"""Generate the sync twin from the async source, or check that it is up to date.

    python tools/generate.py            # write src/waste_pipeline/_sync and tests/_sync
    python tools/generate.py --check    # write nothing; exit 1 naming every stale file

``nox -s generate`` runs this. The token work is unasync's; the rules (``tools/unasync_rules.py``)
and the guards are ours:

* line 1 of every source is a marker comment that becomes the "generated" header, so each
  generated file has exactly its source's line numbers (a gevent traceback points at the same
  line of the async source);
* names that unasync would leave silently wrong (``asyncio``, ``anext``, ...) are refused in the
  source;
* ``await(x)`` is handled (plain unasync turns it into ``x)``);
* the generated text is linted: no ``async``/``await``, no ``asyncio``/``anyio`` import, no
  ``Async*`` name may remain;
* ``--check`` reports stale or hand-edited files, missing files and orphans (generated files
  whose source is gone, or hand-written files inside a generated tree).
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import time
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tokenize_rt
import unasync

try:
    from tools.unasync_rules import FORBIDDEN_IN_SOURCE, HEADER, REPLACEMENTS, SOURCE_MARKER, TREES
except ImportError:  # run as a script: tools/ is on sys.path, the repo root is not
    from unasync_rules import (  # type: ignore[no-redef]
        FORBIDDEN_IN_SOURCE,
        HEADER,
        REPLACEMENTS,
        SOURCE_MARKER,
        TREES,
    )

ROOT = Path(__file__).resolve().parents[1]


class GenerationError(Exception):
    """The async source cannot be transformed safely; the message says where and why."""


class _Rule(unasync.Rule):  # type: ignore[misc]
    """unasync's rule, fixed so that ``await(x)`` keeps its parenthesis."""

    def _unasync_tokens(self, tokens: list[tokenize_rt.Token]) -> Iterator[tokenize_rt.Token]:
        skip_ws = False
        for token in tokens:
            if skip_ws:
                skip_ws = False
                if token.name == "UNIMPORTANT_WS":
                    continue
            if token.src in ("async", "await") and token.name == "NAME":
                skip_ws = True
                continue
            if token.name == "NAME":
                token = token._replace(src=self._unasync_name(token.src))
            elif token.name == "STRING":
                quote = token.src[0]
                if token.src[-1] == quote and quote in "\"'" and token.src[1:-1].isidentifier():
                    token = token._replace(src=quote + self._unasync_name(token.src[1:-1]) + quote)
            yield token


_RULE = _Rule("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)


def _check_source(text: str, where: str) -> None:
    lines = text.splitlines()
    if not lines or not lines[0].startswith(SOURCE_MARKER):
        raise GenerationError(
            f"{where}:1: an async source must start with a '{SOURCE_MARKER} ...' line "
            "(the generator replaces it with the 'generated' header, keeping line numbers 1:1)"
        )
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise GenerationError(f"{where}: cannot tokenize: {exc}") from exc
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    fstring_depth = 0
    for tok in toks:
        if tok.type == tokenize.NAME and tok.string in FORBIDDEN_IN_SOURCE:
            raise GenerationError(
                f"{where}:{tok.start[0]}: '{tok.string}' in the async source: "
                f"{FORBIDDEN_IN_SOURCE[tok.string]}"
            )
        if fstring_start is not None and tok.type == fstring_start:
            fstring_depth += 1
        elif fstring_end is not None and tok.type == fstring_end:
            fstring_depth -= 1
        in_old_fstring = tok.type == tokenize.STRING and tok.string.lstrip("rbRB")[:1] in "fF"
        if (in_old_fstring and "await" in tok.string) or (
            fstring_depth and tok.type == tokenize.NAME and tok.string == "await"
        ):
            raise GenerationError(
                f"{where}:{tok.start[0]}: 'await' inside an f-string; await into a "
                "variable first (unasync's output differs between Python versions)"
            )


def transform(text: str, source_rel: str) -> str:
    """Return the sync twin of one async source file (``source_rel`` names it in the header)."""
    _check_source(text, source_rel)
    tokens = tokenize_rt.src_to_tokens(text)
    out = tokenize_rt.tokens_to_src(list(_RULE._unasync_tokens(tokens)))
    _, sep, rest = out.partition("\n")
    out = HEADER.format(source=source_rel) + sep + rest
    problems = lint_generated(out, source_rel.replace("_async", "_sync"))
    if problems:
        raise GenerationError("\n".join(problems))
    return out


def lint_generated(text: str, where: str) -> list[str]:
    """Problems in a generated file: any async construct, asyncio/anyio import or Async* name."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return [f"{where}:{exc.lineno}: generated code does not parse: {exc.msg}"]
    problems: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.AsyncFunctionDef | ast.AsyncWith | ast.AsyncFor | ast.Await):
            problems.append(f"{where}:{line}: async construct left: {type(node).__name__}")
        elif isinstance(node, ast.comprehension) and node.is_async:
            problems.append(f"{where}:{line}: async comprehension left")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("asyncio", "anyio"):
                    problems.append(f"{where}:{line}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in ("asyncio", "anyio"):
                problems.append(f"{where}:{line}: imports from {node.module}")
            for alias in node.names:
                if alias.name.startswith("Async") or (alias.asname or "").startswith("Async"):
                    problems.append(f"{where}:{line}: Async name imported: {alias.name}")
        elif isinstance(node, ast.Name) and (node.id.startswith("Async") or node.id == "asyncio"):
            problems.append(f"{where}:{line}: name left: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("Async"):
            problems.append(f"{where}:{line}: attribute left: {node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("Async"):
            problems.append(f"{where}:{line}: definition left: {node.name}")
    return problems


@dataclass(frozen=True)
class Pair:
    """One async source file and the path of its generated twin."""

    source: Path
    target: Path


def pairs(root: Path = ROOT) -> list[Pair]:
    """Every (source, target) pair of every tree."""
    found: list[Pair] = []
    for src_dir, dst_dir in TREES:
        src_root, dst_root = root / src_dir, root / dst_dir
        for source in sorted(src_root.rglob("*.py")):
            found.append(Pair(source, dst_root / source.relative_to(src_root)))
    return found


def expected(root: Path = ROOT) -> dict[Path, str]:
    """The generated tree as it should be: target path -> text."""
    return {
        p.target: transform(p.source.read_text(encoding="utf-8"), str(p.source.relative_to(root)))
        for p in pairs(root)
    }


def _generated_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for _, dst_dir in TREES:
        files.extend(sorted((root / dst_dir).rglob("*.py")))
    return files


def _is_generated(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        return fh.readline().startswith("# GENERATED from ")


def check(root: Path = ROOT) -> list[str]:
    """Every way the generated trees differ from what ``generate`` would write."""
    want = expected(root)
    problems: list[str] = []
    for target, text in want.items():
        rel = target.relative_to(root)
        if not target.exists():
            problems.append(f"{rel}: missing (run `nox -s generate`)")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{rel}: stale or hand-edited (run `nox -s generate`)")
    for path in _generated_files(root):
        if path not in want:
            problems.append(f"{path.relative_to(root)}: orphan: no async source")
    return problems


def generate(root: Path = ROOT) -> list[Path]:
    """Write the generated trees; remove generated orphans. Returns the files written."""
    want = expected(root)
    for path in _generated_files(root):
        if path not in want:
            if not _is_generated(path):
                raise GenerationError(
                    f"{path.relative_to(root)}: a hand-written file inside a generated tree; "
                    "move it to the async tree (or delete it)"
                )
            path.unlink()
    written: list[Path] = []
    for target, text in want.items():
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; fail when stale")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.check:
            problems = check(args.root)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"generate --check: {len(problems)} problem(s)", file=sys.stderr)
                return 1
            print(f"generate --check: up to date ({time.perf_counter() - start:.2f} s)")
            return 0
        written = generate(args.root)
    except GenerationError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path.relative_to(args.root)}")
    print(f"generate: {len(written)} file(s) written in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
