"""Comparisons of systems trained with several seeds, scored on one shared test set.

A system is ``{seed: per-utterance (errors, reference units)}``; its error rate in a seed is pooled
(Kaldi's). Two systems are compared on the mean over seeds of their per-seed difference in error rate.

The interval is a crossed bootstrap. Every seed is scored on the same test utterances, so the test set's
sampling error is shared by all seeds and by the baseline: each replication draws the test units once
(speakers where the set has ``stats.MIN_CLUSTERS`` or more, else utterances) and scores every seed of both
systems on that one draw. Drawing a fresh sample per seed, as a two-level bootstrap does, averages that
shared error down as if the test set had been measured once per seed (in the simulation of
``tests/test_seed_compare.py`` its 95% interval covered a true zero in 78% of experiments).

The spread between training runs is the second source. Part of it is already in that draw: each seed's own
utterance-level changes are resampled with the utterances. What is left is a random effect per seed (a
seed that is better or worse everywhere), with variance tau^2 = (the sample variance of the per-seed
differences) - (the part of it that the utterance draw explains), floored at 0. Resampling three seeds
would give ten distinct draws and shrink that variance by (S-1)/S; instead each replication adds
``t * tau / sqrt(S)`` with ``t`` a Student-t draw on S-1 degrees of freedom, the random-effects interval of
a mean of S runs, whose heavy tails widen the interval as much as few seeds warrant. With one seed that
term is absent, and the interval covers the test set only (a run-to-run spread it cannot see: say so where
it is printed).

Beside the interval: the minimum detectable effect at 80% power (the true difference that the 95% interval
would exclude zero for in 80% of experiments like this one), and the non-inferiority verdict ("keeps")
against a declared margin. Coverage and power are checked by simulation in the tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from speech_lpo import stats

REPLICATIONS = 4000
POWER = 0.8
NONINFERIORITY_MARGIN = 0.05  # "keeps": the interval's upper end below 5% of the baseline's error rate


@dataclass(frozen=True)
class Counts:
    """Per-utterance errors and reference units of one system in one seed, in a fixed utterance order;
    ``speakers`` (the utterances' speakers) where the data dir's ``utt2spk`` was known. Any per-utterance
    mean fits too (SIM, DNSMOS, a 0/100 flag): values as ``errors``, units of 1 and ``scale`` 1."""

    ids: tuple[str, ...]
    errors: np.ndarray
    units: np.ndarray
    speakers: tuple[str, ...] | None = None
    scale: float = 100.0  # a rate in percent

    @classmethod
    def from_summary(cls, summary: Mapping) -> Counts:
        """From a ``score asr`` summary (its ``utterance_errors``: id, errors, units[, speaker])."""
        if "utterance_errors" not in summary:
            raise ValueError(f"{summary.get('path', summary.get('system'))}: no per-utterance counts")
        rows = sorted(summary["utterance_errors"])
        speakers = tuple(r[3] for r in rows) if rows and all(len(r) > 3 and r[3] for r in rows) else None
        return cls(
            tuple(r[0] for r in rows),
            np.array([r[1] for r in rows], float),
            np.array([r[2] for r in rows], float),
            speakers,
        )

    @property
    def error_rate(self) -> float:
        return self.scale * self.errors.sum() / self.units.sum()

    def subset(self, ids: list[str]) -> Counts:
        """The same counts on ``ids`` only (each one of ``self.ids``), in that order."""
        index = {u: k for k, u in enumerate(self.ids)}
        rows = [index[u] for u in ids]
        speakers = tuple(self.speakers[k] for k in rows) if self.speakers else None
        return Counts(tuple(ids), self.errors[rows], self.units[rows], speakers, self.scale)


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float  # sample standard deviation across seeds; nan for one seed
    low: float
    high: float
    seeds: int


def spread(rates: list[float]) -> Spread:
    a = np.asarray(rates, float)
    sd = float(a.std(ddof=1)) if len(a) > 1 else math.nan
    return Spread(float(a.mean()), sd, float(a.min()), float(a.max()), len(a))


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean over seeds of (system - baseline), points (of the rate, or the metric's own unit)
    low: float  # 95% interval of delta (crossed bootstrap)
    high: float
    p_better: float  # share of bootstrap replications where the system is better
    per_seed: dict[int, float]  # the difference in each seed
    better_in: int  # seeds where the system's error rate is lower
    baseline_rate: float  # the baseline's error rate, mean over seeds
    mde: float  # minimum detectable effect at 80% power, points
    margin: float  # non-inferiority margin, points
    resampled: str  # "utterance" or "speaker"
    units: int  # test units resampled
    lower_is_better: bool = True
    unit: str = " points"  # of a rate in percent; "" for a mean such as SIM

    @property
    def verdict(self) -> str:
        """'better' / 'worse' when the 95% interval excludes zero, else 'not resolved'."""
        if self.high < 0:
            return "better" if self.lower_is_better else "worse"
        if self.low > 0:
            return "worse" if self.lower_is_better else "better"
        return "not resolved"

    @property
    def keeps(self) -> bool:
        """Non-inferior: the interval's worse end is at most the margin away (a system identical to a
        baseline of 0, such as no truncation in either, keeps it)."""
        return self.high <= self.margin if self.lower_is_better else self.low >= -self.margin

    @property
    def mde_pct(self) -> float:
        """The minimum detectable effect as a percentage of the baseline's error rate."""
        return 100.0 * self.mde / abs(self.baseline_rate) if self.baseline_rate else math.nan

    @property
    def p_two_sided(self) -> float:
        return min(1.0, 2 * min(self.p_better, 1 - self.p_better))

    def describe(self) -> str:
        seeds = len(self.per_seed)
        return (
            f"{self.delta:+.2f}{self.unit} (95% CI {self.low:+.2f} to {self.high:+.2f}, MDE {self.mde:.2f}"
            + (f" = {self.mde_pct:.1f}% of the baseline" if self.baseline_rate else "")
            + f"; better in {self.better_in} of {seeds} "
            f"seed{'s' if seeds > 1 else ''})"
        )

    def describe_keeps(self) -> str:
        """The non-inferiority reading, its margin beside it."""
        word = "keeps" if self.keeps else "not shown to keep"
        end, sign = ("upper", "+") if self.lower_is_better else ("lower", "-")
        worse_end = self.high if self.lower_is_better else self.low
        return f"{word} the baseline ({end} end {worse_end:+.2f} against the margin {sign}{self.margin:.2f})"


