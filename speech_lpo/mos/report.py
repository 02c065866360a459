"""MOS per system and dimension with t-based 95% intervals, after screening raters.

A rater is excluded when every score they gave is the same (a straight-liner), when a hidden
reference ("high" check) gets a mean score below ``high_min`` or a degraded anchor ("low" check) a
mean above ``low_max``, or when they answered no attention check at all. Attention-check answers never
enter the means.
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

CONFIDENCE = 0.95


@dataclass
class Cell:
    system: str
    dimension: str
    n: int
    mean: float
    low: float  # t-based interval; nan when n < 2
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


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
        if len(answers) > 1 and len({row["score"] for row in answers}) == 1:
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


def summarize(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[Cell]:
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        item = defn.items.get(row["item"])
        if verdict.get(row["rater"]) is None and item is not None and item.system is not None:
            scores[item.system, row["dimension"]].append(row["score"])
    cells = []
    for system in defn.systems:
        for dim in defn.dimension_names():
            if scores[system, dim]:
                cells.append(Cell(system, dim, len(scores[system, dim]), *t_interval(scores[system, dim])))
    return cells


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
            row.append("n/a" if c is None else f"{c.mean:.2f} ± {c.half_width:.2f}")
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
        f"MOS on a {defn.scale.min:g}-{defn.scale.max:g} scale, mean ± half-width of the t-based "
        f"{CONFIDENCE:.0%} interval; {kept} raters kept, excluded: {excluded}; "
        f"{n_ratings} rated samples."
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
        errs = [c.half_width if c and not math.isnan(c.half_width) else 0 for c in cs]
        ax.bar(x, means, width, yerr=errs, capsize=3, label=system)
    ax.set_xticks(np.arange(len(dims)), [d.label for d in defn.dimensions])
    ax.set_ylim(defn.scale.min, defn.scale.max)
    ax.set_ylabel(f"MOS (error bars: {CONFIDENCE:.0%} t-interval)")
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
    table = markdown_table(defn, cells, verdict)
    summary = {
        "test": defn.name,
        "confidence": CONFIDENCE,
        "cells": [{k: None if v != v else v for k, v in asdict(c).items()} for c in cells],  # nan -> null
        "excluded": {rater: why for rater, why in verdict.items() if why is not None},
        "kept": sorted(rater for rater, why in verdict.items() if why is None),
    }
    for name, text in (("mos_table.md", table), ("mos_summary.json", json.dumps(summary, indent=1) + "\n")):
        tmp = out_dir / f"{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    bar_chart(defn, cells, out_dir / "mos_bars.png")
    return table, cells
