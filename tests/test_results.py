"""Result tables and plots from real `score asr` summaries."""

import json
import random
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from speech_lpo.claims import claim_figure1, claim_table6, claims
from speech_lpo.cli import main as cli_main
from speech_lpo.result_plots import logps_section
from speech_lpo.result_tables import (
    across_seeds_table,
    asr_findings,
    asr_table,
    table_per_test_set,
    tts_across_seeds_table,
    tts_table,
)
from speech_lpo.summaries import last_epochs, load_summaries

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
    # top-down: the answer over seeds, the claims, then the detail with the plots
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == [
        "## The answer: each system against SFT over seeds",
        "## The paper's claims",
        "## Per seed and per test set",
    ]
    assert "![error rate against r2 (Figure 3 layout)](plots/error_rate_vs_r2.png)" in text
    assert "| MDE (% of SFT) | Verdict | Keeps SFT (margin) |" in text
    for name in ("error_rate_vs_r2.png", "error_rate_vs_epoch.png"):
        image = matplotlib.image.imread(tmp_path / "plots" / name)
        assert image.shape[0] > 300 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # something is drawn


def tts_summary(name: str, row: str, errors: list[int], sim: list[float], **extra) -> dict:
    """A `score tts` summary as tts_metrics writes it, on 4 speakers x 10 utterances of 10 words."""
    per_utt = [
        {
            "id": f"u{i:02d}",
            "speaker": f"s{i % 4}",
            "errors": e,
            "ref_words": 10,
            "sim": x,
            "dnsmos_ovrl": 3.0,
        }
        for i, (e, x) in enumerate(zip(errors, sim, strict=True))
    ]
    metric = {"value": 10.0 * sum(errors) / len(errors), "n": 40, "ci95": {"low": 1.0, "high": 99.0}}
    return {
        "kind": "tts",
        "system": name,
        "row": row,
        "test_set": "test",
        "asr": "pocketsphinx",
        "normalizer": "whisper_en",
        "metric": "WER",
        "speaker_encoder": "resemblyzer",
        "utterances": 40,
        "resampled": "speaker",
        "wer": metric,
        "wer_utt_mean": metric,
        "sim": {"value": sum(sim) / len(sim), "n": 40, "ci95": {"low": 0.5, "high": 0.9}},
        "intelligibility": {"problem_counts": {"no_audio": 1} if name == "dpo" else {}},
        "per_utterance": per_utt,
        **extra,
    }


def test_tts_table_rows_and_paired_tests():
    rng = random.Random(0)
    sft_err = [rng.randint(2, 6) for _ in range(40)]
    sft_sim = [0.7 + rng.random() / 10 for _ in range(40)]
    summaries = [
        tts_summary("sft", "system", sft_err, sft_sim, truncated_pct={"value": 5.0}),
        tts_summary("lpo", "system", list(sft_err), list(sft_sim)),  # the same outputs: no difference
        tts_summary("dpo", "system", [e + 4 for e in sft_err], [x - 0.2 for x in sft_sim]),
        tts_summary("codec_roundtrip", "roundtrip", [1] * 40, [0.9] * 40),
        tts_summary("original", "original", [0] * 40, [1.0] * 40),
    ]
    assert "UTMOS" not in tts_table(summaries)  # a column only where it was measured
    summaries[0]["utmos"] = {"value": 3.25, "n": 40, "ci95": {"low": 3.0, "high": 3.5}}
    lines = tts_table(summaries).splitlines()
    assert "| DNSMOS P.808 | UTMOS | Truncated % |" in lines[2] and lines[3].count("---") == 14
    names = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "WER" not in line]
    assert names[:5] == ["| original recordings", "| codec round trip", "| sft", "| dpo", "| lpo"]
    sft_row = next(line for line in lines if line.startswith("| sft |"))
    assert f"| {10 * sum(sft_err) / 40:.2f} (1.00–99.00) |" in sft_row and "| 5.0 |" in sft_row
    assert "| 3.25 (3.00–3.50) |" in sft_row
    assert "| n/a |" in sft_row  # no DNSMOS, repetition, ... in this summary
    text = "\n".join(lines)
    assert "left to the listening test" in text and "Paired tests against SFT" in text
    tests = {tuple(line.split(" | ")[:2]): line.split(" | ") for line in lines if line.startswith("| lpo | ")}
    tests |= {
        tuple(line.split(" | ")[:2]): line.split(" | ") for line in lines if line.startswith("| dpo | ")
    }
    same = tests[("| lpo", "WER")]
    assert same[2].startswith("+0.000") and same[3] == "1.0000" and same[4] == "1.0000"
    assert same[6] == "40 utterances |"  # 4 speakers: fewer than 20, so utterances are resampled
    worse = tests[("| dpo", "WER")]
    # resampled by utterance (4 speakers are too few to resample): 40 units all worse, so no sign flip is
    # as extreme as the observed one and p is the permutation test's floor, 1 / (replications + 1)
    assert worse[2].startswith("+40.000") and float(worse[3]) == pytest.approx(1e-4, abs=1e-4)
    assert float(worse[5]) == 0  # P(improvement): never better in any replicate
    # Holm over the two systems: the smaller p doubled
    assert float(worse[4]) == pytest.approx(2 * float(worse[3]))
    assert tests[("| dpo", "SIM")][2].startswith("-0.200")


