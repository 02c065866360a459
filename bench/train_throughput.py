"""Training throughput and memory: this trainer (packed groups or one row per pair) against TRL's DPOTrainer.

Same model, same groups (1 chosen + 3 rejected), same pairs per optimiser step, reference log-probs
precomputed in all three, float32, gradient checkpointing off in all three (TRL's DPOConfig turns it on by
default: every DPOConfig value that differs from ours is printed). The model has the real vocabulary,
Qwen2.5's 151,936 rows plus a 16,384-code audio block, with Qwen2.5-0.5B's width (hidden 896, 14 heads,
2 KV heads) and 2 layers. Shapes: ``asr`` (prompt 300, responses 20), ``tts`` (30, 300), ``tts_long``
(60, 1,000). Each configuration runs in its own process.

Training memory is the peak above the baseline taken after loading (model, data, reference log-probs):
on a GPU the maximum allocated minus what was allocated before training; on CPU the process's RSS sampled
every 2 ms by a thread, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed
tensors leave the RSS. Beside each speed-up is its physical limit: TRL's token count over the unique
tokens (TRL runs the prompt and the chosen response once per pair, this trainer once per group).

A second table: the memory of the response log-probs alone (forward and backward) against the number of
response tokens, with the LM head in chunks of 256 tokens and in one chunk (the unchunked path).

    .venv/bin/python bench/train_throughput.py [--shapes asr tts tts_long] [--steps 4] [--rounds 2]
        [--groups_per_step 4] [--logps_tokens 256 512 1024]

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

import torch

SHAPES = {"asr": (300, 20), "tts": (30, 300), "tts_long": (60, 1000)}
METHODS = ("packed", "unpacked", "trl")
VOCAB = 151_936 + 16_384
K = 3
WARMUP = 1  # optimiser steps before the timed ones
LOGPS_CHUNKS = (256, None)  # None: one chunk of all response tokens, i.e. the unchunked path


def bench_model(vocab: int, hidden: int, layers: int):
    from speech_lpo.modeling import tiny_qwen2

    heads = hidden // 64  # Qwen2.5-0.5B: 896 / 64 = 14 heads, 2 KV heads
    return tiny_qwen2(
        vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=2, intermediate_size=4864
    )


def make_groups(shape: str, n: int, vocab: int):
    from speech_lpo.groups import PreferenceGroup

    prompt_len, resp_len = SHAPES[shape]
    rng = random.Random(0)

    def ids(length: int) -> list[int]:  # lengths vary by +-10% as real data does
        return [rng.randrange(3, vocab) for _ in range(rng.randint(int(length * 0.9), int(length * 1.1)))]

    return [
        PreferenceGroup(
            f"g{i}", shape, ids(prompt_len), ids(resp_len) + [1], [ids(resp_len) + [1] for _ in range(K)]
        )
        for i in range(n)
    ]


def token_limit(groups) -> float:
    """TRL's tokens (prompt + chosen and prompt + rejected, per pair) over the unique tokens of the groups."""
    trl = sum(2 * len(g.prompt_ids) + len(g.chosen_ids) + len(r) for g in groups for r in g.rejected_ids)
    return trl / sum(g.packed_length() for g in groups)


def configs(out: str, groups_per_step: int, steps: int) -> tuple[dict, dict]:
    """Keyword arguments of our PreferenceConfig and of TRL's DPOConfig: the same optimisation."""
    common = {
        "output_dir": out,
        "beta": 0.1,
        "max_steps": steps,
        "learning_rate": 1e-5,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1000,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,  # DPOConfig's default is True
        "gradient_checkpointing": False,  # DPOConfig's default is True
    }
    ours = {**common, "loss_type": "dpo", "per_device_train_batch_size": groups_per_step}
    trl = {
        **common,
        "per_device_train_batch_size": groups_per_step * K,  # one row per pair: the same pairs per step
        "precompute_ref_log_probs": True,
        "precompute_ref_batch_size": groups_per_step * K,
        "max_length": None,  # DPOConfig truncates to 1,024 tokens by default
    }
    return ours, trl


