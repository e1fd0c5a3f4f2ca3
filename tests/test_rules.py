"""The rule pack: the shipped default pack, the eco2 layout, lookups and broken packs."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from waste_pipeline.errors import ConfigurationError
from waste_pipeline.models import DisposalRules
from waste_pipeline.rules import CATEGORY_SEPARATOR, RulePack, load_pack

ECO2_PACK = Path(__file__).resolve().parents[2] / "shared/reference/eco2-rules"


@pytest.fixture(scope="module")
def pack() -> RulePack:
    return RulePack.load("default")


@pytest.fixture(scope="module")
def eco2() -> RulePack:
    if not ECO2_PACK.is_dir():
        pytest.skip(f"eco2 reference pack not found at {ECO2_PACK}")
    return RulePack.load(ECO2_PACK)


@pytest.fixture
def pack_copy(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the shipped pack, to break in various ways."""
    with resources.as_file(resources.files("waste_pipeline.rules") / "data" / "default") as src:
        dest = tmp_path / "pack"
        shutil.copytree(src, dest)
    yield dest


# --- the shipped pack ---------------------------------------------------------------------------


def test_default_pack_loads(pack: RulePack) -> None:
    assert pack.name == "waste-pipeline-default"
    assert pack.language == "ko"
    assert pack.layout == "waste-pipeline"
    assert pack.origin == "<shipped:default>"
    assert "재활용폐기물" in pack.majors()
    assert "플라스틱류" in pack.middles("재활용폐기물")
    assert pack.minors("재활용폐기물", "종이팩")
    assert pack.minors("음식물류폐기물")


def test_shipped_files_are_package_data() -> None:
    root = resources.files("waste_pipeline.rules") / "data" / "default"
    for name in ("pack.yaml", "taxonomy.yaml", "tags.yaml"):
        assert (root / name).is_file(), name
    assert any(f.name.endswith(".yaml") for f in (root / "rules").iterdir())


def test_load_pack_is_cached() -> None:
    assert load_pack() is load_pack("default")


def test_every_default_category_resolves(pack: RulePack) -> None:
    labels = pack.categories()
    assert len(labels) == len(set(labels))
    for label in labels:
        major, middle = pack.split_category(label)
        found = pack.lookup(major, middle)
        # The shipped pack has rules for every middle, so nothing falls back.
        assert found.matched == ("middle" if middle else "major"), label
        assert found.rules is not None
        assert found.rules.major == major
        assert found.rules.middle == middle
    assert pack.uncovered_categories() == []


def test_category_labels(pack: RulePack) -> None:
    labels = pack.categories()
    assert "재활용폐기물/플라스틱류" in labels
    assert "음식물류폐기물" in labels
    # A major with middles is only offered through its middles.
    assert "재활용폐기물" not in labels
    assert pack.split_category("재활용폐기물/종이") == ("재활용폐기물", "종이")
    assert pack.split_category(" 재활용폐기물 / 종이 ") == ("재활용폐기물", "종이")
    assert pack.split_category("대형폐기물") == ("대형폐기물", None)
    assert pack.split_category("모름/무엇") == ("모름", "무엇")


def test_unknown_middle_falls_back_to_major(pack: RulePack) -> None:
    found = pack.lookup("재활용폐기물", "우주선")
    assert found.matched == "major"
    assert found.rules is not None and found.rules.middle is None
    assert found.requested == {"major": "재활용폐기물", "middle": "우주선"}
    # A middle given for a major without middles also lands on the major's rules.
    assert pack.lookup("일반종량제폐기물", "사용한 휴지").matched == "major"
    assert pack.lookup("재활용폐기물", None).matched == "major"


def test_unknown_major_matches_nothing(pack: RulePack) -> None:
    found = pack.lookup("우주쓰레기", "위성")
    assert found.matched == "none"
    assert found.rules is None
    assert found.key is None
    assert found.requested == {"major": "우주쓰레기", "middle": "위성"}


def test_lookup_is_forgiving_about_spelling(pack: RulePack) -> None:
    assert pack.lookup("재활용폐기물/유리병").matched == "middle"
    assert pack.lookup(" 재활용 폐기물 ", "유리병").matched == "middle"


def test_tags(pack: RulePack) -> None:
    tags = pack.tags()
    assert len(tags) >= 20
    for tag, text in tags.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", tag), tag
        assert text.strip()
    assert "label_attached" in tags


def test_rules_are_complete(pack: RulePack) -> None:
    tags = pack.tags()
    keys = pack.rules_keys()
    assert len(keys) == len(set(keys))
    for key in keys:
        rules = pack.get(key)
        assert isinstance(rules, DisposalRules)
        assert rules.key == key
        assert rules.title
        assert 1 <= len(rules.steps) <= 8, key
        assert all(step.strip() for step in rules.steps)
        assert set(rules.tag_notes) <= set(tags), key
        assert rules.source


