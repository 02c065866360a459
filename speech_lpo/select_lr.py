"""``speech-lpo select-lr``: each preference loss's learning rate, chosen on the dev set.

The ASR recipes train each loss (LPO at one r2, DPO) once per learning rate of a small grid, on one seed's
pairs and for the same number of epochs (equal compute), and score every epoch's checkpoint on the dev set.
Per loss this keeps the rate whose last epoch has the lowest dev error rate (a tie goes to the smaller
rate: the smaller change to SFT). The choice, each run's dev error per epoch and how far it moved the
chosen and rejected log-probs go to a JSON file; ``score table --lr-selection`` prints it in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speech_lpo.summaries import final_logratios, fmt, load_summaries, tag


def _runs(runs: list[str | Path]) -> dict[tuple[str, float], dict]:
    out = {}
    for run in runs:
        summ = json.loads((Path(run) / "train_summary.json").read_text(encoding="utf-8"))
        loss = summ["loss"]
        key = (loss["loss_type"], float(summ["learning_rate"]))
        if key in out:
            raise ValueError(f"{run}: a second {key[0]} run at learning rate {key[1]:g}: {out[key]['run']}")
        chosen, rejected = final_logratios(run)
        out[key] = {
            "run": str(run),
            "loss_type": key[0],
            "r2": loss["r2"] if key[0] == "lpo" else None,
            "learning_rate": key[1],
            "seed": summ.get("seed"),
            "logratio_chosen": chosen,
            "logratio_rejected": rejected,
            "dev": {},
        }
    return out


def select(scores: list[dict], runs: list[str | Path]) -> dict:
    """The selection record: every run with its dev error rate per epoch, and the rate chosen per loss.
    ``scores``: dev summaries of ``score asr`` tagged ``method`` (lpo, dpo or sft), ``lr`` and ``epoch``."""
    trained = _runs(runs)
    sft = None
    for s in scores:
        method = tag(s, "method")
        if method == "sft":
            sft = {"error_rate": s["error_rate"], "ci95": s["ci95"]}
            continue
        key = (method, float(tag(s, "lr", "nan")))
        if key not in trained:
            raise ValueError(f"{s['path']}: {method} at learning rate {key[1]:g} is none of the --runs")
        trained[key]["dev"][int(tag(s, "epoch"))] = {"error_rate": s["error_rate"], "ci95": s["ci95"]}
    chosen: dict[str, float] = {}
    for (loss, lr), row in sorted(trained.items()):
        if not row["dev"]:
            raise ValueError(f"{row['run']}: no dev score (tags method={loss} lr={lr:g} epoch=N)")
        # a list, not a dict: JSON would turn the epochs into strings
        row["dev"] = [{"epoch": e, **row["dev"][e]} for e in sorted(row["dev"])]
        best = chosen.get(loss)
        if best is None or _final(row) < _final(trained[(loss, best)]):
            chosen[loss] = lr
    return {
        "metric": scores[0].get("metric", "error rate") if scores else "error rate",
        "test_set": tag(scores[0], "test_set", "dev") if scores else "dev",
        "sft": sft,
        "runs": [trained[key] for key in sorted(trained)],
        "chosen": chosen,
    }


def _final(row: dict) -> float:
    return row["dev"][-1]["error_rate"]


def _rate(d: dict | None) -> str:
    return "-" if d is None else f"{fmt(d['error_rate'])} ({fmt(d['ci95']['low'])}–{fmt(d['ci95']['high'])})"


def selection_table(selection: dict) -> list[str]:
    """RESULTS.md lines: the grid, each run's dev error per epoch and log-prob movement, the choice."""
    runs = selection["runs"]
    epochs = sorted({d["epoch"] for row in runs for d in row["dev"]})
    metric = selection["metric"]
    head = " | ".join(f"epoch {e}" for e in epochs)
    lines = [
        f"| Loss | r2 | Learning rate | {head} | Chosen Δ log-prob/token | Rejected Δ log-prob/token | |",
        "|---|---|---|" + "---|" * len(epochs) + "---|---|---|",
    ]
    for row in runs:
        by_epoch = {d["epoch"]: d for d in row["dev"]}
        cells = [_rate(by_epoch.get(e)) for e in epochs]
        mark = "**chosen**" if selection["chosen"].get(row["loss_type"]) == row["learning_rate"] else ""
        r2 = "-" if row["r2"] is None else f"{row['r2']:g}"
        lines.append(
            f"| {row['loss_type']} | {r2} | {row['learning_rate']:g} | {' | '.join(cells)} | "
            f"{row['logratio_chosen']:+.4f} | {row['logratio_rejected']:+.4f} | {mark} |"
        )
    sft = selection["sft"]
    seeds = sorted({row["seed"] for row in runs if row["seed"] is not None})
    lines += [
        "",
        f"Dev-set %{metric} per epoch (95% interval over the dev utterances), one run per loss and learning "
        f"rate on seed {', '.join(map(str, seeds))}'s pairs, every run the same epochs (equal compute); the "
        "rate kept per loss is the one whose last epoch has the lowest dev error (a tie: the smaller rate). "
        "Δ log-prob: policy minus reference per token, averaged over the last 20% of the logged steps."
        + (f" SFT on dev: {_rate(sft)}." if sft else ""),
        "",
    ]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", nargs="+", required=True, help="dev summary-*.json of `score asr`")
    parser.add_argument("--runs", nargs="+", required=True, help="the grid's training output dirs")
    parser.add_argument("--out", required=True, help="selection JSON (read by `score table --lr-selection`)")


def main(args: argparse.Namespace) -> None:
    selection = select(load_summaries(args.scores), args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(selection, indent=2) + "\n", encoding="utf-8")
    print("\n".join(selection_table(selection)))
    for loss, lr in selection["chosen"].items():
        print(f"{loss}: learning rate {lr:g}")
