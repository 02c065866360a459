"""Result tables and plots from real `score asr` summaries."""

import json
import random
from pathlib import Path

import matplotlib.image
import pytest

from speech_lpo.cli import main as cli_main
from speech_lpo.results import asr_table, last_epochs, load_summaries, tts_table

REFS = {
    f"u{i:02d}": text
    for i, text in enumerate(
        [
            "HE COULD WAIT NO LONGER",
            "EXPERIENCE PROVES THIS",
            "YOUR POWER IS SUFFICIENT I SAID",
            "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
            "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER",
        ]
        * 8
    )
}


def system(
    tmp_path: Path, name: str, drop: float, tags: dict[str, str], baseline: Path | None = None
) -> Path:
    """Hypotheses with a fraction `drop` of words deleted, scored with tags; returns the summary path."""
    rng = random.Random(name)
    hyp = tmp_path / name / "text"
    hyp.parent.mkdir(parents=True)
    hyp.write_text(
        "".join(f"{k} {' '.join(w for w in v.split() if rng.random() >= drop)}\n" for k, v in REFS.items())
    )
    ref = tmp_path / "ref"
    ref.write_text("".join(f"{k} {v}\n" for k, v in REFS.items()))
    argv = ["score", "asr", "--ref", str(ref), "--hyp", str(hyp), "--benchmark", "librispeech"]
    argv += ["--out-dir", str(tmp_path / "scores")] + [f"--tag={k}={v}" for k, v in tags.items()]
    cli_main(argv + (["--baseline-hyp", str(baseline)] if baseline else []))
    return tmp_path / "scores" / f"summary-{name}.json"


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("results")
    paths = [system(tmp, "sft", 0.30, {"benchmark": "librispeech", "method": "sft"})]
    sft_hyp = tmp / "sft" / "text"
    for epoch in (1, 2, 3):
        tags = {"benchmark": "librispeech", "candidates": "model", "method": "dpo", "epoch": str(epoch)}
        paths.append(system(tmp, f"dpo_e{epoch}", 0.30 - 0.02 * epoch, tags, sft_hyp))
        for r2 in (1.0, 2.0, 3.0):
            tags = {**tags, "method": "lpo", "r2": str(r2)}
            paths.append(system(tmp, f"lpo_r{r2}_e{epoch}", 0.30 - 0.03 * epoch - 0.01 * r2, tags, sft_hyp))
    return paths


def test_asr_table_like_table_7(summaries):
    loaded = load_summaries(summaries)
    last = last_epochs(loaded)
    assert len(last) == 1 + 1 + 3  # sft, dpo, three r2: each at its last epoch
    assert {s["tags"].get("epoch") for s in last} == {None, "3"}
    table = asr_table(loaded)
    lines = table.splitlines()
    assert lines[0].startswith(
        "| Benchmark | Candidates | Method | r2 | Error rate (95% CI) | SFT baseline |"
    )
    sft = json.loads(summaries[0].read_text())
    assert lines[2].startswith(f"| librispeech | - | sft | - | WER {sft['error_rate']:.2f} (")
    lpo2 = next(s for s in last if s["tags"].get("r2") == "2.0")
    row = next(line for line in lines if "| lpo | 2.0 |" in line)
    delta = lpo2["error_rate"] - sft["error_rate"]
    assert f"WER {lpo2['error_rate']:.2f} ({lpo2['ci95']['low']:.2f}–{lpo2['ci95']['high']:.2f})" in row
    assert f"| {sft['error_rate']:.2f} | {delta:+.2f} | {lpo2['baseline']['p_improvement']:.3f} |" in row
    assert "librispeech: librispeech" in table  # the normaliser is named


def test_results_markdown_and_plots_through_the_cli(summaries, tmp_path):
    out = tmp_path / "RESULTS.md"
    cli_main(
        ["score", "table", *map(str, summaries), "--out", str(out), "--plot-dir", str(tmp_path / "plots")]
    )
    text = out.read_text()
    assert text.startswith("## ASR") and "![error rate against r2](plots/error_rate_vs_r2.png)" in text
    for name in ("error_rate_vs_r2.png", "error_rate_vs_epoch.png"):
        image = matplotlib.image.imread(tmp_path / "plots" / name)
        assert image.shape[0] > 300 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # something is drawn


def test_tts_table():
    synth = {"error_rate": 12.5, "ci95": {"low": 8.0, "high": 17.0}, "problem_counts": {"no_audio": 1}}
    summ = {
        "kind": "tts",
        "system": "lpo",
        "asr": "pocketsphinx",
        "normalizer": "whisper_en",
        "metric": "WER",
        "utterances": 20,
        "intelligibility": synth,
        "codec_ceiling": {**synth, "error_rate": 7.25},
        "no_audio_end_rate": 0.05,
        "duration_ratio_mean": 1.1,
        "duration_ratio_median": 1.0,
    }
    row = tts_table([summ]).splitlines()[2]
    assert row == "| lpo | WER 12.50 (8.00–17.00) | WER 7.25 | 5.0% | 1.10 / 1.00 | 20 | no_audio 1 |"


def test_a_file_that_is_no_summary_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a summary"):
        load_summaries([tmp_path / "x.json"])
