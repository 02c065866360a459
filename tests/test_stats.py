"""speech_lpo.stats on constructed data whose answers are known."""

import itertools

import kaldialign
import numpy as np
import pytest

from speech_lpo.stats import clusters, holm, interval, paired, ratio


def test_percentile_interval_of_a_mean_matches_the_normal_theory_one():
    x = np.random.default_rng(1).normal(3.0, 1.0, 400)
    ci = interval(x, seed=0)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert ci["low"] == pytest.approx(x.mean() - half, abs=0.02)
    assert ci["high"] == pytest.approx(x.mean() + half, abs=0.02)
    assert ci["resampled"] == "utterance" and ci["units"] == 400 and ci["replications"] == 10_000


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = 0
    for seed in range(200):
        x = rng.exponential(1.0, 60)  # skewed, true mean 1
        ci = interval(x, replications=1000, seed=seed)
        hits += ci["low"] <= 1.0 <= ci["high"]
    assert 0.88 <= hits / 200 <= 0.99


def dpo_like(seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """50 utterances of 8 words like the TTS recipe's DPO outputs (pooled WER near 97%): most are mostly
    wrong, a fifth babble on with many insertions (per-utterance WER 150-300%), some are right."""
    rng = np.random.default_rng(seed)
    refs, hyps = [], []
    for i in range(50):
        ref = [f"w{rng.integers(30)}" for _ in range(8)]
        if i % 5 == 0:
            hyp = [f"x{rng.integers(30)}" for _ in range(int(rng.integers(12, 24)))]
        elif i % 5 == 1:
            hyp = list(ref)
        else:
            hyp = ref[: int(rng.integers(0, 4))] + [f"x{rng.integers(30)}" for _ in range(2)]
        refs.append(ref)
        hyps.append(hyp)
    return refs, hyps


def test_wer_interval_is_the_interval_of_the_reported_wer():
    refs, hyps = dpo_like()
    errors = []
    for r, h in zip(refs, hyps, strict=True):
        ali = kaldialign.align(r, h, "*")
        errors.append(sum(a != b for a, b in ali))
    lengths = [len(r) for r in refs]
    per_utt = [100 * e / n for e, n in zip(errors, lengths, strict=True)]
    assert max(per_utt) > 150  # some utterances are far worse than "all wrong"
    wer = ratio(errors, lengths, scale=100)
    assert 90 < wer < 100
    # what the recipe reported before: kaldialign's mean +- 1.96 sd, made of values no resample takes
    old = kaldialign.bootstrap_wer_ci(refs, hyps, replications=10_000)
    ci = interval(errors, lengths, scale=100)
    assert 0 <= ci["low"] < wer < ci["high"] and ci["high"] > 100 and "bounds" not in ci
    assert ci["low"] > 100 * old["ci95min"]
    # a pooled WER above 100 (insertions) has its interval around it, above 100: never a point outside
    doubled = [2 * e for e in errors]
    above = interval(doubled, lengths, scale=100)
    assert 100 < above["low"] < ratio(doubled, lengths, scale=100) < above["high"]
    # a declared bound clips: the interval of the clipped metric
    clipped = interval(per_utt, bounds=(0, 100))
    assert 0 <= clipped["low"] <= clipped["high"] <= 100 and clipped["bounds"] == [0, 100]


def test_speaker_resampling_widens_the_interval_when_speakers_differ():
    rng = np.random.default_rng(3)
    speakers = np.repeat([f"spk{i}" for i in range(24)], 10)
    offsets = dict(zip(np.unique(speakers), rng.normal(0, 2, 24), strict=True))
    x = np.array([offsets[s] for s in speakers]) + rng.normal(0, 0.5, len(speakers))
    by_utt = interval(x)
    by_spk = interval(x, groups=list(speakers))
    assert by_spk["resampled"] == "speaker" and by_spk["units"] == 24
    assert (by_spk["high"] - by_spk["low"]) > 2.5 * (by_utt["high"] - by_utt["low"])
    # one utterance per speaker: the same units, the same interval
    ids = [f"u{i:03d}" for i in range(len(x))]
    assert interval(x, groups=ids) | {"resampled": "utterance"} == by_utt


def test_fewer_than_twenty_speakers_are_resampled_by_utterance():
    """3 speakers give 10 distinct cluster resamples: not an interval; the rule falls back to utterances."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 60)
    few = [f"spk{i % 3}" for i in range(60)]
    assert interval(x, groups=few) == interval(x) | {"resampled": "utterance"}
    assert paired(x, x + 0.1, groups=few)["resampled"] == "utterance"
    assert clusters(few) is None and clusters([f"s{i}" for i in range(20)]) is not None


def test_paired_test_against_the_exact_permutation_p_value():
    # 6 units where the system is 1 better on 5 and 1 worse on 1: the exact two-sided sign-flip p-value
    # is the share of the 64 sign patterns with |sum| >= 4
    base = np.array([3.0, 3, 3, 3, 3, 3])
    system = base + np.array([-1.0, -1, -1, -1, -1, 1])
    d = system - base
    exact = np.mean([abs(np.dot(s, d)) >= 4 for s in itertools.product([-1, 1], repeat=6)])
    out = paired(base, system, seed=0)
    assert out["p_value"] == pytest.approx(exact, abs=0.01)
    assert out["difference"] == pytest.approx(-4 / 6)
    # the system is better in a replicate unless the worse unit is drawn 3 or more times out of 6
    from scipy.stats import binom

    assert out["p_improvement"] == pytest.approx(binom.cdf(2, 6, 1 / 6), abs=0.01)


def test_paired_test_separates_a_real_improvement_from_none():
    rng = np.random.default_rng(4)
    n_words = rng.integers(5, 15, 300)
    sft = rng.binomial(n_words, 0.30)
    lpo = rng.binomial(n_words, 0.22)
    out = paired(sft, lpo, n_words, scale=100)
    assert out["p_value"] < 0.001 and out["p_improvement"] > 0.999
    assert out["difference_ci"]["low"] < out["difference"] < out["difference_ci"]["high"] < 0
    same = paired(sft, sft.copy(), n_words, scale=100)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["p_improvement"] == 0
    # higher is better (SIM, DNSMOS): the direction flips, the p-value does not
    up = paired(-sft, -lpo, n_words, scale=100, lower_is_better=False)
    assert up["p_improvement"] > 0.999 and up["p_value"] == pytest.approx(out["p_value"], abs=0.002)
    with pytest.raises(ValueError, match="same units"):
        paired(sft, lpo[:-1])


def test_holm_step_down():
    adjusted = holm({"lpo": 0.01, "dpo": 0.04, "ipo": 0.03})
    assert adjusted == pytest.approx({"lpo": 0.03, "dpo": 0.06, "ipo": 0.06})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    assert holm({"only": 0.02}) == {"only": 0.02}
