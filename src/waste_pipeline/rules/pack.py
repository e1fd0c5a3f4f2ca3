"""Rule packs: the item taxonomy, the situation tags and the disposal rules the pipeline uses.

A rule pack is a folder. Two layouts are read:

* **ours** (``pack.yaml`` present)::

      pack.yaml         name, version, language, description
      taxonomy.yaml     majors: [{name, middles: [{name, minors}]} | {name, minors}]
      tags.yaml         tags: {tag_id: Korean description}
      rules/<key>.yaml  key, major, middle, title, steps, cautions, tag_notes, source

* **eco2** (``item_class_list.yaml`` + ``situation_tags.yaml`` + ``source/*.json``), the format
  of the service this project replaces. Its JSON rule objects are translated into
  :class:`~waste_pipeline.models.DisposalRules`: ``배출방법_공통`` and ``배출방법_세부`` become
  ``steps``, ``배출불가_품목_안내`` becomes ``cautions`` (items grouped by where they go
  instead), the key is the file name without ``.json`` and ``source`` is the file name. A rules
  file for a category the taxonomy lacks (``생활계유해폐기물``) adds that category, so that its
  rules stay reachable. Tag ids become their own descriptions (underscores → spaces).

Category labels (:meth:`RulePack.categories`, the enum of the vision schema) are the leaves of
the taxonomy: ``"<major>/<middle>"`` for every middle, and ``"<major>"`` for a major without
middles. A major that has middles is *not* offered on its own, so the model always commits to
the most specific category; :meth:`RulePack.lookup` still falls back to major-level rules when
a middle is unknown or has no rules of its own.

Names are matched after Unicode NFC normalisation and with whitespace removed, so ``"공사장
생활폐기물"`` finds ``"공사장생활폐기물"`` and a decomposed (NFD) file name from macOS still
matches.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from waste_pipeline.errors import ConfigurationError
from waste_pipeline.models import DisposalRules, RulesLookup

__all__ = [
    "CATEGORY_SEPARATOR",
    "DEFAULT_PACK",
    "PackLayout",
    "RulePack",
    "clear_pack_cache",
    "load_pack",
]

CATEGORY_SEPARATOR = "/"
"""Separates major and middle in a category label: ``"재활용폐기물/플라스틱류"``."""

DEFAULT_PACK = "default"
"""Name of the pack shipped with the package (``waste_pipeline/rules/data/default``)."""

PackLayout = Literal["waste-pipeline", "eco2"]

_SHIPPED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_WHITESPACE = re.compile(r"\s+")
_ECO2_OR = re.compile(r"_?OR_?")
_ECO2_MAJOR_FILE_SEP = "_"

_M = TypeVar("_M", bound=BaseModel)


def _norm(name: str) -> str:
    """The matching key of a name: NFC, no whitespace, case-folded."""
    return _WHITESPACE.sub("", unicodedata.normalize("NFC", name)).casefold()


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _fail(message: str, file: str | None = None) -> NoReturn:
    raise ConfigurationError(message, file=file)


# --- in-memory taxonomy -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Middle:
    name: str
    minors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Major:
    name: str
    description: str = ""
    middles: tuple[_Middle, ...] = ()
    minors: tuple[str, ...] = ()


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        text = _nfc(item)
        if text and text not in seen:
            seen[text] = None
    return tuple(seen)


# --- the pack -----------------------------------------------------------------------------------


class RulePack:
    """An immutable, loaded rule pack. Build one with :meth:`load` (or :func:`load_pack`).

    Every accessor returns fresh lists/dicts/models, so callers may modify what they get
    without affecting the pack (packs are cached and shared between tasks).
    """

    __slots__ = (
        "_by_category",
        "_by_key",
        "_description",
        "_language",
        "_layout",
        "_major_index",
        "_majors",
        "_name",
        "_origin",
        "_tags",
        "_version",
    )

    _name: str
    _version: str
    _language: str
    _description: str
    _layout: PackLayout
    _origin: str
    _majors: tuple[_Major, ...]
    _major_index: dict[str, _Major]
    _tags: dict[str, str]
    _by_key: dict[str, DisposalRules]
    _by_category: dict[tuple[str, str | None], DisposalRules]

    def __init__(
        self,
        *,
        name: str,
        majors: Iterable[_Major],
        tags: Mapping[str, str],
        rules: Iterable[DisposalRules],
        version: str = "",
        language: str = "ko",
        description: str = "",
        layout: PackLayout = "waste-pipeline",
        origin: str = "",
    ) -> None:
        """Build a pack from parsed parts (the readers do this; use :meth:`load`)."""
        majors = tuple(majors)
        where = origin or name
        if not majors:
            _fail(f"rule pack {where}: the taxonomy has no categories")
        major_index = _index_majors(majors, where)

        by_key: dict[str, DisposalRules] = {}
        by_category: dict[tuple[str, str | None], DisposalRules] = {}
        for rule in rules:
            if rule.key in by_key:
                _fail(f"rule pack {where}: two rules have the key {rule.key!r}")
            cat = (_norm(rule.major), _norm(rule.middle) if rule.middle else None)
            owner = major_index.get(cat[0])
            if owner is None:
                _fail(
                    f"rule pack {where}: rules {rule.key!r} name the major category "
                    f"{rule.major!r}, which is not in the taxonomy"
                )
            if cat[1] is not None and all(_norm(m.name) != cat[1] for m in owner.middles):
                _fail(
                    f"rule pack {where}: rules {rule.key!r} name the middle category "
                    f"{rule.middle!r}, which is not under {owner.name!r} in the taxonomy"
                )
            if cat in by_category:
                _fail(
                    f"rule pack {where}: rules {by_category[cat].key!r} and {rule.key!r} "
                    f"both cover {_label(rule.major, rule.middle)!r}"
                )
            stored = rule.model_copy(deep=True)
            by_key[rule.key] = stored
            by_category[cat] = stored

        set_ = object.__setattr__
        set_(self, "_name", name)
        set_(self, "_version", version)
        set_(self, "_language", language)
        set_(self, "_description", description)
        set_(self, "_layout", layout)
        set_(self, "_origin", origin)
        set_(self, "_majors", majors)
        set_(self, "_major_index", major_index)
        set_(self, "_tags", dict(tags))
        set_(self, "_by_key", by_key)
        set_(self, "_by_category", by_category)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return (
            f"<RulePack {self._name!r} layout={self._layout} majors={len(self._majors)} "
            f"rules={len(self._by_key)} tags={len(self._tags)}>"
        )

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | Path = DEFAULT_PACK) -> RulePack:
        """Load a pack.

        ``source`` is the name of a pack shipped with the package (``"default"``), or the path
        of a pack folder in either layout (a path to its ``pack.yaml`` or
        ``item_class_list.yaml`` also works). A plain string that names a shipped pack wins
        over a folder of the same name in the working directory; pass a :class:`~pathlib.Path`
        (or ``"./default"``) to load such a folder.

        Raises :class:`~waste_pipeline.errors.ConfigurationError`, naming the file at fault,
        when the pack is missing, unreadable or invalid.
        """
        root, origin = _resolve(source)
        if (root / "pack.yaml").is_file():
            return _read_native(root, origin)
        if (root / "item_class_list.yaml").is_file():
            return _read_eco2(root, origin)
        _fail(
            f"{origin} is not a rule pack: expected pack.yaml, or item_class_list.yaml + "
            "situation_tags.yaml + source/*.json",
            origin,
        )

    # -- metadata --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pack's name (``pack.yaml``'s ``name``; the folder name for eco2 packs)."""
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def language(self) -> str:
        return self._language

    @property
    def description(self) -> str:
        return self._description

    @property
    def layout(self) -> PackLayout:
        """Which layout the pack was read from."""
        return self._layout

    @property
    def origin(self) -> str:
        """Where the pack was read from (a folder path, or ``<shipped:NAME>``)."""
        return self._origin

    # -- taxonomy --------------------------------------------------------------------------------

    def majors(self) -> list[str]:
        """Major categories, in pack order."""
        return [m.name for m in self._majors]

    def middles(self, major: str) -> list[str]:
        """Middle categories of ``major`` (empty for a major without middles, or unknown)."""
        found = self._major_index.get(_norm(major))
        return [m.name for m in found.middles] if found else []

    def minors(self, major: str, middle: str | None = None) -> list[str]:
        """Example items of a category: of ``(major, middle)``, or of a major without middles.

        Empty when the category is unknown.
        """
        found = self._major_index.get(_norm(major))
        if found is None:
            return []
        if middle is None:
            return list(found.minors)
        wanted = _norm(middle)
        for mid in found.middles:
            if _norm(mid.name) == wanted:
                return list(mid.minors)
        return []

    def categories(self) -> list[str]:
        """Leaf category labels, in pack order: ``"<major>/<middle>"``, or ``"<major>"``."""
        labels: list[str] = []
        for major in self._majors:
            if major.middles:
                labels.extend(_label(major.name, mid.name) for mid in major.middles)
            else:
                labels.append(major.name)
        return labels

    def split_category(self, label: str) -> tuple[str, str | None]:
        """Split a category label into ``(major, middle)``; ``middle`` is None without one.

        Known names are returned as the pack spells them (``" 재활용폐기물 / 종이 "`` →
        ``("재활용폐기물", "종이")``); unknown ones are returned stripped, not rejected.
        """
        major, sep, middle = label.partition(CATEGORY_SEPARATOR)
        major = _nfc(major)
        middle_opt = _nfc(middle) if sep and middle.strip() else None
        found = self._major_index.get(_norm(major))
        if found is None:
            return major, middle_opt
        if middle_opt is not None:
            wanted = _norm(middle_opt)
            middle_opt = next(
                (m.name for m in found.middles if _norm(m.name) == wanted), middle_opt
            )
        return found.name, middle_opt

    def tags(self) -> dict[str, str]:
        """Situation tags: id → description."""
        return dict(self._tags)

    # -- rules -----------------------------------------------------------------------------------

    def lookup(self, major: str, middle: str | None = None) -> RulesLookup:
        """Find the rules for a category. Never raises for an unknown category.

        Exact ``(major, middle)`` → ``matched="middle"``; otherwise the major's own rules →
        ``matched="major"``; otherwise ``matched="none"`` and ``rules=None``. A full label in
        ``major`` (``"재활용폐기물/종이"``, with ``middle=None``) is split first.
        ``requested`` records the arguments as given.
        """
        requested: dict[str, str | None] = {"major": major, "middle": middle}
        if middle is None and CATEGORY_SEPARATOR in major:
            major, middle = self.split_category(major)
        major_key = _norm(major)
        middle_key = _norm(middle) if middle and middle.strip() else None
        if middle_key is not None:
            hit = self._by_category.get((major_key, middle_key))
            if hit is not None:
                return RulesLookup(
                    matched="middle", rules=hit.model_copy(deep=True), requested=requested
                )
        hit = self._by_category.get((major_key, None))
        if hit is not None:
            return RulesLookup(
                matched="major", rules=hit.model_copy(deep=True), requested=requested
            )
        return RulesLookup(matched="none", rules=None, requested=requested)

    def rules_keys(self) -> list[str]:
        """Keys of every rules entry, in load order."""
        return list(self._by_key)

    def get(self, key: str) -> DisposalRules:
        """The rules with this key (a copy). Raises KeyError for an unknown key."""
        try:
            return self._by_key[key].model_copy(deep=True)
        except KeyError:
            raise KeyError(f"rule pack {self._name!r} has no rules with key {key!r}") from None

    def uncovered_categories(self) -> list[str]:
        """Category labels whose lookup finds no rules at all (empty for a complete pack)."""
        return [label for label in self.categories() if self.lookup(label).matched == "none"]


