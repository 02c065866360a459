"""The across-seed comparison on constructed per-utterance counts where the answer is known."""

import numpy as np
import pytest

from speech_lpo.seed_compare import Comparison, Counts, compare, spread

N = 200  # test utterances


def counts(errors: np.ndarray, units: np.ndarray) -> Counts:
    return Counts(tuple(f"u{i:03d}" for i in range(N)), errors.astype(float), units.astype(float))


@pytest.fixture(scope="module")
def sft() -> dict[int, Counts]:
    """SFT of three seeds: about 20% errors on 10-unit utterances, a different draw per seed."""
    units = np.full(N, 10)
    return {seed: counts(np.random.default_rng(seed).binomial(10, 0.2, N), units) for seed in range(3)}


def fewer_errors(base: Counts, share: float, seed: int) -> Counts:
    """``base`` with one error removed from a random ``share`` of its utterances that have one."""
    rng = np.random.default_rng(100 + seed)
    fixed = (base.errors > 0) & (rng.random(N) < share)
    return counts(base.errors - fixed, base.units)


def test_better_in_every_seed_is_resolved_better(sft):
    system = {seed: fewer_errors(c, 0.5, seed) for seed, c in sft.items()}
    cmp = compare(system, sft)
    assert cmp.better_in == 3 and all(d < 0 for d in cmp.per_seed.values())
    assert cmp.high < 0 and cmp.p_better > 0.99 and cmp.verdict == "better"
    expected = np.mean([system[s].error_rate - sft[s].error_rate for s in range(3)])
    assert cmp.delta == pytest.approx(expected)
    assert "better in 3 of 3 seeds" in cmp.describe()


def test_better_in_one_seed_only_is_not_resolved(sft):
    """Much better in seed 0, the same as SFT in the others: a large mean gain that the seeds do not
    support; an utterance-only bootstrap of seed 0 alone would call it resolved."""
    system = {0: fewer_errors(sft[0], 0.6, 0), 1: sft[1], 2: sft[2]}
    cmp = compare(system, sft)
    assert cmp.better_in == 1 and cmp.delta < -1
    assert cmp.low < 0 <= cmp.high  # seeds drawn without seed 0 give exactly no difference
    assert cmp.verdict == "not resolved" and 0.5 < cmp.p_better < 0.95
    assert compare({0: system[0]}, {0: sft[0]}).verdict == "better"


def test_worse_in_every_seed_is_resolved_worse(sft):
    system = {seed: counts(c.errors + (np.arange(N) % 3 == 0), c.units) for seed, c in sft.items()}
    cmp = compare(system, sft)
    assert cmp.verdict == "worse" and cmp.better_in == 0 and cmp.low > 0


def test_one_sft_shared_by_every_seed(sft):
    system = {seed: fewer_errors(sft[0], 0.5, seed) for seed in range(3)}
    cmp = compare(system, {0: sft[0]})
    assert cmp.verdict == "better" and sorted(cmp.per_seed) == [0, 1, 2]


def test_mismatched_utterances_or_seeds_are_refused(sft):
    other = Counts(tuple(f"x{i}" for i in range(N)), sft[0].errors, sft[0].units)
    with pytest.raises(ValueError, match="different utterances"):
        compare({0: other}, sft)
    with pytest.raises(ValueError, match="no baseline of that seed"):
        compare({5: sft[0]}, sft)


def test_spread():
    sp = spread([10.0, 12.0, 14.0])
    assert (sp.mean, sp.sd, sp.low, sp.high, sp.seeds) == (12.0, 2.0, 10.0, 14.0, 3)
    assert np.isnan(spread([3.0]).sd)