def _per_unit(counts: list[Counts]) -> tuple[np.ndarray, np.ndarray, str]:
    """Errors (units x seeds) and reference units per resampled unit: per speaker by the rule of
    ``stats.clusters``, else per utterance."""
    errors = np.stack([c.errors for c in counts], axis=1)
    units = counts[0].units
    groups = stats.clusters(counts[0].speakers)
    if groups is None:
        return errors, units, "utterance"
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n = index.max() + 1
    sum_errors = np.zeros((n, errors.shape[1]))
    np.add.at(sum_errors, index, errors)
    return sum_errors, np.bincount(index, weights=units, minlength=n), "speaker"


def _between_seeds(d: np.ndarray, per_seed: dict[int, float]) -> float:
    """The variance between seeds that the utterance draw does not already hold: the sample variance of
    the per-seed differences, less the part that is the seeds' own utterance-level noise (its size is the
    bootstrap variance of each seed's deviation from the seed mean, times S/(S-1))."""
    k = d.shape[1]
    observed = float(np.var(list(per_seed.values()), ddof=1))
    noise = float(np.nanvar(d - d.mean(axis=1, keepdims=True), axis=0).mean()) * k / (k - 1)
    return max(0.0, observed - noise)


def compare(
    system: Mapping[int, Counts],
    baseline: Mapping[int, Counts],
    replications: int = REPLICATIONS,
    rng_seed: int = 0,
    margin_share: float = NONINFERIORITY_MARGIN,
    lower_is_better: bool = True,
) -> Comparison:
    """``system`` against ``baseline`` over the seeds of ``system``; a baseline with one seed (an SFT
    model shared by every seed) is paired with each of them. Every seed must be scored on the same test
    utterances (one test set, drawn once per replication)."""
    seeds = sorted(system)
    if not seeds:
        raise ValueError("no seeds to compare")

    def base(seed: int) -> Counts:
        if seed in baseline:
            return baseline[seed]
        if len(baseline) == 1:
            return next(iter(baseline.values()))
        raise ValueError(f"seed {seed}: no baseline of that seed among {sorted(baseline)}")

    sys_counts, base_counts = [system[s] for s in seeds], [base(s) for s in seeds]
    for seed, s, b in zip(seeds, sys_counts, base_counts, strict=True):
        if s.ids != b.ids or s.ids != sys_counts[0].ids:
            raise ValueError(f"seed {seed}: system and baseline were scored on different utterances")
    per_seed = {
        seed: float(s.error_rate - b.error_rate)
        for seed, s, b in zip(seeds, sys_counts, base_counts, strict=True)
    }
    sys_err, units, resampled = _per_unit(sys_counts)
    base_err, _, _ = _per_unit(base_counts)
    diff = sys_err - base_err  # units x seeds
    scale = sys_counts[0].scale
    n, k = diff.shape
    rng = np.random.default_rng(rng_seed)
    per_draw = []
    for start in range(0, replications, stats.CHUNK):
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=min(stats.CHUNK, replications - start))
        with np.errstate(invalid="ignore", divide="ignore"):
            per_draw.append(scale * (draws @ diff) / (draws @ units)[:, None])  # one draw for every seed
    d = np.concatenate(per_draw)  # replications x seeds
    deltas = d.mean(axis=1)
    if k > 1:
        deltas += rng.standard_t(k - 1, size=len(d)) * math.sqrt(_between_seeds(d, per_seed) / k)
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    median, upper = np.nanpercentile(deltas, [50, 100 * POWER])
    baseline_rate = float(np.mean([b.error_rate for b in base_counts]))
    return Comparison(
        delta=float(np.mean(list(per_seed.values()))),
        low=float(low),
        high=float(high),
        p_better=float(np.mean(deltas < 0 if lower_is_better else deltas > 0)),
        per_seed=per_seed,
        better_in=int(sum(d < 0 if lower_is_better else d > 0 for d in per_seed.values())),
        baseline_rate=baseline_rate,
        # the true difference at which the estimate lands beyond the interval's half-width 80% of the time
        mde=float((high - low) / 2 + (upper - median)),
        margin=margin_share * abs(baseline_rate),
        resampled=resampled,
        units=n,
        lower_is_better=lower_is_better,
        unit=" points" if scale == 100 else "",
    )