def _label(major: str, middle: str | None) -> str:
    return f"{major}{CATEGORY_SEPARATOR}{middle}" if middle else major


def _index_majors(majors: tuple[_Major, ...], where: str) -> dict[str, _Major]:
    """Check the taxonomy's names (non-empty, unique, no separator); index majors by name."""
    major_index: dict[str, _Major] = {}
    for major in majors:
        _check_name(major.name, "major category", where)
        key = _norm(major.name)
        if key in major_index:
            _fail(f"rule pack {where}: major category {major.name!r} appears twice")
        seen_middles: set[str] = set()
        for middle in major.middles:
            _check_name(middle.name, f"middle category of {major.name!r}", where)
            if _norm(middle.name) in seen_middles:
                _fail(
                    f"rule pack {where}: middle category {middle.name!r} appears twice "
                    f"under {major.name!r}"
                )
            seen_middles.add(_norm(middle.name))
        major_index[key] = major
    return major_index


def _check_name(name: str, what: str, where: str) -> None:
    if not name.strip():
        _fail(f"rule pack {where}: a {what} has an empty name")
    if CATEGORY_SEPARATOR in name:
        _fail(
            f"rule pack {where}: {what} {name!r} contains {CATEGORY_SEPARATOR!r}, "
            "which separates major and middle in category labels"
        )


