"""The GPU check's measurements (bench/gpu_check.sh runs this on the lent GPU machine, or on CPU at toy size).

On one long TTS group (prompt 60 + 4 responses of 1,000 tokens; ``--shape``), a Qwen2.5-0.5B-shaped model
(24 layers, the real 168,320-row vocabulary; ``--toy``: 2 layers, hidden 128, 4,096 rows), float32 weights
under bf16 autocast where the hardware has bf16:

1. this trainer's step time and memory with SDPA and with FlexAttention (bench/train_throughput.py's
   workers, each in its own process); a configuration that fails is reported with its error, not hidden;
   on CPU the FlexAttention row is skipped (it is the CUDA path; transformers compiles it);
2. the same shape against TRL at its GPU settings (DPOConfig's defaults: bf16, gradient checkpointing), this
   trainer packed and in the TRL-equivalent unpacked layout at the same settings;
3. x1 and x2 at step 0: reference log-probs as ``ref-logps`` computes them (8 groups a batch), the policy's
   as the trainer's first step does (one group a batch), the same bf16 autocast: per-token |x1|, |x2| and
   the share of pairs with x1 < 0 (where LPO's gamma term fires);
4. candidates per second of the transformers backend (speech_lpo.decode.generate_batch, n samples per
   prompt at temperature 1); vLLM is too large to carry to the machine, so its row says so.

Prints a line per measurement and, last, one JSON line of all of them.

    python bench/gpu_check.py [--toy] [--rounds 1] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (bench/ is not a package)

REAL = {"vocab": tt.VOCAB, "hidden": 896, "layers": 24}
TOY = {"vocab": 4096, "hidden": 128, "layers": 2}


def train_rows(opts: argparse.Namespace, size: dict, dtype: str) -> dict:
    """Each configuration's median step time and memory, or the error that stopped it."""
    model = ["--vocab", str(size["vocab"]), "--hidden", str(size["hidden"]), "--layers", str(size["layers"])]
    common = ["--steps", str(opts.steps), "--groups_per_step", "1", *model, "--dtype", dtype]
    configs = {
        "packed_sdpa": ("packed", ["--attn", "sdpa"]),
        "packed_flex": ("packed", ["--attn", "flex_attention"]),
        # TRL at its GPU settings (DPOConfig defaults bf16 and gradient checkpointing on), ours matched
        "trl_gpu_settings": ("trl", ["--attn", "sdpa", "--gradient_checkpointing"]),
        "unpacked_gpu_settings": ("unpacked", ["--attn", "sdpa", "--gradient_checkpointing"]),
        "packed_gpu_settings": ("packed", ["--attn", "sdpa", "--gradient_checkpointing"]),
    }
    rows: dict = {}
    if not torch.cuda.is_available():  # transformers compiles flex_attention: C++ kernels, minutes on 2 cores
        del configs["packed_flex"]
        rows["packed_flex"] = {"skipped": "FlexAttention is the CUDA path; SDPA is the CPU one (DESIGN.md)"}
    for name, (method, extra) in configs.items():
        runs = []
        for _ in range(opts.rounds):
            try:
                runs.append(tt.run_worker("--worker", "train", method, opts.shape, *common, *extra))
            except RuntimeError as err:  # e.g. no FlexAttention for this torch/device: say so, go on
                rows[name] = {"error": str(err).strip().splitlines()[-1][:300]}
                break
        else:
            rows[name] = tt.summary(runs, tt.K)
            del rows[name]["rounds"]
        print(f"{name}: {rows[name]}", flush=True)
    return rows


