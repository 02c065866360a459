"""Training throughput and memory: this trainer (packed groups, and the TRL-equivalent unpacked layout)
against TRL's DPOTrainer.

Three methods on the same model, the same groups (1 chosen + 3 rejected) and the same pairs per optimiser
step, reference log-probs precomputed in all three, the same precision and gradient checkpointing:

- ``packed``: this trainer, one row per group ``[prompt | chosen | rejected_1..3]`` (prefix sharing).
- ``unpacked``: this trainer in TRL's layout, one row ``[prompt | response]`` per response of every pair
  (pairs on the batch axis), LM head over completion tokens only. It is TRL's work with TRL's
  implementation taken out, so ``packed`` against it is prefix sharing's own gain.
- ``trl``: TRL's DPOTrainer. Its LM head is TRL 1.16's chunked log-prob head; the table names the path it
  took: with Triton on CUDA it scores completion tokens only, elsewhere (CPU) every position, prompt and
  padding included. It never holds full logits (tiles of 4,096 tokens x 32,768 vocabulary rows).

The model has the real vocabulary, Qwen2.5's 151,936 rows plus a 16,384-code audio block, with
Qwen2.5-0.5B's width (hidden 896, 14 heads, 2 KV heads) and ``--layers`` layers. Shapes: ``asr`` (prompt
300, responses 20), ``tts`` (30, 300), ``tts_long`` (60, 1,000). Precision: ``--dtype bfloat16`` (float32
weights under bf16 autocast: ``bf16=True`` in both trainers' arguments, the reference log-probs under the
same autocast) by default where the hardware has bf16 (a CUDA GPU that supports it, a CPU with AVX512-BF16
or AMX), else float32. Each configuration runs in its own process; a shape's rounds run one after the
other, each its three methods back to back, so each ratio comes from one stretch of the machine's load.

Training memory is the peak above the baseline taken after loading (model, data, reference log-probs):
on a GPU the maximum allocated minus what was allocated before training; on CPU the process's RSS sampled
every 2 ms by a thread, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed
tensors leave the RSS.

A second table: the memory of the response log-probs alone (forward and backward) against the number of
response tokens, with the LM head in chunks of 256 tokens and in one chunk (the unchunked path).

    .venv/bin/python bench/train_throughput.py [--shapes asr tts tts_long] [--steps 3] [--rounds 3]
        [--groups_per_step 1] [--dtype bfloat16] [--gradient_checkpointing] [--logps_tokens 256 512 1024]

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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
LABELS = {
    "packed": "ours, packed (prefix sharing)",
    "unpacked": "TRL-equivalent: ours unpacked (pairs on the batch axis, completion-only head)",
    "trl": "TRL DPOTrainer",
}
LOGPS_CHUNKS = (256, None)  # None: one chunk of all response tokens, i.e. the unchunked path


def bench_model(vocab: int, hidden: int, layers: int, attn: str = "sdpa"):
    from speech_lpo.modeling import tiny_qwen2

    heads = hidden // 64  # Qwen2.5-0.5B: 896 / 64 = 14 heads, 2 KV heads
    model = tiny_qwen2(
        vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=2, intermediate_size=4864
    )
    model.set_attn_implementation(attn)
    return model


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


def token_ratio(groups) -> float:
    """Decoder tokens of the unpacked layout (prompt + chosen and prompt + rejected, per pair) over those of
    the packed one: what prefix sharing saves in the decoder layers. It leaves out the LM head (completion
    tokens in both layouts) and attention's quadratic term (packing puts k + 1 responses in one row)."""
    unpacked = sum(2 * len(g.prompt_ids) + len(g.chosen_ids) + len(r) for g in groups for r in g.rejected_ids)
    return unpacked / sum(g.packed_length() for g in groups)


def has_bf16() -> bool:
    """bf16 matrix units: a CUDA GPU that supports bf16, or a CPU with AVX512-BF16 / AMX (oneDNN's check)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def trl_head_path() -> str:
    """Which of TRL's LM-head paths runs on this machine (trl.kernels.chunked_logprob picks it by device)."""
    from trl.kernels.chunked_logprob import _use_triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if _use_triton(device):
        return "TRL's fused chunked head, completion tokens only (Triton)"
    return "TRL's chunked head over every position, prompt and padding included (no Triton: its CPU fallback)"


