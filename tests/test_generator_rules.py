"""Every entry of the generator's name map exists on both sides in the installed libraries."""

from __future__ import annotations

import importlib

import pytest

from tools.unasync_rules import RENAMES, Rename


def resolve(ref: str) -> object:
    """Import ``module`` or ``module:attr.path``; raise LookupError when it does not exist."""
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"{ref}: no module {module_name}") from exc
    for part in filter(None, attr_path.split(".")):
        if not hasattr(obj, part):
            raise LookupError(f"{ref}: no attribute {part}")
        obj = getattr(obj, part)
    return obj


def _check(rule: Rename) -> None:
    for ref in (rule.async_ref, rule.sync_ref):
        if ref is not None:
            resolve(ref)


@pytest.mark.parametrize("rule", RENAMES, ids=lambda r: f"{r.async_name}->{r.sync_name}")
def test_both_sides_exist(rule: Rename) -> None:
    _check(rule)
    if rule.async_ref and rule.sync_ref:
        assert rule.async_ref.rsplit(".", 1)[-1].split(":")[-1] == rule.async_name
        assert rule.sync_ref.rsplit(".", 1)[-1].split(":")[-1] == rule.sync_name


def test_names_are_unique() -> None:
    names = [r.async_name for r in RENAMES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "planted",
    [
        Rename("AsyncOpenAI", "SyncOpenAI", "openai:AsyncOpenAI", "openai:SyncOpenAI"),
        Rename("AsyncClient", "SyncClient", "httpx2:AsyncClient", "httpx2:SyncClient"),
        Rename("AsyncClient", "Client", "httpx:AsyncClient2", "httpx2:Client"),
        Rename("x", "y", "no_such_module_here:x", "os:path"),
    ],
)
def test_a_wrong_entry_is_caught(planted: Rename) -> None:
    with pytest.raises(LookupError):
        _check(planted)
