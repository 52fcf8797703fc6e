"""Constitutions: the shipped default and the validation of user files."""

from __future__ import annotations

import pytest

from alignkit.errors import UserError
from alignkit.judges.constitution import default_constitution_path, load_constitution

pytestmark = pytest.mark.unit


def test_default_constitution_covers_helpful_harmless_honest():
    c = load_constitution("default")
    assert default_constitution_path().is_file()
    assert 8 <= len(c.principles) <= 12
    assert {p.aspect for p in c.principles} == {"helpful", "harmless", "honest"}
    assert len({p.name for p in c.principles}) == len(c.principles)
    for p in c.principles:
        assert p.critique.strip() and p.revision.strip() and p.preference.strip()
        assert p.criterion == p.preference


def test_draws_are_seeded_per_key_and_cover_the_principles():
    c = load_constitution("default")
    assert c.draw(1, "0:0") == c.draw(1, "0:0")
    draws = {c.draw(1, f"{i}:0").name for i in range(200)}
    assert draws == {p.name for p in c.principles}
    assert [c.draw(1, f"{i}:0") for i in range(20)] != [c.draw(2, f"{i}:0") for i in range(20)]


@pytest.mark.parametrize("text, message", [
    ("principles: []", "non-empty list 'principles'"),
    ("name: x", "non-empty list 'principles'"),
    ("principles:\n  - just a string", "principles[0]: expected a mapping"),
    ("principles:\n  - name: a\n    critique: c\n", "principles[0]: field 'revision'"),
    ("principles:\n  - name: a\n    critique: c\n    revision: ''\n", "field 'revision'"),
    ("principles:\n  - name: a\n    critique: c\n    revision: r\n    colour: red\n",
     "unknown field(s) colour"),
    ("principles:\n  - {name: a, critique: c, revision: r}\n  - {name: a, critique: c, "
     "revision: r}\n", "principles[1]: principle name 'a' is used twice"),
    ("principles: [", "not valid YAML"),
])
def test_bad_constitutions_name_the_file_principle_and_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_constitution(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_constitution():
    with pytest.raises(UserError, match="constitution file not found"):
        load_constitution("/nope/c.yaml")