def configs(out: str, groups_per_step: int, steps: int, bf16: bool, checkpointing: bool) -> tuple[dict, dict]:
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
        "bf16": bf16,  # DPOConfig's default is True
        "gradient_checkpointing": checkpointing,  # DPOConfig's default is True
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


def trl_settings(opts: argparse.Namespace) -> dict:
    """What we set in DPOConfig, and every DPOConfig value that differs from our PreferenceConfig's."""
    from trl import DPOConfig

    from speech_lpo.trainer import PreferenceConfig

    ours_kwargs, trl_kwargs = configs(
        "out", opts.groups_per_step, opts.steps, opts.dtype == "bfloat16", opts.gradient_checkpointing
    )
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
    autocast = torch.bfloat16 if kwargs["bf16"] else None  # the reference in the training's precision
    groups = list(with_ref_logps(model, groups, batch, shared_prefix, autocast=autocast))
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
    model = bench_model(opts.vocab, opts.hidden, opts.layers, opts.attn).to(device)
    groups = make_groups(shape, opts.groups_per_step * opts.steps, opts.vocab)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        bf16 = opts.dtype == "bfloat16"
        ours, trl = configs(out, opts.groups_per_step, opts.steps, bf16, opts.gradient_checkpointing)
        if method == "trl":
            trainer = trl_trainer(model, groups, trl, opts.vocab, timer)
        else:
            trainer = ours_trainer(model, groups, method == "packed", ours, timer)
        with PeakMemory() as memory:
            trainer.train()
    return {"step_s": (timer.end - timer.start) / (opts.steps - WARMUP), "peak_mb": memory.mb}


def logps_worker(tokens: int, chunk: int | None, opts: argparse.Namespace) -> dict:
    """Memory of the response log-probs, forward and backward, for one group of ``tokens`` response tokens."""
    from speech_lpo.groups import PreferenceGroup
    from speech_lpo.packing import collate_groups, response_logps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = bench_model(opts.vocab, opts.hidden, opts.layers, opts.attn).to(device)
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