def step0(opts: argparse.Namespace, size: dict, autocast: torch.dtype | None, device: torch.device) -> dict:
    """x1, x2 per token at step 0 with reference and policy log-probs in the same precision."""
    from speech_lpo.packing import collate_groups, response_logps
    from speech_lpo.ref_logps import with_ref_logps

    model = tt.bench_model(size["vocab"], size["hidden"], size["layers"]).to(device)
    groups = list(with_ref_logps(model, tt.make_groups(opts.shape, 8, size["vocab"]), 8, autocast=autocast))
    model.train()  # as the trainer's first step (Qwen2 has no dropout: the same function)
    precision = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)
    # one batch of the 8 groups, as ref-logps batched them and as train (same --batch_size) does: another
    # batch shape gives other roundings under autocast (per group: |x2| up to 8e-5 in bf16 on the CPU)
    with torch.no_grad(), precision:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_groups(groups).items()}
        logps, lengths = response_logps(model, batch), batch["resp_len"].float()
    c, r = batch["pair_chosen"], batch["pair_rejected"]  # pairs group by group, k of them each
    ref_c = torch.tensor([g.ref_chosen_logp for g in groups for _ in range(g.k)], device=device)
    ref_r = torch.tensor([x for g in groups for x in g.ref_rejected_logp], device=device)
    x1 = ((logps[c] - ref_c) / lengths[c]).tolist()
    x2 = ((logps[r] - ref_r) / lengths[r]).tolist()
    return {
        "precision": f"float32 weights, {autocast or 'no'} autocast in both",
        "max_abs_x1": max(map(abs, x1)),
        "max_abs_x2": max(map(abs, x2)),
        "pairs_x1_below_0": sum(x < 0 for x in x1) / len(x1),
    }


def generation(opts: argparse.Namespace, size: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """Candidates per second of the transformers backend on random prompts (an untrained model never stops:
    every candidate runs to max_new_tokens)."""
    from speech_lpo.decode import generate_batch

    model = tt.bench_model(size["vocab"], size["hidden"], size["layers"]).to(device, dtype).eval()
    rng = random.Random(0)
    prompts = [
        [rng.randrange(3, size["vocab"]) for _ in range(rng.randint(20, 60))] for _ in range(opts.prompts)
    ]
    sampling = {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "num_return_sequences": opts.n,
    }
    generate_batch(model, prompts[:2], 0, [1], max_new_tokens=4, **sampling)  # warm-up
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    new = generate_batch(model, prompts, 0, [1], max_new_tokens=opts.max_new_tokens, **sampling)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "backend": "transformers",
        "prompts": len(prompts),
        "n": opts.n,
        "max_new_tokens": opts.max_new_tokens,
        "candidates_per_s": len(new) / seconds,
        "tokens_per_s": sum(map(len, new)) / seconds,
        "vllm": "not measured: vLLM and its dependencies are too large to carry to the GPU machine",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="a 2-layer, 4,096-row model: the CPU rehearsal")
    parser.add_argument("--shape", default="tts_long", choices=list(tt.SHAPES))
    parser.add_argument("--rounds", type=int, default=1, help="runs of every training configuration")
    parser.add_argument(
        "--steps", type=int, default=4, help=f"optimiser steps, the first {tt.WARMUP} untimed"
    )
    parser.add_argument("--prompts", type=int, default=32, help="generation: prompts in one batch")
    parser.add_argument("--n", type=int, default=3, help="generation: candidates per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    opts = parser.parse_args()
    size = TOY if opts.toy else REAL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = tt.has_bf16()
    dtype = "bfloat16" if bf16 else "float32"
    import transformers

    figures: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": {**size, "shape": opts.shape, "prompt_and_response": tt.SHAPES[opts.shape]},
        "dtype": dtype,
        "trl_head": tt.trl_head_path(),
    }
    print(json.dumps(figures), flush=True)
    t0 = time.perf_counter()
    figures["train"] = train_rows(opts, size, dtype)
    figures["step0"] = step0(opts, size, torch.bfloat16 if bf16 else None, device)
    print(f"step0: {figures['step0']}", flush=True)
    figures["generate"] = generation(opts, size, torch.bfloat16 if bf16 else torch.float32, device)
    print(f"generate: {figures['generate']}", flush=True)
    figures["seconds"] = time.perf_counter() - t0
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
