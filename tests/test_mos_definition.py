"""Test definitions: the shipped eval/mos_tts.yaml shape, and malformed ones refused naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from speech_lpo.mos.definition import DefinitionError, load_definition
from tests.test_mos_kit import make_test

REPO = Path(__file__).resolve().parents[1]


def test_valid_definition(tmp_path: Path) -> None:
    defn = load_definition(make_test(tmp_path))
    assert defn.dimension_names() == ["fidelity", "stability", "naturalness", "emotional_expressiveness"]
    assert defn.scale.choices() == [0.5 * k for k in range(11)]
    assert len(defn.system_items) == 2 * 3 and [c.expect for c in defn.check_items] == ["high", "low"]
    assert all(item.audio.is_relative_to(defn.root) and item.audio.is_file() for item in defn.items.values())
    assert defn.scale.problem(3.5) is None
    assert "outside the scale" in defn.scale.problem(5.5)
    assert "steps of 0.5" in defn.scale.problem(3.2)
    assert "not a number" in defn.scale.problem(float("nan"))


def test_shipped_definition_parses_up_to_its_audio(tmp_path: Path) -> None:
    """eval/mos_tts.yaml is a template: with its audio in place (here: made up) it loads."""
    raw = yaml.safe_load((REPO / "eval" / "mos_tts.yaml").read_text())
    assert [d if isinstance(d, str) else d["name"] for d in raw["dimensions"]] == [
        "fidelity",
        "stability",
        "naturalness",
        "emotional_expressiveness",
    ]
    assert raw["scale"] == "acr"  # ITU-T P.808's five categories
    make_test(tmp_path)  # real audio for the first two utterances
    raw.update(root="audio", systems=["original", "noisy"], utterances=raw_utts(tmp_path), items_per_rater=4)
    raw["attention_checks"] = [
        {"id": "ref", "audio": f"reference/{raw['utterances'][0]}.wav", "expect": "high"}
    ]
    path = tmp_path / "mos_tts.yaml"
    path.write_text(yaml.safe_dump(raw))
    defn = load_definition(path)
    assert defn.items_per_rater == 4 and defn.invitations == "required"
    assert defn.scale.named_choices()[::4] == [("1 Bad", 1.0), ("5 Excellent", 5.0)]


def raw_utts(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "audio" / "reference").glob("*.wav"))


BAD = [
    ("scale", {"min": 0, "max": 5, "step": 0}, "scale.step: must be > 0"),
    ("scale", {"min": 0, "max": 5, "step": 2}, "scale: max (5) must exceed min (0) by a whole number"),
    ("dimensions", ["loudness"], "dimensions[0]: 'loudness' needs a label and question"),
    ("dimensions", ["fidelity", "fidelity"], "dimensions: expected at least one dimension and no repeated"),
    ("systems", "lpo", "systems: expected a list of distinct system names"),
    ("items_per_rater", 99, "items_per_rater: expected an integer from 1 to 6"),
    ("invitations", "maybe", "invitations: expected 'required' or 'open'"),
    ("audio_pattern", "{system}/{speaker}.wav", "audio_pattern: only {system} and {utt} may appear"),
    ("audio_pattern", "../{system}/{utt}.wav", "is outside the test directory"),
    ("audio_pattern", "/etc/{system}{utt}.wav", "is absolute"),
    ("audio_pattern", "{system}/{utt}.txt", "not an audio file"),
    ("reference_pattern", "missing/{utt}.wav", "does not exist"),
    ("attention_checks", [{"id": "a", "audio": "x.wav", "expect": "medium"}], "attention_checks[0].expect"),
    ("attention_checks", [{"id": "a", "audio": "../../x.wav", "expect": "low"}], "attention_checks[0].audio"),
    ("colour", "blue", "colour: unknown key"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}-{m[:24]}" for k, _, m in BAD])
def test_malformed_definition_is_refused(tmp_path: Path, key: str, value: object, message: str) -> None:
    path = make_test(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw[key] = value
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DefinitionError) as err:
        load_definition(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_symlink_out_of_the_test_directory_is_refused(tmp_path: Path) -> None:
    path = make_test(tmp_path)
    outside = tmp_path / "secret.wav"
    outside.write_bytes((tmp_path / "audio" / "reference" / f"{raw_utts(tmp_path)[0]}.wav").read_bytes())
    link = tmp_path / "audio" / "original" / f"{raw_utts(tmp_path)[0]}.wav"
    link.unlink()
    os.symlink(outside, link)
    with pytest.raises(DefinitionError, match="audio_pattern: .* is outside the test directory"):
        load_definition(path)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DefinitionError, match=f"{bad}: not valid YAML"):
        load_definition(bad)
    bad.write_text("- a list\n")
    with pytest.raises(DefinitionError, match=r"\(top level\): expected a mapping"):
        load_definition(bad)
