"""The twins match: same public API and signatures, same line numbers, sync is really sync."""

from __future__ import annotations

import importlib
import inspect
import types
from pathlib import Path

import pytest

from tools import twin_checks
from tools.unasync_rules import TREES

ROOT = Path(__file__).resolve().parents[1]
ASYNC_PKG = ROOT / "src/waste_pipeline/_async"
MODULES = sorted(p.stem for p in ASYNC_PKG.glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_public_api_parity(name: str) -> None:
    a = importlib.import_module(f"waste_pipeline._async.{name}")
    s = importlib.import_module(f"waste_pipeline._sync.{name}")
    assert twin_checks.parity_problems(a, s) == []


def test_compat_twins_offer_the_same_primitives() -> None:
    from waste_pipeline import _async_compat, _sync_compat

    missing = set(_async_compat.__all__) - set(_sync_compat.__all__)
    assert not missing
    for name in _async_compat.__all__:
        a, s = getattr(_async_compat, name), getattr(_sync_compat, name)
        if inspect.isfunction(a):
            assert not inspect.iscoroutinefunction(s)
            assert list(inspect.signature(a).parameters) == list(inspect.signature(s).parameters)


def test_db_driver_twins_have_the_same_methods() -> None:
    from waste_pipeline._async_db import AsyncpgDatabase
    from waste_pipeline._sync_db import PsycopgDatabase

    a = types.ModuleType("a")
    a.AsyncpgDatabase = AsyncpgDatabase  # type: ignore[attr-defined]
    a.__all__ = ["AsyncpgDatabase"]  # type: ignore[attr-defined]
    s = types.ModuleType("s")
    s.PsycopgDatabase = PsycopgDatabase  # type: ignore[attr-defined]
    s.__all__ = ["PsycopgDatabase"]  # type: ignore[attr-defined]
    assert twin_checks.parity_problems(a, s) == []


def _pairs() -> list[tuple[Path, Path]]:
    out = []
    for src, dst in TREES:
        for p in sorted((ROOT / src).rglob("*.py")):
            out.append((p, ROOT / dst / p.relative_to(ROOT / src)))
    return out


@pytest.mark.parametrize("pair", _pairs(), ids=lambda p: str(p[0].relative_to(ROOT)))
def test_line_numbers_are_kept(pair: tuple[Path, Path]) -> None:
    source, generated = pair
    assert (
        twin_checks.line_problems(source.read_text(), generated.read_text(), str(generated)) == []
    )


# --- planted defects --------------------------------------------------------------------------


def test_line_check_catches_a_shifted_definition() -> None:
    src = "# x\nasync def f():\n    pass\n\nclass AsyncThing:\n    pass\n"
    gen = "# x\n\ndef f():\n    pass\nclass Thing:\n    pass\n"
    problems = twin_checks.line_problems(src, gen, "planted.py")
    assert any("should be" in p for p in problems)


def test_line_check_catches_a_different_line_count() -> None:
    problems = twin_checks.line_problems("a = 1\n", "a = 1\nb = 2\n", "planted.py")
    assert any("lines" in p for p in problems)


def _module(name: str, **members: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in members.items():
        setattr(mod, k, v)
    mod.__all__ = list(members)  # type: ignore[attr-defined]
    return mod


def test_parity_catches_a_missing_name() -> None:
    async def scan(x: int) -> int:
        return x

    def scan_sync(x: int) -> int:
        return x

    a = _module("a", scan=scan, extra=scan)
    s = _module("s", scan=scan_sync)
    assert any("public names" in p for p in twin_checks.parity_problems(a, s))


def test_parity_catches_a_changed_signature() -> None:
    async def scan(x: int, y: int = 0) -> int:
        return x

    def scan2(x: int) -> int:
        return x

    problems = twin_checks.parity_problems(_module("a", scan=scan), _module("s", scan=scan2))
    assert any("parameters differ" in p for p in problems)


def test_parity_catches_a_sync_twin_that_is_still_async() -> None:
    class AsyncScanPipeline:
        async def run(self) -> None:
            pass

    class ScanPipeline:
        async def run(self) -> None:
            pass

    problems = twin_checks.parity_problems(
        _module("a", AsyncScanPipeline=AsyncScanPipeline), _module("s", ScanPipeline=ScanPipeline)
    )
    assert any("coroutine" in p for p in problems)
