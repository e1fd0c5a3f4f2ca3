"""The generator: --check catches every kind of drift, the guards refuse unsafe source."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import generate as gen
from tools.unasync_rules import TREES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scratch copy of both async/sync trees, as the generator sees the repository."""
    for src, dst in TREES:
        for part in (src, dst):
            if (ROOT / part).exists():
                shutil.copytree(
                    ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__")
                )
    return tmp_path


def _a_generated_file(tree: Path) -> Path:
    return sorted((tree / TREES[0][1]).rglob("*.py"))[-1]


def test_check_passes_on_the_repository() -> None:
    assert gen.check(ROOT) == []


def test_check_command_exit_codes(tree: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "tools/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    target = _a_generated_file(tree)
    target.write_text(target.read_text() + "# edited\n")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools/generate.py"), "--check", "--root", str(tree)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert target.name in bad.stderr


def test_check_fails_on_one_changed_character(tree: Path) -> None:
    target = _a_generated_file(tree)
    text = target.read_text()
    i = text.index("def ")
    target.write_text(text[:i] + "def  " + text[i + 4 :])
    problems = gen.check(tree)
    assert any(target.name in p and "stale or hand-edited" in p for p in problems), problems


def test_check_fails_on_a_deleted_generated_file(tree: Path) -> None:
    target = _a_generated_file(tree)
    target.unlink()
    assert any(target.name in p and "missing" in p for p in gen.check(tree))


def test_check_fails_on_an_orphan(tree: Path) -> None:
    orphan = tree / TREES[0][1] / "leftover.py"
    orphan.write_text("# GENERATED from nowhere\nX = 1\n")
    assert any("leftover.py" in p and "orphan" in p for p in gen.check(tree))


def test_check_fails_on_a_source_change_not_regenerated(tree: Path) -> None:
    source = sorted((tree / TREES[0][0]).rglob("*.py"))[-1]
    source.write_text(source.read_text() + "\nNEW_CONSTANT = 1\n")
    assert any(source.name in p and "stale" in p for p in gen.check(tree))


def test_generate_repairs_and_removes_generated_orphans(tree: Path) -> None:
    _a_generated_file(tree).unlink()
    orphan = tree / TREES[0][1] / "leftover.py"
    orphan.write_text("# GENERATED from nowhere\nX = 1\n")
    gen.generate(tree)
    assert gen.check(tree) == []
    assert not orphan.exists()


def test_generate_refuses_to_delete_a_hand_written_file(tree: Path) -> None:
    (tree / TREES[0][1] / "handmade.py").write_text("X = 1\n")
    with pytest.raises(gen.GenerationError, match="hand-written"):
        gen.generate(tree)


def test_regenerating_the_whole_tree_is_fast(tree: Path) -> None:
    for _, dst in TREES:
        shutil.rmtree(tree / dst, ignore_errors=True)
    start = time.perf_counter()
    written = gen.generate(tree)
    elapsed = time.perf_counter() - start
    assert written and gen.check(tree) == []
    assert elapsed < 2.0, f"regeneration took {elapsed:.2f} s"


# --- the transformation's guards --------------------------------------------------------------

MARK = "# async source: test\n"


def test_source_needs_the_marker_line() -> None:
    with pytest.raises(gen.GenerationError, match="must start with"):
        gen.transform("async def f() -> None:\n    pass\n", "x.py")


@pytest.mark.parametrize(
    "body",
    [
        "import asyncio\n",
        "async def f():\n    await asyncio.sleep(1)\n",
        "async def f(x):\n    return await anext(x)\n",
        "from typing import Awaitable\n",
    ],
)
def test_source_refuses_names_that_unasync_would_leave_wrong(body: str) -> None:
    with pytest.raises(gen.GenerationError, match="async source"):
        gen.transform(MARK + body, "x.py")


def test_await_inside_an_f_string_is_refused() -> None:
    with pytest.raises(gen.GenerationError, match="f-string"):
        gen.transform(MARK + 'async def f(g):\n    return f"{await g()}"\n', "x.py")


def test_await_with_parenthesis_keeps_it() -> None:
    out = gen.transform(MARK + "async def f(g):\n    return await(g())\n", "x.py")
    assert "return (g())" in out


def test_names_are_mapped_and_header_keeps_line_numbers() -> None:
    src = MARK + (
        "from openai import AsyncOpenAI\n"
        "import httpx2\n"
        "async def f(c: httpx2.AsyncClient) -> None:\n"
        "    async with AsyncOpenAI() as o:\n"
        "        await c.aclose()\n"
    )
    out = gen.transform(src, "src/waste_pipeline/_async/x.py")
    assert out.splitlines()[0].startswith("# GENERATED from src/waste_pipeline/_async/x.py")
    assert "from openai import OpenAI" in out
    assert "httpx2.Client" in out and "c.close()" in out and "with OpenAI() as o" in out
    assert len(out.splitlines()) == len(src.splitlines())


# --- the lint of the generated tree -----------------------------------------------------------


def test_the_generated_tree_is_clean() -> None:
    for _, dst in TREES:
        for path in (ROOT / dst).rglob("*.py"):
            assert gen.lint_generated(path.read_text(), str(path)) == []


@pytest.mark.parametrize(
    ("planted", "needle"),
    [
        ("import time\ndef f():\n    asyncio.sleep(1)\n", "asyncio"),
        ("import asyncio\n", "asyncio"),
        ("from anyio import sleep\n", "anyio"),
        ("async def f():\n    pass\n", "AsyncFunctionDef"),
        ("async def f(x):\n    await x\n", "Await"),
        ("def f(x):\n    async with x:\n        pass\n", "async"),
        ("def f(x):\n    async for i in x:\n        pass\n", "async"),
        ("X = AsyncOpenAI()\n", "AsyncOpenAI"),
        ("from openai import AsyncOpenAI\n", "AsyncOpenAI"),
        ("import httpx2\nC = httpx2.AsyncClient\n", "AsyncClient"),
    ],
)
def test_the_lint_catches_planted_leftovers(planted: str, needle: str) -> None:
    problems = gen.lint_generated(planted, "planted.py")
    assert problems and any(needle in p for p in problems), problems