def test_a_file_that_is_no_summary_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a summary"):
        load_summaries([tmp_path / "x.json"])


def test_measured_lines_state_the_numbers(summaries):
    loaded = load_summaries(summaries)
    last = {(s["tags"]["method"], s["tags"].get("r2")): s for s in last_epochs(loaded)}
    lines = asr_findings(loaded)
    best = min(last.values(), key=lambda s: s["error_rate"])
    head = lines[0]
    assert head.startswith("- librispeech, model candidates, %WER: SFT ")
    for (method, r2), s in last.items():
        name = "SFT" if method == "sft" else method.upper() + (f" r2={r2}" if r2 else "")
        assert f"{name} {s['error_rate']:.2f}" in head
    assert f"best: {best['tags']['method'].upper()}" in head
    assert f"{best['error_rate'] - last[('sft', None)]['error_rate']:+.2f} points against SFT" in head
    curves = [line for line in lines if "over epochs" in line]
    assert len(curves) == 4  # DPO and three LPO runs, each scored at three epochs
    assert all(line.count("(epoch ") == 3 for line in curves)


def training_run(path: Path, loss: dict, chosen_end: float, rejected_end: float) -> Path:
    """A training output dir as `speech-lpo train` leaves it: metrics.jsonl lines with per-token log-ratios
    moving linearly from 0 to the given ends, and train_summary.json with the loss settings."""
    path.mkdir(parents=True)
    rows = [
        {
            "step": 5 * i,
            "logratio_per_token/chosen": chosen_end * i / 20,
            "logratio_per_token/rejected": rejected_end * i / 20,
        }
        for i in range(1, 21)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "train_summary.json").write_text(json.dumps({"loss": {"beta": 0.2, **loss}}))
    return path


@pytest.mark.parametrize("as_in_the_paper", [True, False])
def test_figure_1_section_checks_the_papers_claim(tmp_path, as_in_the_paper):
    ends = {1.0: (0.30, -0.10), 2.0: (0.20, -0.30), 3.0: (0.10, -0.50)}
    if not as_in_the_paper:
        ends[3.0] = (0.25, -0.20)  # r2 = 3 rises faster and falls slower than r2 = 2
    runs = [training_run(tmp_path / f"lpo_r2_{r2}", {"loss_type": "lpo", "r2": r2}, *ends[r2]) for r2 in ends]
    runs.append(training_run(tmp_path / "dpo", {"loss_type": "dpo", "r2": 1.0}, -0.2, -0.9))
    lines = logps_section(runs, tmp_path / "plots" / "logps.png", tmp_path / "RESULTS.md")
    image = matplotlib.image.imread(tmp_path / "plots" / "logps.png")
    assert image[..., :3].std() > 0.05
    assert "![chosen and rejected log-probs over training steps](plots/logps.png)" in lines
    # the last 20% of 20 logged steps: the mean of steps 17 to 20 of the ramp, 0.925 of its end
    assert "| lpo_r2_2.0 | lpo | 2 | +0.1850 | -0.2775 |" in lines
    assert "| dpo | dpo | - | -0.1850 | -0.8325 |" in lines
    rejected = next(line for line in lines if line.startswith("- rejected"))
    chosen = next(line for line in lines if line.startswith("- chosen"))
    if as_in_the_paper:
        assert "lower at the end as r2 grows, as the paper's Figure 1 shows" in rejected
        assert "lower at the end as r2 grows, as the paper's Figure 1 shows" in chosen
    else:
        assert "not lower at the end with every larger r2, unlike the paper's Figure 1" in rejected
        assert "not lower at the end with every larger r2, unlike the paper's Figure 1" in chosen


