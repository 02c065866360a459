"""Comparisons of ASR systems trained with several seeds, scored on the same test utterances.

A system is ``{seed: per-utterance (errors, reference units)}``; its error rate in a seed is pooled
(Kaldi's). Two systems are compared on the mean over seeds of their per-seed difference in error rate,
with a two-level paired bootstrap: seeds are resampled with replacement, then the test utterances within
each drawn seed (the same draw for both systems), so the interval covers both the spread between
training runs and the finite test set. A single seed reduces it to the usual paired bootstrap over
utterances. The verdict is resolved only when the 95% interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

REPLICATIONS = 2000


@dataclass(frozen=True)
class Counts:
    """Per-utterance errors and reference units of one system in one seed, in a fixed utterance order."""

    ids: tuple[str, ...]
    errors: np.ndarray
    units: np.ndarray

    @classmethod
    def from_summary(cls, summary: Mapping) -> Counts:
        """From a ``score asr`` summary (its ``utterance_errors``)."""
        if "utterance_errors" not in summary:
            raise ValueError(f"{summary.get('path', summary.get('system'))}: no per-utterance counts")
        rows = sorted(summary["utterance_errors"])
        return cls(
            tuple(r[0] for r in rows),
            np.array([r[1] for r in rows], float),
            np.array([r[2] for r in rows], float),
        )

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors.sum() / self.units.sum()


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
    delta: float  # mean over seeds of (system - baseline) error rate, points
    low: float  # 95% interval of delta (two-level bootstrap)
    high: float
    p_better: float  # share of bootstrap replications where the system has the lower error rate
    per_seed: dict[int, float]  # the difference in each seed
    better_in: int  # seeds where the system's error rate is lower

    @property
    def verdict(self) -> str:
        """'better' / 'worse' when the 95% interval excludes zero, else 'not resolved'."""
        if self.high < 0:
            return "better"
        if self.low > 0:
            return "worse"
        return "not resolved"

    def describe(self) -> str:
        seeds = len(self.per_seed)
        return (
            f"{self.delta:+.2f} points (95% CI {self.low:+.2f} to {self.high:+.2f}, P(better) "
            f"{self.p_better:.3f}; lower in {self.better_in} of {seeds} seed{'s' if seeds > 1 else ''})"
        )


def compare(
    system: Mapping[int, Counts],
    baseline: Mapping[int, Counts],
    replications: int = REPLICATIONS,
    rng_seed: int = 0,
) -> Comparison:
    """``system`` against ``baseline`` over the seeds of ``system``; a baseline with one seed (an SFT
    model shared by every seed) is paired with each of them."""
    seeds = sorted(system)
    if not seeds:
        raise ValueError("no seeds to compare")

    def base(seed: int) -> Counts:
        if seed in baseline:
            return baseline[seed]
        if len(baseline) == 1:
            return next(iter(baseline.values()))
        raise ValueError(f"seed {seed}: no baseline of that seed among {sorted(baseline)}")

    pairs = []
    for seed in seeds:
        s, b = system[seed], base(seed)
        if s.ids != b.ids:
            raise ValueError(f"seed {seed}: system and baseline were scored on different utterances")
        pairs.append((s, b))
    per_seed = {seed: float(s.error_rate - b.error_rate) for seed, (s, b) in zip(seeds, pairs, strict=True)}
    rng = np.random.default_rng(rng_seed)
    deltas = np.zeros(replications)
    drawn_seeds = rng.integers(0, len(pairs), size=(replications, len(pairs)))
    for k, (s, b) in enumerate(pairs):
        n = len(s.ids)
        uses = (drawn_seeds == k).sum(axis=1)  # how often seed k is drawn in each replication
        for r in np.flatnonzero(uses):
            for _ in range(uses[r]):
                idx = rng.integers(0, n, size=n)
                units = s.units[idx].sum()
                deltas[r] += 100.0 * (s.errors[idx].sum() - b.errors[idx].sum()) / units
    deltas /= len(pairs)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return Comparison(
        delta=float(np.mean(list(per_seed.values()))),
        low=float(low),
        high=float(high),
        p_better=float((deltas < 0).mean()),
        per_seed=per_seed,
        better_in=int(sum(d < 0 for d in per_seed.values())),
    )
