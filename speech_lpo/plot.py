"""Plot chosen and rejected log-prob trajectories of several training runs in one PNG (the paper's Figure 1).

Each run is a training output dir (its ``metrics.jsonl``). Single steps see different groups, so curves are
smoothed with a moving average over ``--window`` logging steps.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

METRICS = {
    "logratio_per_token": "log-prob change from the reference (per token)",
    "logps_per_token": "policy log-prob (per token)",
    "logps": "policy log-prob (summed over the response)",
}


def read_metric(run_dir: str | Path, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, chosen and rejected values of ``metric`` from a run's metrics.jsonl (training entries only)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if f"{metric}/chosen" in r]
    if not rows:
        raise ValueError(f"{path}: no '{metric}/chosen' entries")
    return (
        np.array([r["step"] for r in rows]),
        np.array([r[f"{metric}/chosen"] for r in rows]),
        np.array([r[f"{metric}/rejected"] for r in rows]),
    )


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)  # growing window at the start
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_runs(runs: list[str], labels: list[str], output: str | Path, metric: str, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per system and one line style per seed: "lpo_r2_2.0 (seed 1)" is lpo_r2_2.0's colour,
    # seed 1's style (twelve runs in one colour cycle repeated colours across systems)
    keys = [re.fullmatch(r"(.*?)( \(seed \d+\))?", label).groups("") for label in labels]
    systems = list(dict.fromkeys(system for system, _ in keys))
    seeds = list(dict.fromkeys(seed for _, seed in keys))
    colors = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20").colors
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharex=True)
    for run, label, (system, seed) in zip(runs, labels, keys, strict=True):
        steps, chosen, rejected = read_metric(run, metric)
        color = colors[systems.index(system) % len(colors)]
        style = styles[seeds.index(seed) % len(styles)]
        for ax, values in zip(axes, (chosen, rejected), strict=True):
            ax.plot(steps, smooth(values, window), label=label, color=color, linestyle=style)
    for ax, which in zip(axes, ("chosen", "rejected"), strict=True):
        ax.set_title(f"{which} response")
        ax.set_xlabel("training step")
        ax.set_ylabel(METRICS[metric])
        if metric == "logratio_per_token":
            ax.axhline(0.0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)  # beside the curves, not on them
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="training output dirs")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the dir names)")
    parser.add_argument("--output", required=True, help="PNG file")
    parser.add_argument("--metric", default="logratio_per_token", choices=sorted(METRICS))
    parser.add_argument("--window", type=int, default=5, help="moving-average window in logging steps")


def main(args: argparse.Namespace) -> None:
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
    plot_runs(args.runs, labels, args.output, args.metric, args.window)
    print(f"wrote {args.output}")
