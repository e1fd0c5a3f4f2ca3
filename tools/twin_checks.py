"""Checks that the two twins still match: line numbers 1:1 and public API parity.

Used by the test suite (``tests/test_twins.py``); each check returns a list of problems, so a
test can plant a defect and see it reported.
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

try:
    from tools.unasync_rules import REPLACEMENTS
except ImportError:  # pragma: no cover - run from tools/
    from unasync_rules import REPLACEMENTS  # type: ignore[no-redef]


def sync_name(name: str) -> str:
    """The sync twin's name for an async-side name (as the generator renames it)."""
    if name in REPLACEMENTS:
        return REPLACEMENTS[name]
    if len(name) > 5 and name.startswith("Async") and name[5].isupper():
        return "Sync" + name[5:]
    return name


def _defs(text: str) -> list[tuple[int, str]]:
    tree = ast.parse(text)
    return sorted(
        (node.lineno, node.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    )


def line_problems(source: str, generated: str, where: str) -> list[str]:
    """Differences in line count or in the line of any def/class between source and twin."""
    problems: list[str] = []
    n_src, n_gen = len(source.splitlines()), len(generated.splitlines())
    if n_src != n_gen:
        problems.append(f"{where}: {n_gen} lines, its source has {n_src}")
    gen_defs = _defs(generated)
    want = [(line, sync_name(name)) for line, name in _defs(source)]
    if want != gen_defs:
        for (l1, n1), (l2, n2) in zip(want, gen_defs, strict=False):
            if (l1, n1) != (l2, n2):
                problems.append(f"{where}:{l2}: '{n2}' should be '{n1}' at line {l1}")
                break
        else:
            problems.append(f"{where}: different number of definitions than its source")
    return problems


def public_names(module: ModuleType) -> list[str]:
    """The module's public names: ``__all__`` when given, else non-underscore local defs."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return sorted(names)
    return sorted(
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    )


def _members(obj: object) -> dict[str, object]:
    return {
        n: v
        for n, v in vars(obj).items()
        if not n.startswith("_")
        or n in ("__init__", "__aenter__", "__aexit__", "__enter__", "__exit__")
    }


def _signature_problem(a: object, s: object, where: str) -> str | None:
    a_fn = a.__func__ if isinstance(a, classmethod | staticmethod) else a
    s_fn = s.__func__ if isinstance(s, classmethod | staticmethod) else s
    if isinstance(a_fn, property) or isinstance(s_fn, property):
        return (
            None
            if isinstance(a_fn, property) == isinstance(s_fn, property)
            else (f"{where}: property on one side only")
        )
    if not (callable(a_fn) and callable(s_fn)):
        return None
    if inspect.iscoroutinefunction(s_fn) or inspect.isasyncgenfunction(s_fn):
        return f"{where}: the sync twin is a coroutine function"
    try:
        a_params = list(inspect.signature(a_fn).parameters.values())  # type: ignore[arg-type]
        s_params = list(inspect.signature(s_fn).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    a_shape = [(p.name, p.kind, p.default is p.empty) for p in a_params]
    s_shape = [(p.name, p.kind, p.default is p.empty) for p in s_params]
    if a_shape != s_shape:
        return f"{where}: parameters differ: {a_shape} vs {s_shape}"
    return None


def parity_problems(async_mod: ModuleType, sync_mod: ModuleType) -> list[str]:
    """Public names and signatures that differ between a module and its twin."""
    problems: list[str] = []
    a_names = public_names(async_mod)
    s_names = public_names(sync_mod)
    expected = sorted(sync_name(n) for n in a_names)
    if expected != s_names:
        problems.append(f"{sync_mod.__name__}: public names {s_names} != expected {expected}")
    for name in a_names:
        a_obj = getattr(async_mod, name, None)
        s_obj = getattr(sync_mod, sync_name(name), None)
        if a_obj is None or s_obj is None:
            continue
        where = f"{sync_mod.__name__}.{sync_name(name)}"
        if inspect.isclass(a_obj) and inspect.isclass(s_obj):
            a_members, s_members = _members(a_obj), _members(s_obj)
            want = {sync_name(n) for n in a_members}
            if want != set(s_members):
                problems.append(f"{where}: members differ: {sorted(want ^ set(s_members))}")
            for m, a_val in a_members.items():
                s_val = s_members.get(sync_name(m))
                if s_val is not None:
                    p = _signature_problem(a_val, s_val, f"{where}.{sync_name(m)}")
                    if p:
                        problems.append(p)
        else:
            p = _signature_problem(a_obj, s_obj, where)
            if p:
                problems.append(p)
    return problems