def test_one_column_per_test_set(tmp_path):
    """LibriSpeech's test-clean and test-other: a column each; a system is compared with its set's SFT."""
    paths = []
    for test, base in (("test-clean", 0.2), ("test-other", 0.4)):
        tmp = tmp_path / test
        tags = {"benchmark": "librispeech", "test_set": test}
        paths.append(system(tmp, "sft", base, {**tags, "method": "sft"}))
        tags |= {"candidates": "model", "method": "lpo", "r2": "2.0", "epoch": "1"}
        paths.append(system(tmp, "lpo", base - 0.1, tags, tmp / "sft" / "text"))
    loaded = load_summaries(paths)
    rate = {(s["tags"]["test_set"], s["tags"]["method"]): s["error_rate"] for s in loaded}
    lines = table_per_test_set(loaded).splitlines()
    assert lines[0] == "| Candidates | Method | r2 | test-clean | test-other | Seeds |"
    for row, method, shown in ((lines[2], "sft", "| - | sft | -"), (lines[3], "lpo", "| model | lpo | 2.0")):
        assert (
            row
            == f"{shown} | WER {rate['test-clean', method]:.2f} | WER {rate['test-other', method]:.2f} | 1 |"
        )
    rows = asr_table(loaded).splitlines()
    other = next(row for row in rows if row.startswith("| librispeech test-other | model | lpo |"))
    sft, lpo = rate["test-other", "sft"], rate["test-other", "lpo"]
    assert f"| {sft:.2f} | {lpo - sft:+.2f} |" in other
    findings = [line.split(",")[0] for line in asr_findings(loaded)]
    assert findings == ["- librispeech test-clean", "- librispeech test-other"]


def seeded_systems(tmp_path: Path, lpo_drop, seeds=(0, 1, 2)) -> list[dict]:
    """SFT, DPO and LPO (r2 1 and 3, two candidate methods) trained with several seeds; ``lpo_drop(seed,
    r2)`` is LPO's share of deleted words (SFT's 0.30). DPO and LPO r2=3 of the model method are also
    scored at epochs 1 to 3: DPO deletes more words every epoch, LPO fewer."""
    paths = []
    for seed in seeds:
        bench = {"benchmark": "librispeech", "seed": str(seed)}
        paths.append(system(tmp_path, f"sft_s{seed}", 0.30, {**bench, "method": "sft"}))
        sft_hyp = tmp_path / f"sft_s{seed}" / "text"
        for cand in ("model", "perturb"):
            for r2 in (1.0, 3.0):
                tags = {**bench, "candidates": cand, "method": "lpo", "r2": str(r2), "epoch": "3"}
                paths.append(system(tmp_path, f"{cand}_lpo{r2}_s{seed}", lpo_drop(seed, r2), tags, sft_hyp))
            tags = {**bench, "candidates": cand, "method": "dpo", "epoch": "3"}
            paths.append(system(tmp_path, f"{cand}_dpo_s{seed}", 0.5, tags, sft_hyp))
        for epoch in (1, 2):
            tags = {**bench, "candidates": "model", "method": "dpo", "epoch": str(epoch)}
            paths.append(system(tmp_path, f"dpo_e{epoch}_s{seed}", 0.25 + 0.1 * epoch, tags, sft_hyp))
            tags = {**tags, "method": "lpo", "r2": "3.0"}
            drop = lpo_drop(seed, 3.0) + 0.1 * (3 - epoch)
            paths.append(system(tmp_path, f"lpo_e{epoch}_s{seed}", drop, tags, sft_hyp))
    return load_summaries(paths)


def claim(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith(f"- {name}"))


