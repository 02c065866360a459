"""The antiphase headphone check: the quieter tone is 6 dB down over headphones (each channel), while
over a loudspeaker pair (the channels summed) the antiphase tone is the one that vanishes; `mos
headphone-check` writes it and the qualification question that goes with it, which the loader accepts."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from speech_lpo.cli import main as cli
from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.headphones import antiphase_trial
from tests.test_mos_kit import make_test


def tone_levels(audio: np.ndarray, sr: int) -> np.ndarray:
    """RMS in dB of each of the three 1 s tones (0.5 s apart)."""
    step = int(1.5 * sr)
    return np.array([10 * np.log10(np.mean(audio[k * step : k * step + sr] ** 2) + 1e-12) for k in range(3)])


def test_antiphase_trial_fools_loudspeakers_only() -> None:
    audio = antiphase_trial(quiet=2, antiphase=0, sample_rate=16000)
    assert audio.shape[1] == 2 and np.abs(audio).max() <= 0.3
    headphones = tone_levels(audio[:, 0], 16000)  # one ear, as over headphones
    assert headphones[2] == pytest.approx(headphones[1] - 6, abs=0.05) and headphones[0] == pytest.approx(
        headphones[1], abs=0.05
    )
    speakers = tone_levels(audio.sum(axis=1), 16000)  # both channels meet in the air
    assert np.argmin(speakers) == 0 and speakers[0] < speakers[2] - 40
    with pytest.raises(ValueError, match="two different tones"):
        antiphase_trial(quiet=1, antiphase=1)


def test_headphone_check_cli_writes_a_qualification(tmp_path: Path, capsys) -> None:
    definition = make_test(tmp_path, n_utts=2)
    out = tmp_path / "audio" / "checks" / "headphones.wav"
    cli(["mos", "headphone-check", str(out), "--quiet", "3", "--antiphase", "1"])
    audio, sr = sf.read(out)
    assert np.argmin(tone_levels(audio[:, 0], sr)) == 2  # "third", over headphones
    snippet = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load(definition.read_text())
    raw["qualification"] = [{**snippet["qualification"][0], "audio": "checks/headphones.wav"}]
    definition.write_text(yaml.safe_dump(raw))
    (question,) = load_definition(definition).qualification
    assert question.answer == "third" and question.choices == ["first", "second", "third"]
