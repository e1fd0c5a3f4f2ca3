"""The rule pack: item taxonomy, situation tags and disposal rules, with its loader.

``RulePack.load("default")`` (or the cached :func:`load_pack`) reads the pack shipped in
``waste_pipeline/rules/data/default``; any folder in our layout or in the eco2 layout loads too.
See :mod:`waste_pipeline.rules.pack` for both layouts and how category labels are formed.
"""

from waste_pipeline.rules.pack import (
    CATEGORY_SEPARATOR,
    DEFAULT_PACK,
    PackLayout,
    RulePack,
    clear_pack_cache,
    load_pack,
)

__all__ = [
    "CATEGORY_SEPARATOR",
    "DEFAULT_PACK",
    "PackLayout",
    "RulePack",
    "clear_pack_cache",
    "load_pack",
]