def test_claims_hold_when_lpo_is_better_in_every_seed(tmp_path):
    loaded = seeded_systems(tmp_path, lambda seed, r2: 0.15 if r2 == 1.0 else 0.05)
    lines = claims(loaded)
    assert "**holds**" in claim(lines, "Table 7 (librispeech)")
    assert "model candidates: r2=1.0 " in claim(lines, "Table 7") and "better in 3 of 3 seeds" in lines[0]
    vs_dpo = claim(lines, "Table 7 (librispeech), LPO below DPO")
    assert "**holds**" in vs_dpo and "perturb candidates: r2=1.0 " in vs_dpo and "% of DPO's rate" in vs_dpo
    assert "MDE" in lines[0] and "The paper's effect: LibriSpeech test-clean 7.222" in lines[0]
    assert "**holds**" in claim(lines, "Figure 2, the paper's GSM8K finding")
    assert "DPO (model) last vs first epoch +" in claim(lines, "Figure 2")
    assert "**holds**" in claim(lines, "Figure 3, the paper's MT-Bench finding")
    table = across_seeds_table(loaded)
    row = next(
        line for line in table.splitlines() if line.startswith("| librispeech | model | lpo | 3.0 | 3 |")
    )
    rates = [s["error_rate"] for s in loaded if s["system"].startswith("model_lpo3.0")]
    assert f"| {np.mean(rates):.2f} (" in row and f"| {np.std(rates, ddof=1):.2f} |" in row
    assert "| better | yes (+" in row
    assert "| librispeech | model | dpo | - | 3 |" in table and "| worse |" in table


def test_claim_not_resolved_when_lpo_is_better_in_one_seed_only(tmp_path):
    lines = claims(seeded_systems(tmp_path, lambda seed, r2: 0.10 if seed == 0 else 0.30))
    table7 = claim(lines, "Table 7 (librispeech)")
    assert "**not resolved at this scale**" in table7 and "not resolved" in table7.split("r2=1.0")[1]
    assert "tested here on ASR (librispeech): **not resolved at this scale**" in claim(lines, "Figure 3")


def test_claim_fails_when_lpo_is_worse(tmp_path):
    lines = claims(seeded_systems(tmp_path, lambda seed, r2: 0.45, seeds=(0, 1)))
    assert "**does not hold**" in claim(lines, "Table 7 (librispeech)")
    # DPO drops 0.5 of the words: LPO (0.45) is worse than SFT but not resolved against DPO in two seeds
    assert "**does not hold**" not in claim(lines, "Table 7 (librispeech), LPO below DPO")


@pytest.mark.parametrize("as_in_the_paper", [True, False])
def test_figure_1_claim_across_seeds(tmp_path, as_in_the_paper):
    runs = []
    for seed in range(3):
        for r2, (chosen, rejected) in {1.0: (0.3, -0.1), 2.0: (0.2, -0.3), 3.0: (0.1, -0.5)}.items():
            if not as_in_the_paper:
                chosen, rejected = -chosen, -rejected
            run = training_run(
                tmp_path / f"s{seed}" / f"lpo_r2_{r2}", {"loss_type": "lpo", "r2": r2}, chosen, rejected
            )
            summ = json.loads((run / "train_summary.json").read_text())
            (run / "train_summary.json").write_text(json.dumps({**summ, "seed": seed}))
            runs.append(run)
    line = claim_figure1(runs)
    assert ("**holds**" if as_in_the_paper else "**does not hold**") in line
    assert "rejected lower with the larger r2 in " + ("6 of 6" if as_in_the_paper else "0 of 6") in line
    assert "**not resolved at this scale**" in claim_figure1(runs[:2])  # one seed, one difference


def tts_system(name: str, seed: int | None, sim: float, dnsmos: float, errors: int, n: int = 60) -> dict:
    """A TTS summary with per-utterance values: SIM and DNSMOS around the given means (a little spread per
    utterance), WER from ``errors`` of 10 words, nothing truncated."""
    rng = np.random.default_rng(abs(hash((name, seed))) % 2**32)
    per_utt = [
        {
            "id": f"u{i:02d}",
            "sim": sim + rng.normal(0, 0.02),
            "dnsmos_ovrl": dnsmos + rng.normal(0, 0.05),
            "truncated": 0.0,
            "wer": 10.0 * errors,
        }
        for i in range(n)
    ]
    return {
        "kind": "tts",
        "system": name,
        "source": f"exp/{'' if seed is None else f'seed{seed}/'}synth/{name}",
        "wer": {"value": 10.0 * errors},
        "sim": {"value": sim},
        "dnsmos_ovrl": {"value": dnsmos},
        "truncated_pct": {"value": 0.0},
        "per_utterance": per_utt,
        "intelligibility": {
            "utterance_errors": [[r["id"], errors, 10] for r in per_utt],
            "problem_counts": {},
        },
    }


