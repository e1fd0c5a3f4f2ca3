"""Deterministic, schema-valid JSON instances for the OpenAI stand-in (a test double).

:func:`fill` turns a JSON schema (the subset OpenAI's Structured Outputs accepts, and what
pydantic emits for our models) into one instance that validates against it. Nothing here is
random: the same schema and the same user content always give the same instance.

Supported keywords: ``type`` (a name or a list of names), ``object`` with ``properties`` /
``required`` / ``additionalProperties``, ``array`` with ``items`` / ``minItems`` / ``maxItems`` /
``uniqueItems``, ``string`` with ``enum`` / ``const`` / ``minLength`` / ``maxLength`` / a few
``format`` values, ``integer`` and ``number`` with ``minimum`` / ``maximum`` /
``exclusiveMinimum`` / ``exclusiveMaximum``, ``boolean``, ``null``, ``anyOf`` / ``oneOf`` (the
first non-null branch is used), ``allOf`` (merged), and local ``$ref`` into ``$defs`` or
``definitions``. ``pattern`` is not honoured.

Enum choice: a value that occurs in the user's text wins (for a value like ``"A/B"`` its last
segment ``"B"`` counts too), the longest match first; otherwise the value at
``sha256(user content) mod len(enum)``.

:func:`violate` does the opposite for the stand-in's ``schema`` fault: valid JSON that breaks
the schema in a way a validator notices (a required property missing, an enum value that is not
allowed, an unexpected property, or the wrong type).
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PLACEHOLDER_PREFIX",
    "SchemaFillError",
    "enum_matches",
    "fill",
    "violate",
]

PLACEHOLDER_PREFIX = "[stand-in]"
"""Every generated string starts with this, so nobody mistakes it for a model's answer."""

_MAX_DEPTH = 32
"""Deeper than this, a schema is taken to recurse without end."""

_SOFT_DEPTH = 8
"""From this depth on, optional parts (nullable, empty-able arrays) are left out."""

_JsonSchema = Mapping[str, Any]


class SchemaFillError(ValueError):
    """The schema cannot be filled (unresolvable ``$ref``, endless recursion, ...)."""


def _digest_int(*parts: str) -> int:
    """A stable non-negative integer from the sha256 of ``parts``."""
    h = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big")


def enum_matches(values: Sequence[Any], text: str) -> list[Any]:
    """The enum ``values`` that occur in ``text``, longest match first.

    A string value matches if it occurs in ``text`` (case-insensitively), or, for a value
    containing ``/``, if its last segment does. Ties keep the enum's order. Non-string values
    never match.
    """
    hay = text.casefold()
    scored: list[tuple[int, int, Any]] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            continue
        candidates = [value]
        if "/" in value:
            candidates.append(value.rsplit("/", 1)[1])
        best = 0
        for cand in candidates:
            needle = cand.strip().casefold()
            if needle and needle in hay:
                best = max(best, len(needle))
        if best:
            scored.append((-best, index, value))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [v for _, _, v in scored]