def load_pack(source: str | Path = DEFAULT_PACK) -> RulePack:
    """:meth:`RulePack.load`, cached per ``source`` (packs are immutable, so sharing is safe).

    :func:`clear_pack_cache` forgets loaded packs (e.g. after editing a pack on disk).
    """
    return _load_cached(source)


@functools.lru_cache(maxsize=16)
def _load_cached(source: str | Path) -> RulePack:
    return RulePack.load(source)


def clear_pack_cache() -> None:
    """Forget every pack :func:`load_pack` has cached."""
    _load_cached.cache_clear()


# --- reading files ------------------------------------------------------------------------------


def _resolve(source: str | Path) -> tuple[Traversable, str]:
    if isinstance(source, str) and _SHIPPED_NAME.fullmatch(source):
        shipped = resources.files("waste_pipeline.rules") / "data" / source
        if shipped.is_dir():
            return shipped, f"<shipped:{source}>"
        if source == DEFAULT_PACK:
            _fail(
                "the shipped rule pack 'default' is missing from the installed package "
                f"(looked in {shipped}); reinstall waste-pipeline with its package data"
            )
    path = Path(source).expanduser()
    if path.is_file() and path.name in ("pack.yaml", "item_class_list.yaml"):
        path = path.parent
    if not path.is_dir():
        _fail(f"rule pack not found: {path} is not a folder", str(path))
    return path, str(path)