def test_table6_claim_gives_one_verdict_per_dimension():
    """LPO has a higher SIM than SFT in every seed, the same DNSMOS and no truncation: fidelity better,
    naturalness and stability kept (within the 5% margin); expressiveness is said to be unmeasured. The
    claim (rated above SFT on every dimension) is not resolved: keeping is not improving."""
    rows = [tts_system("sft", s, 0.60, 3.0, 3) for s in range(3)]
    rows += [tts_system("lpo_r2_0.4", s, 0.70, 3.0, 3) for s in range(3)]
    line = claim_table6(rows)
    assert (
        "fidelity: **better**" in line and "naturalness: **keeps**" in line and "stability: **keeps**" in line
    )
    assert "**not resolved at this scale**" in line and "Emotional expressiveness: not measured" in line
    assert "MDE" in line and "against the margin" in line
    # lower SIM in every seed: fidelity worse, and the claim does not hold
    rows = [tts_system("sft", s, 0.60, 3.0, 3) for s in range(3)]
    rows += [tts_system("lpo_r2_0.4", s, 0.50, 3.0, 3) for s in range(3)]
    line = claim_table6(rows)
    assert "fidelity: **worse**" in line and "**does not hold**" in line
    # better on every measured dimension: holds
    rows = [tts_system("sft", s, 0.60, 3.0, 3) for s in range(3)]
    rows += [tts_system("lpo_r2_0.4", s, 0.70, 3.5, 3) for s in range(3)]
    for r in rows:
        r.pop("truncated_pct")
    assert "**holds**" in claim_table6(rows)


def test_table6_counts_utterances_without_a_value():
    rows = [tts_system("sft", s, 0.60, 3.0, 3) for s in range(3)]
    rows += [tts_system("lpo_r2_0.4", s, 0.70, 3.0, 3) for s in range(3)]
    rows[3]["per_utterance"][0]["sim"] = None  # a silent output: no SIM
    assert "1 utterances without a value" in claim_table6(rows)


def plotted(method: str, rate: float, seed: int, cand: str = "perturb", r2: str = "-") -> dict:
    tags = {"benchmark": "aishell1", "candidates": cand, "method": method, "r2": r2, "seed": str(seed)}
    if method == "sft":
        tags = {"benchmark": "aishell1", "method": "sft", "seed": str(seed)}
    ci = {"low": rate - 1.5, "high": rate + 1.5}
    return {
        "kind": "asr",
        "system": f"{method}{r2}{seed}",
        "tags": tags,
        "error_rate": rate,
        "ci95": ci,
        "metric": "CER",
    }


