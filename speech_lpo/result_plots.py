"""PNG plots: error rate against r2 (the paper's Figure 3 layout) and over epochs, and the log-prob
trajectories of training (Figure 1) with their table."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from speech_lpo.plot import plot_runs
from speech_lpo.summaries import (
    bench_of,
    final_logratios,
    last_epochs,
    num,
    seed_means,
    system_key,
    tag,
)


def _trend(values: list[float], claim: str, how: str) -> str:
    shown = ", ".join(f"{v:+.3f}" for v in values)
    if all(b < a for a, b in zip(values, values[1:], strict=False)):
        return f"{shown}: {how} as r2 grows, as the paper's Figure 1 shows ({claim})."
    return f"{shown}: not {how} with every larger r2, unlike the paper's Figure 1 ({claim})."


def logps_section(runs: list[str | Path], plot_path: str | Path, out: str | Path) -> list[str]:
    """The paper's Figure 1 (chosen and rejected log-probs over steps) with a table of where each run ends
    and the paper's claim checked against it."""
    summaries = [json.loads((Path(run) / "train_summary.json").read_text()) for run in runs]
    seeds = {summ.get("seed") for summ in summaries}
    labels = [
        Path(r).name + (f" (seed {summ.get('seed')})" if len(seeds) > 1 else "")
        for r, summ in zip(runs, summaries, strict=True)
    ]
    plot_runs([str(r) for r in runs], labels, plot_path, "logratio_per_token", window=5)
    rows = [
        (label, summ["loss"], *final_logratios(run))
        for run, label, summ in zip(runs, labels, summaries, strict=True)
    ]
    rel = os.path.relpath(Path(plot_path).resolve(), Path(out).resolve().parent)
    lines = [
        f"![chosen and rejected log-probs over training steps]({rel})",
        "",
        "| Run | Loss | r2 | Chosen Δ log-prob per token | Rejected Δ log-prob per token |",
        "|---|---|---|---|---|",
    ]
    for label, loss, chosen, rejected in rows:
        r2 = f"{loss['r2']:g}" if loss["loss_type"] == "lpo" else "-"
        lines.append(f"| {label} | {loss['loss_type']} | {r2} | {chosen:+.4f} | {rejected:+.4f} |")
    lines += ["", "Δ: policy minus reference, averaged over the last 20% of the logged training steps.", ""]
    lpo = sorted((row for row in rows if row[1]["loss_type"] == "lpo"), key=lambda row: row[1]["r2"])
    if len(lpo) > 1 and len(seeds) == 1:  # several seeds: see the claim line (claim_figure1)
        r2s = ", ".join(f"{row[1]['r2']:g}" for row in lpo)
        lines.append(f"Measured, LPO at r2 = {r2s}:")
        lines.append(
            "- rejected Δ "
            + _trend([row[3] for row in lpo], "larger r2, faster fall of rejected", "lower at the end")
        )
        lines.append(
            "- chosen Δ "
            + _trend([row[2] for row in lpo], "larger r2, slower rise of chosen", "lower at the end")
        )
        lines.append("")
    return lines


def _axes_per_benchmark(benchmarks: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5 * len(benchmarks), 4), squeeze=False)
    return plt, fig, dict(zip(benchmarks, axes[0], strict=True))


def _y_limits(values: list[float]) -> tuple[float, float]:
    """Limits that fit the LPO points and SFT with a margin; what falls outside is marked, not fitted."""
    lo, hi = min(values), max(values)
    pad = max(0.3 * (hi - lo), 1.0)
    return max(0.0, lo - pad), hi + pad


def _off_scale(ax, y: float, limits: tuple[float, float], label: str, color, slot: int = 0) -> bool:
    """An arrow at the edge of the axis with the value, for a line far outside the others' range; ``slot``
    stacks the labels of several such lines at one edge instead of printing them on top of each other."""
    lo, hi = limits
    if lo <= y <= hi:
        return False
    edge, marker, va, step = (hi, "^", "top", -11) if y > hi else (lo, "v", "bottom", 11)
    ax.plot([0.97], [edge], marker=marker, color=color, transform=ax.get_yaxis_transform(), clip_on=False)
    ax.annotate(
        f"{label} {y:.1f} (off scale)",
        xy=(0.95, edge),
        xycoords=ax.get_yaxis_transform(),
        xytext=(0, step * slot - (3 if y > hi else -3)),
        textcoords="offset points",
        ha="right",
        va=va,
        fontsize=8,
        color=color,
    )
    return True