def summary(runs: list[dict], pairs_per_step: int) -> dict:
    """Median and minimum step time over the rounds, pairs/s at the median, median memory."""
    times = [r["step_s"] for r in runs]
    return {
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "pairs_per_s": pairs_per_step / statistics.median(times),
        "peak_mb": statistics.median(r["peak_mb"] for r in runs),
        "rounds": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=3, help=f"optimiser steps, the first {WARMUP} untimed")
    parser.add_argument("--groups_per_step", type=int, default=1, help=f"groups (1 + {K} responses) a step")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every configuration: median and min")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 where supported")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="in all three (TRL's default)")
    parser.add_argument(
        "--attn", default="sdpa", help="the model's attn_implementation (sdpa, flex_attention)"
    )
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--logps_tokens", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.dtype = opts.dtype or ("bfloat16" if has_bf16() else "float32")
    if opts.worker:
        kind, a, b = opts.worker
        if kind == "train":
            result = train_worker(a, b, opts)
        else:
            result = logps_worker(int(a), None if b == "all" else int(b), opts)
        print(json.dumps(result))
        return

    model_opts = ["--vocab", str(opts.vocab), "--hidden", str(opts.hidden), "--layers", str(opts.layers)]
    model_opts += ["--dtype", opts.dtype, "--attn", opts.attn]
    model_opts += ["--gradient_checkpointing"] if opts.gradient_checkpointing else []
    settings = trl_settings(opts)
    print("TRL DPOConfig, set here:", json.dumps(settings["set"]), file=sys.stderr)
    differs = json.dumps(settings["differs_from_ours"])
    print("TRL DPOConfig values that differ from ours [TRL, ours]:", differs, file=sys.stderr)

    # a shape's rounds one after the other, each running its methods back to back: a burst of load from
    # elsewhere on the machine slows one round, and the median of the rounds leaves it out
    runs: dict[str, dict[str, list]] = {shape: {m: [] for m in opts.methods} for shape in opts.shapes}
    for shape in opts.shapes:
        for _ in range(opts.rounds):
            for method in opts.methods:
                run = run_worker(
                    "--worker", "train", method, shape, "--steps", str(opts.steps),
                    "--groups_per_step", str(opts.groups_per_step), *model_opts,
                )  # fmt: skip
                print(f"{shape} {method}: {run}", file=sys.stderr, flush=True)
                runs[shape][method].append(run)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    memory_kind = "max allocated" if cuda else "RSS"
    pairs_per_step = opts.groups_per_step * K
    head = trl_head_path() if "trl" in opts.methods else "not run"
    figures: dict = {"vocab_size": opts.vocab, "dtype": opts.dtype, "attn": opts.attn, "device": device}
    figures |= {"layers": opts.layers, "gradient_checkpointing": opts.gradient_checkpointing}
    figures |= {"rounds": opts.rounds, "trl_head": head, "trl_settings": settings}
    print(
        f"\nTraining throughput, Qwen2-shaped model (vocabulary {opts.vocab:,}, hidden {opts.hidden}, "
        f"{opts.layers} layers, {opts.attn}), {opts.dtype}"
        f"{', gradient checkpointing' if opts.gradient_checkpointing else ''}, {opts.groups_per_step} "
        f"group(s) x {K} rejected per step, {opts.steps - WARMUP} timed steps, {opts.rounds} rounds, "
        f"{device}\nTRL's LM head here: {head}\n"
    )
    if opts.shapes:
        print(
            f"| groups | method | s/step, median | s/step, min | pairs/s (median) | vs TRL (median) "
            f"| training memory above baseline (MiB, {memory_kind}, median) | memory vs TRL |"
        )
        print("|---|---|---|---|---|---|---|---|")
    for shape in opts.shapes:
        p, r = SHAPES[shape]
        stats = {m: summary(runs[shape][m], pairs_per_step) for m in opts.methods}
        trl = stats.get("trl")
        for method, m in stats.items():
            speed = f"{trl['step_s_median'] / m['step_s_median']:.2f}x" if trl else "-"
            mem = f"{m['peak_mb'] / trl['peak_mb']:.2f}x" if trl else "-"
            print(
                f"| {shape} (prompt {p}, responses {r}) | {LABELS[method]} | {m['step_s_median']:.2f} "
                f"| {m['step_s_min']:.2f} | {m['pairs_per_s']:.3f} | {speed} | {m['peak_mb']:.0f} | {mem} |"
            )
            figures[f"{shape}_{method}"] = m
        if {"packed", "unpacked"} <= stats.keys():
            ratio = token_ratio(make_groups(shape, opts.groups_per_step * opts.steps, opts.vocab))
            gains = {"decoder_token_ratio": ratio}
            for kind in ("median", "min"):
                t = {m: stats[m][f"step_s_{kind}"] for m in stats}
                gains[f"prefix_sharing_{kind}"] = t["unpacked"] / t["packed"]  # packed vs TRL-equivalent
                if trl:
                    gains[f"implementation_{kind}"] = t["trl"] / t["unpacked"]  # TRL-equivalent vs TRL
                    gains[f"total_{kind}"] = t["trl"] / t["packed"]
            figures[f"{shape}_gains"] = gains
    gain_shapes = [s for s in opts.shapes if f"{s}_gains" in figures]
    if gain_shapes:
        print(
            "\nWhere the speed-up comes from (step-time ratios; median of the rounds, min in brackets): "
            "TRL-equivalent vs TRL is the implementation (LM head path, collation, loss), packed vs "
            "TRL-equivalent is prefix sharing alone; the decoder token ratio leaves out the LM head and "
            "attention's quadratic term\n"
        )
        print("| groups | TRL-equivalent vs TRL | prefix sharing: packed vs TRL-equivalent "
              "| total: packed vs TRL | decoder tokens, unpacked / packed |")  # fmt: skip
        print("|---|---|---|---|---|")
        for shape in gain_shapes:
            g = figures[f"{shape}_gains"]

            def cell(name: str, g=g) -> str:
                return (
                    f"{g[name + '_median']:.2f}x ({g[name + '_min']:.2f}x)" if name + "_median" in g else "-"
                )

            print(
                f"| {shape} | {cell('implementation')} | {cell('prefix_sharing')} | {cell('total')} "
                f"| {g['decoder_token_ratio']:.2f}x |"
            )

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