def test_r2_plot_marks_a_system_far_off_scale(tmp_path):
    """DPO at 125% (as a real run gave) does not flatten the LPO points: the axis fits LPO and SFT and
    DPO is an arrow at the top edge labelled with its mean over seeds."""
    from speech_lpo.result_plots import r2_figure

    rows = []
    for seed, shift in ((0, 0.0), (1, 1.0)):
        rows += [plotted("sft", 27.4 + shift, seed), plotted("dpo", 124.3 + shift, seed)]
        rows += [plotted("dpo", 29.0 + shift, seed, cand="model")]
        rows += [plotted("lpo", 26.0 + r + shift, seed, r2=f"{r:.1f}") for r in (1.0, 2.0, 3.0)]
    plt, fig = r2_figure(rows)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 20 < low < 27 and 30 < high < 40  # LPO (27-30 over seeds) and SFT fill the axis
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["DPO (perturb) 124.8 (off scale)"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "DPO (model)" in legend and "DPO (perturb)" not in legend  # in range: an ordinary line
    assert "2 seeds; bars: range over seeds" in ax.get_title()
    plt.close(fig)

    plt, fig = r2_figure([r for r in rows if r["tags"]["method"] != "dpo" or r["error_rate"] < 100])
    assert len(fig.axes[0].texts) == 0  # nothing off scale, nothing marked
    plt.close(fig)

    # two systems off scale at the same edge (as the LibriSpeech run gave): two labels, one under the other
    far = [r for r in rows if r["tags"].get("candidates") != "model" or r["tags"]["method"] != "dpo"]
    far += [plotted("dpo", 40.0 + shift, seed, cand="model") for seed, shift in ((0, 0.0), (1, 1.0))]
    plt, fig = r2_figure(far)
    fig.canvas.draw()
    labels = sorted(fig.axes[0].texts, key=lambda t: t.get_text())
    expected = ["DPO (model) 40.5 (off scale)", "DPO (perturb) 124.8 (off scale)"]
    assert [t.get_text() for t in labels] == expected
    boxes = [t.get_window_extent() for t in labels]
    assert not boxes[0].overlaps(boxes[1])
    plt.close(fig)


def test_r2_plot_of_one_seed_above_100_percent():
    """A tiny model's CER can pass 100% (insertions); a summary scored before intervals followed the rate
    past 100 has one that ends at 100, below the point, and the plot draws no bar above it instead of
    failing."""
    from speech_lpo.result_plots import r2_figure

    rows = [plotted("sft", 389.0, 0), plotted("lpo", 240.0, 0, r2="1.0"), plotted("lpo", 180.0, 0, r2="2.0")]
    for r in rows:
        r["ci95"] = {"low": 95.0, "high": 100.0}
    plt, fig = r2_figure(rows)
    assert fig.axes[0].get_ylim()[1] >= 240.0
    plt.close(fig)


def test_tts_seed_comes_from_the_recipes_synth_dir():
    errs = [[f"u{i}", i % 2, 10] for i in range(50)]
    synth = {
        "error_rate": 5.0,
        "ci95": {"low": 4.0, "high": 6.0},
        "problem_counts": {},
        "utterance_errors": errs,
    }
    rows = [
        {
            "kind": "tts",
            "system": name,
            "path": name,
            "source": f"exp/{where}synth/{name}",
            "intelligibility": synth,
        }
        for name, where in [
            ("sft", ""),
            ("lpo_r2_0.4", "seed0/"),
            ("lpo_r2_0.4", "seed1/"),
            ("dpo", "seed1/"),
        ]
    ]
    from speech_lpo.summaries import compare_groups, intelligibility, tts_by_seed
    from speech_lpo.summaries import seed_of as _seed

    assert [_seed(r) for r in rows] == [None, 0, 1, 1]
    cmp = compare_groups(intelligibility(tts_by_seed(rows)["lpo_r2_0.4"]), intelligibility({None: rows[0]}))
    assert cmp.delta == 0 and sorted(cmp.per_seed) == [0, 1]  # two LPO seeds against one SFT


def test_tts_across_seeds_table_knows_better_in_every_seed_from_better_in_one():
    """Constructed: LPO has fewer errors than SFT in each of 3 seeds, DPO in seed 0 only (and more in the
    others): only LPO is resolved better; means, spreads and the count of seeds are the table's."""

    def synth(name: str, where: str, errors: list[int]) -> dict:
        errs = [[f"u{i:02d}", e, 10] for i, e in enumerate(errors)]
        rate = 10.0 * sum(errors) / len(errors)
        return {
            "kind": "tts",
            "system": name,
            "source": f"exp/{where}synth/{name}",
            "utterances": len(errors),
            "wer": {"value": rate},
            "sim": {"value": 0.6},
            "intelligibility": {"utterance_errors": errs, "problem_counts": {}},
        }

    sft = [3] * 60
    rows = [synth("sft", "", sft)]
    rows += [synth("lpo_r2_0.4", f"seed{s}/", [2] * 60) for s in range(3)]
    rows += [
        synth("dpo", "seed0/", [1] * 60),
        synth("dpo", "seed1/", [4] * 60),
        synth("dpo", "seed2/", [4] * 60),
    ]
    table = tts_across_seeds_table(rows)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert lines["sft"].startswith("| sft | 1 | 30.00 (n/a) |")
    lpo = lines["lpo_r2_0.4"]
    assert "| lpo_r2_0.4 | 3 | 20.00 (0.00) | 20.00–20.00 | -10.00 (-10.00 to -10.00) |" in lpo
    assert lpo.endswith("| 3 of 3 | better | n/a | 0.600 (0.000) | n/a | n/a | 180 (0, 0) |")
    assert "| dpo | 3 | 30.00 (17.32) | 10.00–40.00 | +0.00" in lines["dpo"]
    assert "| 1 of 3 | not resolved |" in lines["dpo"]
    assert "SFT was trained once and shared by every seed" in table and "crossed bootstrap" in table

    # one output without audio (`score tts --missing skip` leaves it out of that seed's counts): the
    # comparison is made on the utterances every seed and SFT have, and says how many it leaves out
    rows[4]["intelligibility"]["utterance_errors"].pop(7)
    rows[5]["intelligibility"]["utterance_errors"].pop(7)
    lines = {
        line.split(" | ")[0].strip("| "): line
        for line in tts_across_seeds_table(rows).splitlines()
        if line.startswith("| ")
    }
    assert "| 1 of 3 | not resolved; 1 utts left out (no audio in a seed) |" in lines["dpo"]
    assert "| 3 of 3 | better |" in lines["lpo_r2_0.4"]  # the other systems keep every utterance