class _Filler:
    """One fill run: the root schema (for ``$ref``), the user text and its hash."""

    def __init__(self, root: _JsonSchema, user_text: str, user_content: str) -> None:
        self.root = root
        self.user_text = user_text
        self.user_content = user_content
        self.content_hash = _digest_int(user_content)

    # -- schema plumbing -------------------------------------------------------------------

    def resolve(self, schema: _JsonSchema, depth: int = 0) -> _JsonSchema:
        """Follow ``$ref`` (local pointers only) and merge ``allOf``."""
        seen = 0
        while "$ref" in schema:
            seen += 1
            if seen > _MAX_DEPTH:
                raise SchemaFillError("$ref cycle")
            target = self._pointer(str(schema["$ref"]))
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **extra} if extra else target
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                part = self.resolve(sub, depth)
                for key, value in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **value}
                    elif key == "required":
                        req = list(merged.get("required", []))
                        req += [r for r in value if r not in req]
                        merged["required"] = req
                    else:
                        merged.setdefault(key, value)
            schema = merged
        return schema

    def _pointer(self, ref: str) -> _JsonSchema:
        if not ref.startswith("#"):
            raise SchemaFillError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaFillError(f"unresolvable $ref {ref!r}")
        if not isinstance(node, Mapping):
            raise SchemaFillError(f"$ref {ref!r} does not point at a schema")
        return node

    @staticmethod
    def types_of(schema: _JsonSchema) -> list[str]:
        """The schema's type names; inferred from other keywords when ``type`` is absent."""
        t = schema.get("type")
        if isinstance(t, str):
            return [t]
        if isinstance(t, list):
            return [str(x) for x in t]
        if "properties" in schema or "additionalProperties" in schema:
            return ["object"]
        if "items" in schema or "prefixItems" in schema:
            return ["array"]
        return []

    # -- filling ---------------------------------------------------------------------------

    def fill(self, schema: _JsonSchema, name: str, index: int, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaFillError(f"schema nests deeper than {_MAX_DEPTH} levels at {path}")
        schema = self.resolve(schema, depth)

        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.pick_enum(schema["enum"])

        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                non_null = [b for b in branches if self.types_of(self.resolve(b)) != ["null"]]
                if depth >= _SOFT_DEPTH and len(non_null) < len(branches):
                    return None
                chosen = non_null[0] if non_null else branches[0]
                return self.fill(chosen, name, index, path, depth + 1)

        types = self.types_of(schema)
        non_null_types = [t for t in types if t != "null"]
        if not non_null_types:
            if types == ["null"]:
                return None
            # No type at all: anything validates; give a string, the most readable choice.
            return self.fill_string({}, name, index)
        if depth >= _SOFT_DEPTH and "null" in types:
            return None
        kind = non_null_types[0]
        if kind == "object":
            return self.fill_object(schema, path, depth, index)
        if kind == "array":
            return self.fill_array(schema, name, path, depth)
        if kind == "string":
            return self.fill_string(schema, name, index)
        if kind == "integer":
            return self.fill_integer(schema, index)
        if kind == "number":
            return self.fill_number(schema, path)
        if kind == "boolean":
            return _digest_int(self.user_content, path, "bool") % 2 == 0
        raise SchemaFillError(f"unsupported type {kind!r} at {path}")

    def pick_enum(self, values: Sequence[Any]) -> Any:
        """The enum value the user's text names (longest match), else one by content hash."""
        matches = enum_matches(values, self.user_text)
        if matches:
            return copy.deepcopy(matches[0])
        return copy.deepcopy(values[self.content_hash % len(values)])

    def fill_object(
        self, schema: _JsonSchema, path: str, depth: int, index: int = 1
    ) -> dict[str, Any]:
        """All properties (required ones always); ``index`` numbers the placeholders."""
        props = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if depth >= _SOFT_DEPTH and key not in required:
                continue
            out[key] = self.fill(sub, key, index, f"{path}/{key}", depth + 1)
        # Required names without a property schema: anything validates.
        for key in required:
            if key not in out:
                out[key] = self.fill_string({}, key, index)
        return out

    def fill_array(self, schema: _JsonSchema, name: str, path: str, depth: int) -> list[Any]:
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        want = 2 + _digest_int(self.user_content, path, "len") % 2  # 2 or 3
        if depth >= _SOFT_DEPTH:
            want = 0
        count = max(lo, want)
        if hi is not None:
            count = min(count, int(hi))
        items = schema.get("items")
        if not isinstance(items, Mapping):
            items = {}
        item_schema = self.resolve(items)
        enum = item_schema.get("enum")
        if isinstance(enum, list) and enum and "const" not in item_schema:
            return self.enum_list(enum, count, bool(schema.get("uniqueItems")), lo)
        return [self.fill(items, name, i + 1, f"{path}/{i}", depth + 1) for i in range(count)]

    def enum_list(self, values: Sequence[Any], count: int, unique: bool, lo: int) -> list[Any]:
        """``count`` enum values: the ones the text names first, then a hash-chosen rotation.

        Values repeat only when ``minItems`` (``lo``) demands more items than the enum has.
        """
        order = list(enum_matches(values, self.user_text))
        start = self.content_hash % len(values)
        for i in range(len(values)):
            v = values[(start + i) % len(values)]
            if v not in order:
                order.append(v)
        if count > len(order):
            count = len(order) if unique else max(lo, len(order))
        return [copy.deepcopy(order[i % len(order)]) for i in range(count)]

    def fill_string(self, schema: _JsonSchema, name: str, index: int) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            text = "2000-01-01T00:00:00Z"
        elif fmt == "date":
            text = "2000-01-01"
        elif fmt == "time":
            text = "00:00:00Z"
        elif fmt in ("uri", "url"):
            text = f"https://stand-in.invalid/{name or 'value'}/{index}"
        elif fmt == "email":
            text = "stand-in@example.invalid"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=_digest_int(self.user_content, name, str(index))))
        else:
            text = f"{PLACEHOLDER_PREFIX} {name or 'value'} {index}"
        min_len = int(schema.get("minLength", 0))
        if len(text) < min_len:
            text = text + "." * (min_len - len(text))
        max_len = schema.get("maxLength")
        if max_len is not None:
            text = text[: int(max_len)]
        return text

    @staticmethod
    def bounds(schema: _JsonSchema) -> tuple[float | None, float | None, bool, bool]:
        lo = schema.get("minimum")
        hi = schema.get("maximum")
        lo_excl = False
        hi_excl = False
        emin = schema.get("exclusiveMinimum")
        emax = schema.get("exclusiveMaximum")
        if isinstance(emin, int | float) and not isinstance(emin, bool):
            if lo is None or emin >= lo:
                lo, lo_excl = emin, True
        if isinstance(emax, int | float) and not isinstance(emax, bool):
            if hi is None or emax <= hi:
                hi, hi_excl = emax, True
        return (
            None if lo is None else float(lo),
            None if hi is None else float(hi),
            lo_excl,
            hi_excl,
        )

    def fill_integer(self, schema: _JsonSchema, index: int = 1) -> int:
        """``index`` (1 for a lone value, the position in an array), clamped to the bounds."""
        lo, hi, lo_excl, hi_excl = self.bounds(schema)
        ilo = None if lo is None else (int(lo) + 1 if lo_excl and lo == int(lo) else _ceil(lo))
        ihi = None if hi is None else (int(hi) - 1 if hi_excl and hi == int(hi) else _floor(hi))
        value = index
        if ilo is not None and value < ilo:
            value = ilo
        if ihi is not None and value > ihi:
            value = ihi
        return value

    def fill_number(self, schema: _JsonSchema, path: str) -> float:
        lo, hi, lo_excl, hi_excl = self.bounds(schema)
        frac = 0.5 + (_digest_int(self.user_content, path, "num") % 50) / 100  # 0.50 .. 0.99
        if lo is not None and hi is not None:
            value = round(lo + (hi - lo) * frac, 4)
        elif lo is not None:
            value = lo + 1.0
        elif hi is not None:
            value = hi - 1.0
        else:
            value = round(frac, 2)
        if lo is not None and (value < lo or (lo_excl and value <= lo)):
            value = (lo + hi) / 2 if hi is not None else lo + 1.0
        if hi is not None and (value > hi or (hi_excl and value >= hi)):
            value = (lo + hi) / 2 if lo is not None else hi - 1.0
        return float(value)


