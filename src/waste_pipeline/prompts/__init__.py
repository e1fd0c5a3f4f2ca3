"""Prompt templates (package data), rendered with :func:`render`."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["load", "render"]


@cache
def load(name: str) -> str:
    """The raw text of prompt ``name`` (file ``<name>.txt`` beside this module)."""
    return resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    """Prompt ``name`` with ``{placeholders}`` filled in."""
    return load(name).format(**values)