def rate_interval(system: Mapping[int, Counts], replications: int = REPLICATIONS) -> tuple[float, float]:
    """The crossed 95% interval of a system's rate averaged over its seeds (its difference from a system
    with no errors), held at 0 from below: the seeds' t term is symmetric, a rate is not."""
    nothing = {seed: dataclasses.replace(c, errors=np.zeros_like(c.errors)) for seed, c in system.items()}
    cmp = compare(system, nothing, replications)
    return max(0.0, cmp.low), cmp.high


def footnote(comparisons: list[Comparison], baseline_seeds: int, system_seeds: int) -> str:
    """What the intervals of a table are, and, where the baseline was trained once, what they leave out."""
    resampled = sorted({f"{c.units} {c.resampled}s" for c in comparisons}) or ["test utterances"]
    text = (
        "Δ: mean over seeds of the per-seed difference from SFT, its 95% interval from a crossed bootstrap "
        f"({REPLICATIONS} replications: one draw of the test units, {' / '.join(resampled)}, shared by every "
        "seed and SFT, plus a Student-t random effect per seed for the spread between training runs). "
        "Verdict: better or worse only when the interval excludes 0. MDE: the minimum detectable effect at "
        f"{POWER:.0%} power, in points and as % of SFT. Keeps: the interval's upper end below the "
        f"non-inferiority margin, {NONINFERIORITY_MARGIN:.0%} of SFT's rate (printed)."
    )
    if baseline_seeds == 1 and system_seeds > 1:
        text += (
            " SFT was trained once and shared by every seed: its own run-to-run spread is in no interval "
            "(`--sft_seeds true` retrains it per seed)."
        )
    elif system_seeds == 1:
        text += " One seed: the intervals cover the test set only, not the spread between training runs."
    return text
