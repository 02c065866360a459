"""MOS per system and dimension with 95% intervals, paired tests and agreement, after screening raters.

A rater is excluded when their listening data shows a rating without a full listen (plays = 0,
heard = 0, or heard > plays: possible only by calling the API around the panel), when every score
they gave is the same (a straight-liner), when a hidden reference ("high" check) gets a mean score
below ``high_min`` or a degraded anchor ("low" check) a mean above ``low_max``, or when they answered
no attention check at all, or when they did not give a trapping question (audio that says which
answer to give, P.808) that answer. Check answers never enter the means.

Raters and utterances both vary, and ratings of one rater (or of one utterance) are not independent:
the table's interval is a percentile bootstrap that resamples raters and utterances together (the
t-interval over single ratings, too narrow then, stays in the JSON summary). Systems are compared
per dimension by Wilcoxon signed-rank tests on each rater's mean per system (each rater hears every
system), Holm-corrected over all comparisons; agreement is Krippendorff's alpha (interval level).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from speech_lpo.mos.definition import Definition
from speech_lpo.stats import holm

CONFIDENCE = 0.95
BOOTSTRAP = 2000  # resamples of raters x utterances


@dataclass
class Cell:
    system: str
    dimension: str
    n: int
    mean: float
    low: float  # t-based interval over single ratings; nan when n < 2
    high: float
    boot_low: float  # percentile bootstrap over raters and utterances
    boot_high: float


def screen(defn: Definition, rows: list[dict]) -> dict[str, str | None]:
    """Rater -> why they are excluded, or None when they are kept."""
    by_rater: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_rater[row["rater"]].append(row)
    verdict: dict[str, str | None] = {}
    for rater, answers in by_rater.items():
        check_scores: dict[str, list[float]] = defaultdict(list)
        for row in answers:
            item = defn.items.get(row["item"])
            if item is not None and item.expect is not None:
                check_scores[row["item"]].append(row["score"])
        failed = [
            item_id
            for item_id, scores in check_scores.items()
            if (defn.items[item_id].expect == "high" and np.mean(scores) < defn.high_min)
            or (defn.items[item_id].expect == "low" and np.mean(scores) > defn.low_max)
        ]
        trapped = [
            item_id
            for item_id, scores in check_scores.items()
            if defn.items[item_id].expect == "trap" and any(s != defn.items[item_id].answer for s in scores)
        ]
        unheard = [r for r in answers if r["plays"] == 0 or r["heard"] == 0 or r["heard"] > r["plays"]]
        if unheard:
            verdict[rater] = "rated without a full listen"
        elif trapped:
            verdict[rater] = "failed trapping question"
        elif len(answers) > 1 and len({row["score"] for row in answers}) == 1:
            verdict[rater] = "same score for everything"
        elif failed:
            verdict[rater] = "failed attention check"
        elif defn.check_items and not check_scores:
            verdict[rater] = "answered no attention check"
        else:
            verdict[rater] = None
    return verdict


def t_interval(scores: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): mean +- t_{0.975, n-1} * s / sqrt(n), as scipy.stats.t.interval gives."""
    x = np.asarray(scores, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def bootstrap_interval(
    raters: list[str], utterances: list[str], scores: list[float], seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean when raters and utterances are both resampled with replacement:
    a rating weighs (times its rater was drawn) x (times its utterance was drawn)."""
    r_ids, r_idx = np.unique(raters, return_inverse=True)
    u_ids, u_idx = np.unique(utterances, return_inverse=True)
    rng = np.random.default_rng(seed)
    draw_r = rng.multinomial(len(r_ids), np.full(len(r_ids), 1 / len(r_ids)), size=BOOTSTRAP)
    draw_u = rng.multinomial(len(u_ids), np.full(len(u_ids), 1 / len(u_ids)), size=BOOTSTRAP)
    weights = draw_r[:, r_idx] * draw_u[:, u_idx]  # (BOOTSTRAP, ratings)
    total = weights.sum(axis=1)
    means = (weights @ np.asarray(scores, dtype=np.float64))[total > 0] / total[total > 0]
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _kept_system_rows(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    return [
        row
        for row in rows
        if verdict.get(row["rater"]) is None
        and row["item"] in defn.items
        and defn.items[row["item"]].system is not None
    ]


def summarize(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[Cell]:
    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in _kept_system_rows(defn, rows, verdict):
        by_cell[defn.items[row["item"]].system, row["dimension"]].append(row)
    cells = []
    for system in defn.systems:
        for dim in defn.dimension_names():
            group = by_cell[system, dim]
            if group:
                scores = [r["score"] for r in group]
                boot = bootstrap_interval(
                    [r["rater"] for r in group], [defn.items[r["item"]].utterance for r in group], scores
                )
                cells.append(Cell(system, dim, len(scores), *t_interval(scores), *boot))
    return cells


def paired_tests(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    """Per dimension and pair of systems: Wilcoxon signed-rank over raters' mean scores, Holm-adjusted."""
    means: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (dim, system, rater)
    for row in _kept_system_rows(defn, rows, verdict):
        means[row["dimension"], defn.items[row["item"]].system, row["rater"]].append(row["score"])
    tests = []
    for dim in defn.dimension_names():
        for i, a in enumerate(defn.systems):
            for b in defn.systems[i + 1 :]:
                raters = sorted(r for (d, s, r) in means if d == dim and s == a and (dim, b, r) in means)
                diffs = [np.mean(means[dim, a, r]) - np.mean(means[dim, b, r]) for r in raters]
                if len(diffs) < 2 or not any(diffs):
                    p = 1.0
                else:
                    p = float(stats.wilcoxon(diffs).pvalue)
                tests.append(
                    {
                        "dimension": dim,
                        "a": a,
                        "b": b,
                        "raters": len(raters),
                        "mean_difference": float(np.mean(diffs)) if diffs else math.nan,
                        "p": p,
                    }
                )
    adjusted_p = holm({i: t["p"] for i, t in enumerate(tests)}).values()
    for test, adjusted in zip(tests, adjusted_p, strict=True):
        test["p_holm"] = adjusted
    return tests


def agreement(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> dict[str, float]:
    """Krippendorff's alpha (interval) per dimension over kept raters x system items; nan when undefined."""
    import krippendorff

    kept = _kept_system_rows(defn, rows, verdict)
    raters = sorted({r["rater"] for r in kept})
    items = sorted({r["item"] for r in kept})
    alphas = {}
    for dim in defn.dimension_names():
        data = np.full((len(raters), len(items)), np.nan)
        for r in kept:
            if r["dimension"] == dim:
                data[raters.index(r["rater"]), items.index(r["item"])] = r["score"]
        pairable = np.sum((~np.isnan(data)).sum(axis=0) >= 2)
        values = np.unique(data[~np.isnan(data)])
        if len(raters) < 2 or pairable == 0 or len(values) < 2:
            alphas[dim] = math.nan
        else:
            alphas[dim] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
    return alphas


def markdown_table(defn: Definition, cells: list[Cell], verdict: dict[str, str | None]) -> str:
    """Laid out like the paper's Table 6: one row per system, one column per dimension."""
    by_key = {(c.system, c.dimension): c for c in cells}
    lines = [
        "| System | " + " | ".join(d.label for d in defn.dimensions) + " |",
        "|---|" + "---:|" * len(defn.dimensions),
    ]
    for system in defn.systems:
        row = []
        for dim in defn.dimension_names():
            c = by_key.get((system, dim))
            row.append("n/a" if c is None else f"{c.mean:.2f} [{c.boot_low:.2f}, {c.boot_high:.2f}]")
        lines.append(f"| {system} | " + " | ".join(row) + " |")
    kept = sum(v is None for v in verdict.values())
    reasons = defaultdict(int)
    for v in verdict.values():
        if v is not None:
            reasons[v] += 1
    excluded = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "none"
    n_ratings = sum(c.n for c in cells) // max(len(defn.dimensions), 1)
    lines.append("")
    lines.append(
        f"{defn.kind.upper()}{f' against {defn.baseline}' if defn.baseline else ''} on a "
        f"{defn.scale.min:g} to {defn.scale.max:g} scale, mean [{CONFIDENCE:.0%} bootstrap interval "
        f"over raters and utterances]; {kept} raters kept, excluded: {excluded}; "
        f"{n_ratings} rated samples."
    )
    return "\n".join(lines) + "\n"


def tests_table(defn: Definition, tests: list[dict], alphas: dict[str, float]) -> str:
    labels = {d.name: d.label for d in defn.dimensions}
    lines = [
        "| Dimension | A | B | raters | mean A - B | p | p (Holm) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in tests:
        lines.append(
            f"| {labels[t['dimension']]} | {t['a']} | {t['b']} | {t['raters']} | "
            f"{t['mean_difference']:+.2f} | {t['p']:.3g} | {t['p_holm']:.3g} |"
        )
    lines.append("")
    lines.append(
        "Wilcoxon signed-rank tests on each rater's mean per system, Holm-corrected over all rows. "
        "Krippendorff's alpha (interval): "
        + ", ".join(f"{labels[d]} {a:.2f}" for d, a in alphas.items())
        + "."
    )
    return "\n".join(lines) + "\n"


def bar_chart(defn: Definition, cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(c.system, c.dimension): c for c in cells}
    dims = defn.dimension_names()
    width = 0.8 / len(defn.systems)
    fig, ax = plt.subplots(figsize=(2.6 + 1.6 * len(dims), 3.6))
    for i, system in enumerate(defn.systems):
        cs = [by_key.get((system, d)) for d in dims]
        x = np.arange(len(dims)) + (i - (len(defn.systems) - 1) / 2) * width
        means = [c.mean if c else np.nan for c in cs]
        errs = np.array([[c.mean - c.boot_low, c.boot_high - c.mean] if c else [0, 0] for c in cs]).T
        ax.bar(x, means, width, yerr=errs, capsize=3, label=system)
    ax.set_xticks(np.arange(len(dims)), [d.label for d in defn.dimensions])
    ax.set_ylim(defn.scale.min, defn.scale.max)
    ax.set_ylabel(f"MOS (bars: {CONFIDENCE:.0%} bootstrap interval)")
    ax.set_title(defn.title)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(defn: Definition, rows: list[dict], out_dir: Path) -> tuple[str, list[Cell]]:
    """Write mos_table.md, mos_bars.png and mos_summary.json into ``out_dir``; return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = screen(defn, rows)
    cells = summarize(defn, rows, verdict)
    tests, alphas = paired_tests(defn, rows, verdict), agreement(defn, rows, verdict)
    table = markdown_table(defn, cells, verdict) + "\n" + tests_table(defn, tests, alphas)
    summary = {
        "test": defn.name,
        "confidence": CONFIDENCE,
        "cells": [{k: None if v != v else v for k, v in asdict(c).items()} for c in cells],  # nan -> null
        "excluded": {rater: why for rater, why in verdict.items() if why is not None},
        "kept": sorted(rater for rater, why in verdict.items() if why is None),
        "paired_tests": [{k: None if v != v else v for k, v in t.items()} for t in tests],
        "krippendorff_alpha": {d: None if a != a else a for d, a in alphas.items()},
    }
    for name, text in (("mos_table.md", table), ("mos_summary.json", json.dumps(summary, indent=1) + "\n")):
        tmp = out_dir / f"{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    bar_chart(defn, cells, out_dir / "mos_bars.png")
    return table, cells