def test_get_returns_a_copy(pack: RulePack) -> None:
    rules = pack.get("recyclable-plastic")
    rules.steps.clear()
    assert pack.get("recyclable-plastic").steps
    with pytest.raises(KeyError):
        pack.get("no-such-rules")


def test_pack_is_immutable(pack: RulePack) -> None:
    with pytest.raises(AttributeError):
        pack._name = "changed"


def test_pack_folder_loads_from_path(pack_copy: Path) -> None:
    copy = RulePack.load(pack_copy)
    assert copy.categories() == RulePack.load().categories()
    assert RulePack.load(pack_copy / "pack.yaml").rules_keys() == copy.rules_keys()


# --- the eco2 layout ----------------------------------------------------------------------------


def test_eco2_pack_loads(eco2: RulePack) -> None:
    assert eco2.layout == "eco2"
    assert eco2.tags()
    assert "재활용폐기물/플라스틱류" in eco2.categories()
    # Rules without a taxonomy entry still become a category.
    assert "생활계유해폐기물" in eco2.categories()
    rules = eco2.lookup("재활용폐기물", "금속류").rules
    assert rules is not None
    assert rules.source == "재활용폐기물_금속류.json"
    assert rules.title == "금속류"


def test_every_eco2_category_resolves(eco2: RulePack) -> None:
    for label in eco2.categories():
        found = eco2.lookup(*eco2.split_category(label))
        assert found.matched in ("middle", "major"), label
        assert found.rules is not None and found.rules.steps, label
    assert eco2.uncovered_categories() == []
    for key in eco2.rules_keys():
        assert eco2.get(key).steps, key


def test_eco2_translation(eco2: RulePack) -> None:
    food = eco2.lookup("음식물류폐기물").rules
    assert food is not None
    # No steps in the source: a single generic step; the refused items become cautions.
    assert len(food.steps) == 1
    assert any("생선뼈" in c for c in food.cautions)
    assert eco2.lookup("재활용폐기물", "모르는것").matched == "none"  # eco2 has no major rules


def test_eco2_pack_from_a_copy(tmp_path: Path, eco2: RulePack) -> None:
    dest = tmp_path / "eco2"
    shutil.copytree(ECO2_PACK, dest)
    (dest / "source" / "대형폐기물.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"대형폐기물.json"):
        RulePack.load(dest)


# --- broken packs -------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"not found"):
        RulePack.load(tmp_path / "nowhere")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"not a rule pack"):
        RulePack.load(tmp_path)


def _break(pack_dir: Path, name: str, text: str) -> None:
    (pack_dir / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("pack.yaml", "name: [unclosed", r"invalid YAML.*pack.yaml"),
        ("pack.yaml", "version: 1\n", r"pack.yaml.*name"),
        ("taxonomy.yaml", "majors: []\n", r"taxonomy.yaml"),
        ("tags.yaml", "tags:\n  Bad Tag: 설명\n", r"tags.yaml"),
        (
            "rules/recyclable.yaml",
            "key: recyclable\nmajor: 없는대분류\ntitle: t\nsteps: [a]\n",
            r"recyclable.yaml.*없는대분류",
        ),
        (
            "rules/recyclable.yaml",
            "key: recyclable\nmajor: 재활용폐기물\ntitle: t\nsteps: []\n",
            r"recyclable.yaml.*steps",
        ),
        (
            "rules/recyclable.yaml",
            "key: other\nmajor: 재활용폐기물\ntitle: t\nsteps: [a]\n",
            r"recyclable.yaml.*file name",
        ),
        (
            "rules/recyclable.yaml",
            "key: recyclable\nmajor: 재활용폐기물\ntitle: t\nsteps: [a]\ntag_notes: {nope: x}\n",
            r"recyclable.yaml.*unknown tags",
        ),
        (
            "rules/extra.yaml",
            "key: extra\nmajor: 재활용폐기물\nmiddle: 종이\ntitle: t\nsteps: [a]\n",
            r"both cover",
        ),
    ],
)
def test_broken_pack_raises(pack_copy: Path, file: str, text: str, message: str) -> None:
    _break(pack_copy, file, text)
    with pytest.raises(ConfigurationError, match=message) as info:
        RulePack.load(pack_copy)
    assert info.value.code == "configuration_error"


def test_missing_file_is_named(pack_copy: Path) -> None:
    (pack_copy / "tags.yaml").unlink()
    with pytest.raises(ConfigurationError, match=r"missing.*tags.yaml"):
        RulePack.load(pack_copy)


def test_not_utf8_is_named(pack_copy: Path) -> None:
    (pack_copy / "taxonomy.yaml").write_bytes("majors: 대분류".encode("euc-kr"))
    with pytest.raises(ConfigurationError, match=r"taxonomy.yaml"):
        RulePack.load(pack_copy)


def test_separator_in_names_is_refused(pack_copy: Path) -> None:
    _break(pack_copy, "taxonomy.yaml", f"majors:\n  - name: a{CATEGORY_SEPARATOR}b\n")
    with pytest.raises(ConfigurationError, match=r"contains"):
        RulePack.load(pack_copy)