def trl_settings(groups_per_step: int, steps: int) -> dict:
    """What we set in DPOConfig, and every DPOConfig value that differs from our PreferenceConfig's."""
    from trl import DPOConfig

    from speech_lpo.trainer import PreferenceConfig

    ours_kwargs, trl_kwargs = configs("out", groups_per_step, steps)
    ours, trl = PreferenceConfig(**ours_kwargs).to_dict(), DPOConfig(**trl_kwargs).to_dict()
    differs = {k: [v, ours[k]] for k, v in trl.items() if k in ours and v != ours[k] and k != "logging_dir"}
    return {"set": {k: v for k, v in trl_kwargs.items() if k != "output_dir"}, "differs_from_ours": differs}


class PeakMemory:
    """Peak memory above the baseline at entry, in MiB: GPU max allocated, or CPU RSS sampled in a thread."""

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            process = psutil.Process()
            self.base = self.peak = process.memory_info().rss
            self.stop = threading.Event()

            def sample() -> None:
                while not self.stop.is_set():
                    self.peak = max(self.peak, process.memory_info().rss)
                    time.sleep(0.002)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
        self.mb = (self.peak - self.base) / 2**20


class StepTimer:
    """Wall time of the optimiser steps after the warm-up ones."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if state.global_step == WARMUP:
                    timer.start = time.perf_counter()
                timer.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = 0.0


def ours_trainer(model, groups, shared_prefix: bool, kwargs: dict, timer: StepTimer):
    from speech_lpo.ref_logps import with_ref_logps
    from speech_lpo.trainer import PreferenceConfig, PreferenceTrainer

    batch = kwargs["per_device_train_batch_size"]
    groups = list(with_ref_logps(model, groups, batch_size=batch, shared_prefix=shared_prefix))
    args = PreferenceConfig(**kwargs, shared_prefix=shared_prefix)
    return PreferenceTrainer(model=model, args=args, train_dataset=groups, callbacks=[timer.callback])


def trl_trainer(model, groups, kwargs: dict, vocab: int, timer: StepTimer):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    # A word-level tokenizer whose word "w<i>" is id i, so TRL's own tokenisation yields exactly our ids.
    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")

    def text(ids: list[int]) -> str:
        return "".join(" <eos>" if i == 1 else f" w{i}" for i in ids)

    rows = [(g.prompt_ids, g.chosen_ids, r) for g in groups for r in g.rejected_ids]
    data = Dataset.from_dict(
        {
            "prompt": [text(p).strip() for p, _, _ in rows],
            "chosen": [text(c) for _, c, _ in rows],
            "rejected": [text(r) for _, _, r in rows],
        }
    )
    return DPOTrainer(
        model=model,
        args=DPOConfig(**kwargs),
        train_dataset=data,
        processing_class=tok,
        callbacks=[timer.callback],
    )


def train_worker(method: str, shape: str, opts: argparse.Namespace) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = bench_model(opts.vocab, opts.hidden, opts.layers).to(device)
    groups = make_groups(shape, opts.groups_per_step * opts.steps, opts.vocab)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        ours, trl = configs(out, opts.groups_per_step, opts.steps)
        if method == "trl":
            trainer = trl_trainer(model, groups, trl, opts.vocab, timer)
        else:
            trainer = ours_trainer(model, groups, method == "packed", ours, timer)
        with PeakMemory() as memory:
            trainer.train()
    timed_pairs = (opts.steps - WARMUP) * opts.groups_per_step * K
    return {"pairs_per_s": timed_pairs / (timer.end - timer.start), "peak_mb": memory.mb}


def logps_worker(tokens: int, chunk: int | None, opts: argparse.Namespace) -> dict:
    """Memory of the response log-probs, forward and backward, for one group of ``tokens`` response tokens."""
    from speech_lpo.groups import PreferenceGroup
    from speech_lpo.packing import collate_groups, response_logps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = bench_model(opts.vocab, opts.hidden, opts.layers).to(device)
    rng = random.Random(0)
    responses = [[rng.randrange(3, opts.vocab) for _ in range(tokens // (K + 1))] for _ in range(K + 1)]
    prompt = [rng.randrange(3, opts.vocab) for _ in range(30)]
    group = PreferenceGroup("g", "tts", prompt, responses[0], responses[1:])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_groups([group]).items()}
    n = len(batch["tok_target"])
    start = time.perf_counter()
    with PeakMemory() as memory:
        response_logps(model, batch, chunk_size=chunk or n).sum().backward()
    return {"peak_mb": memory.mb, "seconds": time.perf_counter() - start}


def run_worker(*args: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # large frees go back to the OS: RSS tracks use
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:3]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=4, help=f"optimiser steps, the first {WARMUP} untimed")
    parser.add_argument("--groups_per_step", type=int, default=4, help=f"groups (1 + {K} responses) a step")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration; the best is kept")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--logps_tokens", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        kind, a, b = opts.worker
        if kind == "train":
            result = train_worker(a, b, opts)
        else:
            result = logps_worker(int(a), None if b == "all" else int(b), opts)
        print(json.dumps(result))
        return

    model_opts = ["--vocab", str(opts.vocab), "--hidden", str(opts.hidden), "--layers", str(opts.layers)]
    settings = trl_settings(opts.groups_per_step, opts.steps)
    print("TRL DPOConfig, set here:", json.dumps(settings["set"]), file=sys.stderr)
    differs = json.dumps(settings["differs_from_ours"])
    print("TRL DPOConfig values that differ from ours [TRL, ours]:", differs, file=sys.stderr)

    # Rounds of all configurations, best of each kept (as timeit does): a burst of load from elsewhere on
    # the machine then slows one round of one configuration, not the comparison.
    results: dict[str, dict[str, dict]] = {shape: {} for shape in opts.shapes}
    for _ in range(opts.rounds):
        for shape in opts.shapes:
            for method in METHODS:
                run = run_worker(
                    "--worker", "train", method, shape, "--steps", str(opts.steps),
                    "--groups_per_step", str(opts.groups_per_step), *model_opts,
                )  # fmt: skip
                print(f"{shape} {method}: {run}", file=sys.stderr, flush=True)
                best = results[shape].get(method)
                if best is None or run["pairs_per_s"] > best["pairs_per_s"]:
                    results[shape][method] = run

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    memory_kind = "max allocated" if torch.cuda.is_available() else "RSS"
    print(
        f"\nTraining throughput, Qwen2-shaped model (vocabulary {opts.vocab:,}, hidden {opts.hidden}, "
        f"{opts.layers} layers), float32, {opts.groups_per_step} groups x {K} rejected per step, "
        f"{opts.steps - WARMUP} timed steps, best of {opts.rounds} rounds, {device}\n"
    )
    table_head = (
        f"| groups | method | pairs/s | training memory above baseline (MiB, {memory_kind}) "
        "| speed vs TRL | limit (TRL tokens / unique) | memory vs TRL |\n|---|---|---|---|---|---|---|"
    )
    print(table_head if opts.shapes else "(no shapes trained)")
    figures: dict = {"vocab_size": opts.vocab, "trl_settings": settings}
    for shape in opts.shapes:
        p, r = SHAPES[shape]
        limit = token_limit(make_groups(shape, opts.groups_per_step * opts.steps, opts.vocab))
        figures[f"{shape}_token_limit"] = limit
        trl = results[shape]["trl"]
        for method in METHODS:
            m = results[shape][method]
            speed, mem = m["pairs_per_s"] / trl["pairs_per_s"], m["peak_mb"] / trl["peak_mb"]
            print(
                f"| {shape} (prompt {p}, responses {r}) | {method} | {m['pairs_per_s']:.2f} "
                f"| {m['peak_mb']:.0f} | {speed:.2f}x | {limit:.2f}x | {mem:.2f}x |"
            )
            figures[f"{shape}_{method}"] = {**m, "speed_vs_trl": speed, "memory_vs_trl": mem}

    if opts.logps_tokens:
        print(
            f"\nResponse log-probs alone, forward and backward, one group (prompt 30, {K + 1} responses), "
            f"vocabulary {opts.vocab:,}: memory above baseline (MiB, {memory_kind})\n"
        )
        chunks = " | ".join(f"chunk {c or 'all (unchunked)'}" for c in LOGPS_CHUNKS)
        print(f"| response tokens | {chunks} |")
        print("|---|" + "---|" * len(LOGPS_CHUNKS))
        figures["logps_memory_mb"] = {}
        for tokens in opts.logps_tokens:
            row = {}
            for chunk in LOGPS_CHUNKS:
                run = run_worker("--worker", "logps", str(tokens), str(chunk or "all"), *model_opts)
                print(f"logps {tokens} tokens, chunk {chunk}: {run}", file=sys.stderr, flush=True)
                row[str(chunk or "all")] = run["peak_mb"]
            figures["logps_memory_mb"][str(tokens)] = row
            print(f"| {tokens} | " + " | ".join(f"{row[str(c or 'all')]:.0f}" for c in LOGPS_CHUNKS) + " |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