def _child(root: Traversable, origin: str, *parts: str) -> tuple[Traversable, str]:
    node = root
    for part in parts:
        node = node / part
    return node, "/".join([origin.rstrip("/"), *parts])


def _read_text(node: Traversable, label: str) -> str:
    if not node.is_file():
        _fail(f"rule pack file missing: {label}", label)
    try:
        return node.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"rule pack file {label} is not UTF-8 text: {exc}", label)
    except OSError as exc:
        _fail(f"cannot read rule pack file {label}: {exc}", label)


def _read_yaml(node: Traversable, label: str) -> Any:
    text = _read_text(node, label)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _fail(f"invalid YAML in rule pack file {label}: {exc}", label)


def _read_json(node: Traversable, label: str) -> Any:
    text = _read_text(node, label)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"invalid JSON in rule pack file {label}: {exc}", label)


def _validate(model: type[_M], data: Any, label: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        _fail(f"invalid rule pack file {label}: {problems}{more}", label)


# --- our layout ---------------------------------------------------------------------------------

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_TagId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
_RuleKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PackFile(_FileModel):
    format: Literal[1] = 1
    name: _Text
    version: str = ""
    language: str = "ko"
    description: str = ""

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v


class _MiddleFile(_FileModel):
    name: _Text
    minors: list[_Text] = Field(default_factory=list)


class _MajorFile(_FileModel):
    name: _Text
    description: str = ""
    middles: list[_MiddleFile] = Field(default_factory=list)
    minors: list[_Text] = Field(default_factory=list)

    @model_validator(mode="after")
    def _middles_or_minors(self) -> _MajorFile:
        if self.middles and self.minors:
            raise ValueError("a major lists either middles (with their minors) or minors")
        return self


class _TaxonomyFile(_FileModel):
    majors: list[_MajorFile] = Field(min_length=1)


class _TagsFile(_FileModel):
    tags: dict[_TagId, _Text] = Field(min_length=1)


class _RuleFile(_FileModel):
    key: _RuleKey
    major: _Text
    middle: _Text | None = None
    title: _Text
    steps: list[_Text] = Field(min_length=1, max_length=10)
    cautions: list[_Text] = Field(default_factory=list)
    tag_notes: dict[_TagId, _Text] = Field(default_factory=dict)
    source: str = ""


def _read_native(root: Traversable, origin: str) -> RulePack:
    node, label = _child(root, origin, "pack.yaml")
    meta = _validate(_PackFile, _read_yaml(node, label), label)

    node, label = _child(root, origin, "taxonomy.yaml")
    taxonomy = _validate(_TaxonomyFile, _read_yaml(node, label), label)
    majors = tuple(
        _Major(
            name=_nfc(m.name),
            description=m.description.strip(),
            middles=tuple(_Middle(_nfc(mid.name), _dedupe(mid.minors)) for mid in m.middles),
            minors=_dedupe(m.minors),
        )
        for m in taxonomy.majors
    )
    _index_majors(majors, label)

    node, label = _child(root, origin, "tags.yaml")
    tags = _validate(_TagsFile, _read_yaml(node, label), label).tags

    rules_dir, rules_label = _child(root, origin, "rules")
    if not rules_dir.is_dir():
        _fail(f"rule pack folder missing: {rules_label}", rules_label)
    files = sorted(
        (f for f in rules_dir.iterdir() if f.is_file() and f.name.endswith((".yaml", ".yml"))),
        key=lambda f: f.name,
    )
    if not files:
        _fail(f"rule pack folder {rules_label} holds no rules (*.yaml)", rules_label)
    rules: list[DisposalRules] = []
    for file in files:
        _, label = _child(root, origin, "rules", file.name)
        entry = _validate(_RuleFile, _read_yaml(file, label), label)
        stem = file.name.rsplit(".", 1)[0]
        if entry.key != stem:
            _fail(f"rule pack file {label}: key {entry.key!r} must match the file name", label)
        unknown = sorted(set(entry.tag_notes) - set(tags))
        if unknown:
            _fail(f"rule pack file {label}: tag_notes name unknown tags {unknown}", label)
        _check_category(majors, entry.major, entry.middle, label)
        rules.append(
            DisposalRules(
                key=entry.key,
                major=_nfc(entry.major),
                middle=_nfc(entry.middle) if entry.middle else None,
                title=entry.title,
                steps=list(entry.steps),
                cautions=list(entry.cautions),
                tag_notes=dict(entry.tag_notes),
                source=entry.source.strip(),
            )
        )
    return RulePack(
        name=meta.name,
        version=meta.version,
        language=meta.language,
        description=" ".join(meta.description.split()),
        layout="waste-pipeline",
        origin=origin,
        majors=majors,
        tags=tags,
        rules=rules,
    )


def _check_category(majors: tuple[_Major, ...], major: str, middle: str | None, label: str) -> None:
    found = next((m for m in majors if _norm(m.name) == _norm(major)), None)
    if found is None:
        _fail(f"rule pack file {label}: major {major!r} is not in taxonomy.yaml", label)
    if middle is not None and all(_norm(m.name) != _norm(middle) for m in found.middles):
        _fail(
            f"rule pack file {label}: middle {middle!r} is not under {found.name!r} "
            "in taxonomy.yaml",
            label,
        )


# --- eco2 layout --------------------------------------------------------------------------------

_Items = list[str | int | float | None] | None


class _Eco2Taxonomy(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_class_list: dict[str, dict[str, _Items] | _Items] = Field(min_length=1)


class _Eco2Tags(BaseModel):
    model_config = ConfigDict(extra="allow")
    situation_tags: list[str] | dict[str, str | None]


class _Eco2Rule(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    key: str = ""
    category: str = ""
    name: str = Field(default="", alias="이름")
    common: list[str] = Field(default_factory=list, alias="배출방법_공통")
    detailed: dict[str, list[str]] = Field(default_factory=dict, alias="배출방법_세부")
    not_accepted: dict[str, str] = Field(default_factory=dict, alias="배출불가_품목_안내")


def _items(values: _Items) -> tuple[str, ...]:
    return _dedupe(str(v) for v in (values or []) if v is not None)


def _eco2_tag_description(tag: str) -> str:
    return " ".join(_ECO2_OR.sub(" 또는 ", tag).replace("_", " ").split())


def _read_eco2(root: Traversable, origin: str) -> RulePack:
    node, label = _child(root, origin, "item_class_list.yaml")
    taxonomy = _validate(_Eco2Taxonomy, _read_yaml(node, label), label)
    majors: list[_Major] = []
    for major_name, content in taxonomy.item_class_list.items():
        if isinstance(content, dict):
            middles = tuple(_Middle(_nfc(mid), _items(items)) for mid, items in content.items())
            majors.append(_Major(name=_nfc(major_name), middles=middles))
        else:
            majors.append(_Major(name=_nfc(major_name), minors=_items(content)))
    _index_majors(tuple(majors), label)

    node, label = _child(root, origin, "situation_tags.yaml")
    raw_tags = _validate(_Eco2Tags, _read_yaml(node, label), label).situation_tags
    tags: dict[str, str] = {}
    if isinstance(raw_tags, dict):
        for tag, text in raw_tags.items():
            tags[_nfc(tag)] = _nfc(text or "") or _eco2_tag_description(_nfc(tag))
    else:
        for tag in raw_tags:
            tags.setdefault(_nfc(tag), _eco2_tag_description(_nfc(tag)))
    if not tags:
        _fail(f"rule pack file {label} lists no situation tags", label)

    source_dir, source_label = _child(root, origin, "source")
    if not source_dir.is_dir():
        _fail(f"rule pack folder missing: {source_label}", source_label)
    files = sorted(
        (f for f in source_dir.iterdir() if f.is_file() and f.name.endswith(".json")),
        key=lambda f: f.name,
    )
    if not files:
        _fail(f"rule pack folder {source_label} holds no rules (*.json)", source_label)

    rules: list[DisposalRules] = []
    for file in files:
        _, label = _child(root, origin, "source", file.name)
        data = _read_json(file, label)
        if not isinstance(data, dict):
            _fail(f"rule pack file {label} must hold a JSON object", label)
        entry = _validate(_Eco2Rule, data, label)
        stem = _nfc(file.name[: -len(".json")])
        major, middle = _eco2_category(majors, stem)
        _ensure_category(majors, major, middle)
        rules.append(_eco2_rules(entry, stem, major, middle, _nfc(file.name)))

    folder = origin.rstrip("/").rsplit("/", 1)[-1] or "eco2"
    return RulePack(
        name=folder,
        layout="eco2",
        origin=origin,
        language="ko",
        description=f"eco2-format rule pack read from {origin}",
        majors=majors,
        tags=tags,
        rules=rules,
    )


def _eco2_category(majors: list[_Major], stem: str) -> tuple[str, str | None]:
    """``재활용폐기물_<middle>`` → (재활용폐기물, middle); ``<major>`` → (major, None)."""
    for major in sorted(majors, key=lambda m: -len(m.name)):
        prefix = major.name + _ECO2_MAJOR_FILE_SEP
        if major.middles and stem.startswith(prefix) and stem[len(prefix) :].strip():
            return major.name, _nfc(stem[len(prefix) :])
    return stem, None


def _ensure_category(majors: list[_Major], major: str, middle: str | None) -> None:
    """Add a category that has rules but no taxonomy entry, so that its rules are reachable."""
    for i, found in enumerate(majors):
        if _norm(found.name) != _norm(major):
            continue
        if middle is not None and all(_norm(m.name) != _norm(middle) for m in found.middles):
            majors[i] = _Major(
                name=found.name,
                description=found.description,
                middles=(*found.middles, _Middle(middle)),
                minors=found.minors,
            )
        return
    majors.append(_Major(name=major, middles=(_Middle(middle),) if middle else ()))


def _eco2_rules(
    entry: _Eco2Rule, key: str, major: str, middle: str | None, file_name: str
) -> DisposalRules:
    title = _nfc(entry.name) or _nfc(entry.category) or key
    steps = [_nfc(s) for s in entry.common if s.strip()]
    for group, lines in entry.detailed.items():
        texts = [_nfc(line) for line in lines if line.strip()]
        if texts:
            steps.append(f"{_nfc(group)}: {'; '.join(texts)}")
    if not steps:
        steps = [f"{title}: 지자체가 정한 배출 방법에 따라 배출"]
    # 배출불가_품목_안내 maps item -> where it goes instead; group items that go the same way.
    elsewhere: dict[str, list[str]] = {}
    for item, destination in entry.not_accepted.items():
        elsewhere.setdefault(_nfc(destination), []).append(_nfc(item))
    cautions = [f"{', '.join(items)}: {dest}" for dest, items in elsewhere.items()]
    return DisposalRules(
        key=key,
        major=major,
        middle=middle,
        title=title,
        steps=steps,
        cautions=cautions,
        tag_notes={},
        source=file_name,
    )