def _ceil(x: float) -> int:
    i = int(x)
    return i if i >= x else i + 1


def _floor(x: float) -> int:
    i = int(x)
    return i if i <= x else i - 1


def fill(schema: _JsonSchema, *, user_text: str = "", user_content: str | None = None) -> Any:
    """Return a JSON-ready instance of ``schema``, the same one for the same inputs.

    ``user_text`` is what enum values are matched against (the user's words only, never the
    system prompt); ``user_content`` (text plus image URLs; defaults to ``user_text``) seeds the
    hash-based choices.

    Raises :class:`SchemaFillError` for schemas outside the supported subset.
    """
    content = user_text if user_content is None else user_content
    filler = _Filler(schema, user_text, content)
    return filler.fill(schema, "value", 1, "#", 0)


def violate(schema: _JsonSchema, instance: Any) -> Any:
    """Return valid JSON that ``schema`` rejects, derived from a valid ``instance``.

    For an object schema: the first required property is dropped, the first enum-valued
    property gets a value outside its enum, and, if ``additionalProperties`` is false, an
    unexpected property is added. When none of that applies (or for a non-object schema), a
    value of the wrong type. An empty schema (``{}``) accepts everything and cannot be broken.
    """
    filler = _Filler(schema, "", "")
    root = filler.resolve(schema)
    types = filler.types_of(root)
    if "object" in types and isinstance(instance, dict):
        broken = copy.deepcopy(instance)
        sure = False
        required = [r for r in root.get("required") or [] if r in broken]
        if required:
            del broken[required[0]]
            sure = True
        for key, sub in (root.get("properties") or {}).items():
            if key in broken and isinstance(filler.resolve(sub).get("enum"), list):
                broken[key] = f"{PLACEHOLDER_PREFIX} not-an-allowed-value"
                sure = True
                break
        if root.get("additionalProperties") is False:
            broken["stand_in_unexpected_property"] = True
            sure = True
        if sure:
            return broken
    if "array" in types:
        return {"stand_in_schema_violation": True}
    return ["stand-in schema violation"]