# -- coverage and power, by simulation ----------------------------------------------------------------------
def _test_set(rng: np.random.Generator, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """A test set drawn from a population: utterances of 5-20 units, each with its own difficulty."""
    units = rng.integers(5, 21, n).astype(float)
    errors = rng.binomial(units.astype(int), rng.beta(2, 6, n)).astype(float)
    return errors, units


def _fine_tune(rng: np.random.Generator, sft: np.ndarray, shift: float) -> np.ndarray:
    """The change a fine-tune makes to SFT's errors, one per utterance with an error: -1 with probability
    0.15 + shift, +1 with 0.15 - shift (no change in expectation at shift 0)."""
    u = rng.random(len(sft))
    return np.where(sft > 0, np.where(u < 0.15 + shift, -1.0, np.where(u > 0.85 + shift, 1.0, 0.0)), 0.0)


def _experiment(
    rng: np.random.Generator, shift: float, seeds: int = 3, seed_sd: float = 0.0
) -> tuple[Comparison, tuple]:
    """One experiment as the recipes run it: one test set, one SFT decode shared by every seed, and a
    fine-tune that changes the same utterances in every seed, plus a little seed-specific change, and with
    ``seed_sd`` a random effect per seed (a fine-tune that is better or worse everywhere). Returns the
    crossed comparison and the old two-level interval."""
    sft, units = _test_set(rng)
    shared = _fine_tune(rng, sft, shift)
    ids = tuple(f"u{i:03d}" for i in range(N))
    system = {}
    for seed in range(seeds):
        own = np.where(rng.random(N) < 0.03, rng.choice([-1.0, 1.0], N), 0.0)
        if seed_sd:
            own += _fine_tune(rng, sft, rng.normal(0, seed_sd)) - _fine_tune(rng, sft, 0.0)
        system[seed] = Counts(ids, np.maximum(sft + shared + own, 0), units)
    base = {0: Counts(ids, sft, units)}
    return compare(system, base, replications=1000, rng_seed=int(rng.integers(1 << 30))), _two_level(
        system, base, rng
    )


def _two_level(system: dict, base: dict, rng: np.random.Generator, replications: int = 1000) -> tuple:
    """The interval compare() gave before: seeds resampled, then a fresh utterance draw per drawn seed."""
    seeds = sorted(system)
    deltas = np.zeros(replications)
    for k in rng.integers(0, len(seeds), (len(seeds), replications)):
        draws = rng.multinomial(N, np.full(N, 1 / N), replications)
        diff = np.stack([system[seeds[j]].errors - base[0].errors for j in k])  # the drawn seed's
        deltas += 100 * (draws * diff).sum(axis=1) / (draws @ base[0].units)
    return tuple(np.percentile(deltas / len(seeds), [2.5, 97.5]))


def _true_effect(shift: float) -> float:
    """The population difference in pooled error rate (points) of the fine-tune at this shift."""
    rng = np.random.default_rng(12345)
    sft, units = _test_set(rng, 2_000_000)
    return 100 * float(((sft > 0) * -2 * shift).sum() / units.sum())


@pytest.mark.slow
def test_crossed_interval_covers_a_true_zero_95_percent_of_the_time():
    """The acceptance of the statistics issue: 600 simulated experiments with no true effect; the crossed
    interval covers 0 in 93-97% of them where the old two-level one did not (about 78%). Then, at a true
    effect equal to the median printed MDE, the interval excludes 0 in about 80% of experiments."""
    rng = np.random.default_rng(2026)
    null = [_experiment(rng, 0.0) for _ in range(600)]
    crossed = np.mean([c.low <= 0 <= c.high for c, _ in null])
    old = np.mean([low <= 0 <= high for _, (low, high) in null])
    print(f"coverage of a true zero: crossed {crossed:.3f}, two-level {old:.3f}")
    assert 0.93 <= crossed <= 0.97
    assert old < 0.88
    mde = float(np.median([c.mde for c, _ in null]))
    shift = mde / _true_effect(-1.0)  # the effect is linear in the shift
    assert _true_effect(shift) == pytest.approx(-mde, rel=0.01)
    hits = [_experiment(rng, shift)[0] for _ in range(400)]
    power = np.mean([c.high < 0 for c in hits])
    print(f"median MDE {mde:.2f} points; power at that effect {power:.3f}")
    assert 0.72 <= power <= 0.88


def test_few_seeds_widen_the_interval_by_their_spread():
    """Seeds that disagree widen the interval through the t term; with one seed there is none."""
    rng = np.random.default_rng(7)
    sft, units = _test_set(rng)
    ids = tuple(f"u{i:03d}" for i in range(N))
    agree = {s: Counts(ids, np.maximum(sft - 1, 0), units) for s in range(3)}
    disagree = {s: Counts(ids, np.maximum(sft + d, 0), units) for s, d in enumerate((-2, -1, 1))}
    base = {0: Counts(ids, sft, units)}
    narrow, wide = compare(agree, base), compare(disagree, base)
    assert narrow.verdict == "better" and narrow.high - narrow.low < 3
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)
    one = compare({0: agree[0]}, base)
    assert one.low == pytest.approx(narrow.low, abs=0.2) and one.high == pytest.approx(narrow.high, abs=0.2)


def test_speakers_are_resampled_where_there_are_twenty(sft):
    ids = sft[0].ids
    few = tuple(f"s{i % 3}" for i in range(N))
    many = tuple(f"s{i % 25}" for i in range(N))
    system = {s: fewer_errors(c, 0.5, s) for s, c in sft.items()}

    def with_speakers(group: dict, speakers: tuple) -> dict:
        return {s: Counts(ids, c.errors, c.units, speakers) for s, c in group.items()}

    by_few = compare(with_speakers(system, few), with_speakers(sft, few))
    by_many = compare(with_speakers(system, many), with_speakers(sft, many))
    assert (by_few.resampled, by_few.units) == ("utterance", N)
    assert (by_many.resampled, by_many.units) == ("speaker", 25)


def test_noninferiority_margin_and_mde_are_reported(sft):
    assert compare(sft, sft).mde == 0  # no difference anywhere: nothing varies
    close = compare({s: fewer_errors(c, 0.02, s) for s, c in sft.items()}, sft)
    assert close.margin == pytest.approx(0.05 * close.baseline_rate)
    assert close.keeps == (close.high < close.margin) and close.keeps
    assert 0 < close.mde and close.mde_pct == pytest.approx(100 * close.mde / close.baseline_rate)
    assert "keeps the baseline" in close.describe_keeps()
    worse = compare({s: counts(c.errors + 1, c.units) for s, c in sft.items()}, sft)
    assert worse.verdict == "worse" and not worse.keeps
    assert "not shown to keep" in worse.describe_keeps() and "MDE" in worse.describe()


@pytest.mark.slow
def test_crossed_interval_covers_with_a_random_effect_per_seed():
    """Three seeds whose fine-tunes differ everywhere (a random effect per seed, mean 0): the t term widens
    the interval enough to keep its coverage."""
    rng = np.random.default_rng(99)
    runs = [_experiment(rng, 0.0, seed_sd=0.04)[0] for _ in range(400)]
    coverage = np.mean([c.low <= 0 <= c.high for c in runs])
    print(f"coverage of a true zero with a random effect per seed: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.985