def _baselines(
    ax,
    rows: list[dict],
    skip_method: str | None = None,
    colors: dict | None = None,
    limits: tuple[float, float] | None = None,
) -> None:
    """SFT (grey, dotted) and DPO (dashed, in the colour of its candidate method's LPO curve) as lines;
    a line outside ``limits`` as a marked arrow with its value instead."""
    styles = {"sft": ":", "dpo": "--"}
    placed = {True: 0, False: 0}  # off-scale labels already at the top (True) and bottom edge
    for s in rows:
        method = tag(s, "method")
        if method in styles and method != skip_method:
            label = method.upper() + (f" ({tag(s, 'candidates')})" if tag(s, "candidates") else "")
            color = "grey" if method == "sft" else (colors or {}).get(tag(s, "candidates"))
            high = limits is not None and s["error_rate"] > limits[1]
            if limits is None or not _off_scale(ax, s["error_rate"], limits, label, color, placed[high]):
                ax.axhline(s["error_rate"], linestyle=styles[method], color=color, label=label)
            else:
                placed[high] += 1


def plot_vs_r2(summaries: list[dict], path: str | Path) -> None:
    _save(*r2_figure(summaries), path)


def r2_figure(summaries: list[dict]):
    """The paper's Figure 3: error rate against r2 for LPO (mean over seeds), with DPO and SFT as
    horizontal lines. The y axis fits LPO and SFT; a DPO far off that scale (DPO on perturbation pairs
    reached 125% where LPO stayed near 27%) is an arrow at the edge labelled with its value."""
    rows = seed_means(last_epochs([s for s in summaries if s["kind"] == "asr"]))
    benchmarks = sorted({bench_of(s) for s in rows})
    plt, fig, axes = _axes_per_benchmark(benchmarks)
    for bench, ax in axes.items():
        in_bench = [s for s in rows if bench_of(s) == bench]
        lines = defaultdict(list)
        for s in in_bench:
            if not math.isnan(num(tag(s, "r2", "nan"))):
                lines[(tag(s, "method"), tag(s, "candidates"))].append(s)
        fitted = [v for pts in lines.values() for s in pts for v in (s["ci95"]["low"], s["ci95"]["high"])]
        fitted += [s["error_rate"] for s in in_bench if tag(s, "method") == "sft"]
        limits = _y_limits(fitted) if fitted else None
        colors = {}
        for (method, cand), pts in sorted(lines.items()):
            pts.sort(key=lambda s: num(tag(s, "r2")))
            x = [num(tag(s, "r2")) for s in pts]
            y = [s["error_rate"] for s in pts]
            # summaries scored before intervals followed a rate past 100 end theirs at 100, below the point
            err = [
                [max(0.0, s["error_rate"] - s["ci95"]["low"]) for s in pts],
                [max(0.0, s["ci95"]["high"] - s["error_rate"]) for s in pts],
            ]
            bars = ax.errorbar(
                x,
                y,
                yerr=err,
                marker="o",
                capsize=3,
                label=f"{method.upper()} ({cand})" if cand else method.upper(),
            )
            colors.setdefault(cand, bars.lines[0].get_color())
        _baselines(ax, in_bench, colors=colors, limits=limits)
        if limits:
            ax.set_ylim(*limits)
        seeds = max(s["seeds"] for s in in_bench)
        bars = "range over seeds" if seeds > 1 else "bootstrap 95% CI"
        ax.set(title=f"{bench}\n{seeds} seed{'s' if seeds > 1 else ''}; bars: {bars}", xlabel="r2")
        ax.set_ylabel(f"%{in_bench[0]['metric']}")
        ax.legend(fontsize=8, loc="upper left")
    return plt, fig


def plot_vs_epoch(summaries: list[dict], path: str | Path) -> None:
    """The paper's Figure 2: error rate over epochs (mean over seeds) for DPO and LPO, SFT as a line."""
    rows = seed_means([s for s in summaries if s["kind"] == "asr"])
    benchmarks = sorted({bench_of(s) for s in rows})
    plt, fig, axes = _axes_per_benchmark(benchmarks)
    for bench, ax in axes.items():
        in_bench = [s for s in rows if bench_of(s) == bench]
        lines = defaultdict(list)
        for s in in_bench:
            if not math.isnan(num(tag(s, "epoch", "nan"))):
                lines[system_key(s)[1:]].append(s)
        for (cand, method, r2), pts in sorted(lines.items()):
            pts.sort(key=lambda s: num(tag(s, "epoch")))
            label = (
                method.upper() + (f" r2={r2}" if r2 != "-" else "") + (f" ({cand})" if cand != "-" else "")
            )
            ax.plot(
                [num(tag(s, "epoch")) for s in pts], [s["error_rate"] for s in pts], marker="o", label=label
            )
        _baselines(ax, [s for s in in_bench if tag(s, "method") == "sft"])
        ax.set(title=bench, xlabel="epoch", ylabel=f"%{in_bench[0]['metric']}")
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
