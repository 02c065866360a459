"""A small end-to-end LPO run on a tiny model built from a config: the embedded default, CPU, ~1 minute.

The task is synthetic and textual (reverse a random token sequence): the chosen response is the
reversed prompt, the three rejected responses are it with one or two tokens substituted. The demo
writes the groups, computes reference log-probs, trains LPO for several r2 and a DPO baseline through
the same CLI stages the recipes use, prints a Markdown table of the final metrics and draws the
paper's Figure 1 (chosen and rejected log-probs over steps). Re-running reuses finished stages.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from speech_lpo.cli import main as cli
from speech_lpo.groups import PreferenceGroup, write_groups

VOCAB = 64
EOS = 2
FIRST_TOKEN = 4


def reversal_groups(n: int, k: int = 3, seed: int = 0) -> list[PreferenceGroup]:
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        prompt = [rng.randrange(FIRST_TOKEN, VOCAB) for _ in range(rng.randint(6, 12))]
        chosen = prompt[::-1] + [EOS]
        rejected = []
        while len(rejected) < k:
            r = list(chosen)
            for pos in rng.sample(range(len(r) - 1), rng.randint(1, 2)):
                r[pos] = rng.randrange(FIRST_TOKEN, VOCAB)
            if r != chosen and r not in rejected:
                rejected.append(r)
        groups.append(
            PreferenceGroup(f"rev{i:04d}", "text", prompt + [3], chosen, rejected, meta={"method": "demo"})
        )
    return groups


def tail_means(run_dir: Path, last: int = 10) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rewards/chosen" in r][-last:]
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if isinstance(rows[0][key], float)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="exp/demo")
    parser.add_argument("--r2", type=float, nargs="+", default=[0.4, 1.0, 3.0], help="one LPO run per value")
    parser.add_argument(
        "--groups", type=int, default=64, help="preference groups (1 chosen + 3 rejected each)"
    )
    parser.add_argument("--max_steps", type=int, default=80)


def main(args: argparse.Namespace) -> None:
    from speech_lpo.modeling import tiny_qwen2

    out = Path(args.output_dir)
    model_dir = out / "init_model"
    if not (model_dir / "config.json").exists():
        tiny_qwen2(VOCAB, hidden_size=64, num_layers=2).save_pretrained(model_dir)
    if not (out / "groups.jsonl").exists():
        write_groups(out / "groups.jsonl", reversal_groups(args.groups))
    cli(
        [
            "ref-logps",
            "--groups",
            str(out / "groups.jsonl"),
            "--model",
            str(model_dir),
            "--output",
            str(out / "groups.ref.jsonl"),
        ]
    )

    common = [
        "--groups",
        str(out / "groups.ref.jsonl"),
        "--model",
        str(model_dir),
        "--learning_rate",
        "2e-3",
        "--batch_size",
        "8",
        "--max_steps",
        str(args.max_steps),
        "--logging_steps",
        "2",
        "--save_steps",
        str(args.max_steps),
    ]
    runs = {f"LPO r2={r2:g}": out / f"lpo_r2_{r2:g}" for r2 in args.r2}
    for run_dir, r2 in zip(runs.values(), args.r2, strict=True):
        cli(["train", *common, "--output_dir", str(run_dir), "--loss", "lpo", "--r2", str(r2)])
    runs["DPO beta=0.1"] = out / "dpo"
    cli(["train", *common, "--output_dir", str(out / "dpo"), "--loss", "dpo", "--beta", "0.1"])

    cli(["plot", "--runs", *map(str, runs.values()), "--labels", *runs, "--output", str(out / "logps.png")])
    print(f"\nLast 10 logged steps, mean ({args.groups} groups x 3 rejected, {args.max_steps} steps):\n")
    print(
        "| run | chosen log-prob change / token | rejected log-prob change / token | reward accuracy | loss |"
    )
    print("|---|---|---|---|---|")
    for label, run_dir in runs.items():
        m = tail_means(run_dir)
        print(
            f"| {label} | {m['logratio_per_token/chosen']:+.3f} | {m['logratio_per_token/rejected']:+.3f} "
            f"| {m['rewards/accuracies']:.2f} | {m['loss']:.3f} |"
        )
    print(f"\nFigure 1 (chosen / rejected log-probs over steps): {out / 'logps.png'}")
