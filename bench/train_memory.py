"""Training-step memory of one long TTS group, the whole step beside the decoder-only step.

The long-TTS probe of issue 21: one group of a 60-token prompt and 4 responses of 1,000 tokens (chosen and
3 rejected) packed in one row, on the Qwen2.5-0.5B shape from ``../shared/data/qwen2.5_configs`` cut to
2 layers, with a vocabulary of 168,320 rows (151,936 text rows plus a 16,384-code audio block, padded to a
multiple of 64), float32, on the CPU. Two steps are measured, each forward and backward from a fresh
gradient:

- ``decoder-only``: the decoder's forward on the packed row and the backward of the sum of its final hidden
  states at the response positions (no LM head): what any head has to add to;
- ``step``: the training loss, ``speech_lpo.packing.response_logps`` (the chunked LM head on the response
  positions) and LPO on the 3 pairs, forward and backward.

Memory is the peak resident set above the set before the step (Linux VmHWM after resetting it through
/proc/self/clear_refs), with glibc told to serve every allocation over 64 KiB by mmap so that a freed tensor
leaves the resident set at once. Each step's peak is also shown by phase, the high-water mark read and
reset at each phase's end (the training step: forward and loss, the head's hidden-state gradient, the
decoder's backward, the head's deferred weight gradient, the gradient's accumulation into the weight).
Both steps build the packed 4-D attention mask inside the measured step (row length squared, 64 MiB at
4,096 tokens in float32), as training does. The target line is issue 21's: the decoder-only step plus one
chunk's float32 logits (``LOGPS_CHUNK`` x vocabulary), whose gradient is computed in place.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_memory.py [--responses 1000] [--vocab 168320]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

CONFIG = Path(__file__).parents[1].parent / "shared/data/qwen2.5_configs/Qwen2.5-0.5B.config.json"
MMAP_THRESHOLD = str(64 * 1024)


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def phase_peaks(model, step) -> dict[str, float]:
    """Peak RSS (MiB) above the resident set before ``step(mark)``, from no gradients, for each phase the
    step ends with ``mark(name)`` (VmHWM read and reset at each mark), and for the whole step."""
    model.zero_grad(set_to_none=True)
    reset_peak()
    base = rss_mib("VmRSS")
    peaks: dict[str, float] = {}

    def mark(name: str) -> None:
        peaks[name] = round(rss_mib("VmHWM") - base, 1)
        reset_peak()

    step(mark)
    return {**peaks, "whole step": max(peaks.values())}


@contextlib.contextmanager
def head_phases(mark):
    """Marks the phases of the training step's backward around the chunked head's two gradient passes:
    the hidden states' (first in backward) and the weight's (deferred until the decoder's is done)."""
    from speech_lpo import packing

    original = packing._head_grads

    def traced(*args, want_hidden, want_weight):
        mark("forward, loss" if want_hidden else "decoder backward")
        grads = original(*args, want_hidden=want_hidden, want_weight=want_weight)
        mark("head: hidden-state gradient" if want_hidden else "head: weight gradient")
        return grads

    packing._head_grads = traced
    try:
        yield
    finally:
        packing._head_grads = original


GIB = 2**30
VOCAB = 168_320  # Qwen2.5's 151,665 text ids, 2 audio markers, a 16,384-code audio block, padded to 64
CHUNK = 256  # speech_lpo.packing.LOGPS_CHUNK


def estimate(
    config: dict,
    length: int,
    *,
    dtype_bytes: int,
    checkpointing: bool,
    shards: int,
    adam: bool,
    vocab: int = VOCAB,
) -> dict[str, float]:
    """Memory of one training step on one GPU, in bytes, by component (docs/memory.md says how).

    ``dtype_bytes``: the weights' and activations' width (2: DeepSpeed bf16; 4: float32);
    ``shards``: ZeRO-2 data-parallel processes sharing gradients and optimiser state; ``adam``: count the
    optimiser's float32 master weights and moments (a training run; not the CPU probe's single step).
    """
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    tied = config["tie_word_embeddings"]
    per_layer = h * (h + 2 * kv) + (h + 2 * kv) + h * h + 3 * h * i + 2 * h
    params = vocab * h * (1 if tied else 2) + layers * per_layer + h
    # values a layer keeps for backward per token: both norms' inputs and outputs, q, k, v, the attention
    # output, and the MLP's gate, up, act(gate) and product (FlexAttention / SDPA keep O(L), not L^2)
    layer_acts = length * (6 * h + 2 * kv + 4 * i) * dtype_bytes
    if checkpointing:  # each layer's input kept, one layer recomputed at a time
        activations = layers * length * h * dtype_bytes + layer_acts
    else:
        activations = layers * layer_acts
    weights, grads = params * dtype_bytes, params * dtype_bytes / shards
    states = weights + grads + (12 * params / shards if adam else 0)
    # the head: one chunk's float32 logits; below float32, the float32 weight-gradient buffer and its cast
    # (in float32 the buffer is the gradient, counted with the states)
    head = CHUNK * vocab * 4 + (vocab * h * (4 + dtype_bytes) if dtype_bytes != 4 else 0)
    total = states + activations + head
    return {"weights": weights, "states": states, "activations": activations, "head": head, "total": total}


def preset_table() -> list[dict]:
    """The paper presets (DeepSpeed ZeRO-2 bf16 on 8 GPUs, gradient checkpointing, one group per GPU) at
    their length caps, for Qwen2.5-0.5B and -7B."""
    rows = []
    for model in ("0.5B", "7B"):
        config = json.loads((CONFIG.parent / f"Qwen2.5-{model}.config.json").read_text())
        for task, length in (("ASR", 4096), ("TTS", 12288)):
            for checkpointing in (True, False):
                est = estimate(
                    config, length, dtype_bytes=2, checkpointing=checkpointing, shards=8, adam=True
                )
                rows.append(
                    {"model": model, "task": task, "length": length, "checkpointing": checkpointing, **est}
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=60)
    parser.add_argument("--responses", type=int, default=1000, help="tokens per response")
    parser.add_argument("--k", type=int, default=3, help="rejected responses")
    parser.add_argument("--vocab", type=int, default=168_320)
    parser.add_argument("--layers", type=int, default=2)
    opts = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # glibc reads it at start-up only
        os.execve(
            sys.executable,
            [sys.executable, *sys.argv],
            {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD},
        )

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from speech_lpo.groups import PreferenceGroup
    from speech_lpo.losses import lpo_loss
    from speech_lpo.packing import LOGPS_CHUNK, collate_groups, packed_attention_mask, response_logps

    torch.set_num_threads(1)
    torch.manual_seed(0)
    values = json.loads(CONFIG.read_text())
    values.update(num_hidden_layers=opts.layers, max_window_layers=opts.layers, vocab_size=opts.vocab)
    values.update(torch_dtype="float32", attn_implementation="sdpa")
    config = Qwen2Config(**values)
    model = Qwen2ForCausalLM(config).train()

    def ids(n: int) -> list[int]:
        return torch.randint(0, opts.vocab, (n,)).tolist()

    rejected = [ids(opts.responses) for _ in range(opts.k)]
    group = PreferenceGroup("long", "tts", ids(opts.prompt), ids(opts.responses), rejected)
    batch = collate_groups([group])
    with torch.no_grad():
        ref = response_logps(model, batch)

    def decoder_only(mark) -> None:
        hidden = model.model(
            input_ids=batch["input_ids"],
            attention_mask=packed_attention_mask(batch["segment_ids"], torch.float32),
            position_ids=batch["position_ids"],
            use_cache=False,
        ).last_hidden_state
        mark("forward")
        hidden[batch["tok_row"], batch["tok_pred"]].sum().backward()
        mark("backward")

    def step(mark) -> None:
        with head_phases(mark):
            logps = response_logps(model, batch)
            x = (logps - ref) / batch["resp_len"]
            losses, _ = lpo_loss(x[batch["pair_chosen"]], x[batch["pair_rejected"]], r2=0.4)
            losses.mean().backward()
        mark("accumulation into the weight, rest")

    # warm-up: first-call allocations (thread pools, kernels) are not the step's
    decoder_only(lambda _name: None)
    phases = {name: phase_peaks(model, fn) for name, fn in (("decoder_only", decoder_only), ("step", step))}
    figures = {name: phases[name]["whole step"] for name in phases}
    chunk_mib = LOGPS_CHUNK * opts.vocab * 4 / 2**20
    target = figures["decoder_only"] + chunk_mib
    weights_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    length = batch["input_ids"].shape[1]
    print(
        f"long TTS group: prompt {opts.prompt} + {opts.k + 1} x {opts.responses} tokens (row {length}), "
        f"Qwen2.5-0.5B shape, {opts.layers} layers, vocabulary {opts.vocab:,}, float32, CPU; "
        f"weights {weights_mib:.0f} MiB; one chunk's logits {chunk_mib:.0f} MiB\n"
    )
    print("| step | peak above baseline (MiB) | vs decoder-only |\n|---|---|---|")
    for name in ("decoder_only", "step"):
        print(f"| {name} | {figures[name]:.0f} | {figures[name] / figures['decoder_only']:.2f}x |")
    ratio = target / figures["decoder_only"]
    print(f"| target: decoder-only + 1 chunk of logits | {target:.0f} | {ratio:.2f}x |")
    # the estimate of docs/memory.md at the probe's shape: what the step adds to the weights
    est = estimate(values, length, dtype_bytes=4, checkpointing=False, shards=1, adam=False, vocab=opts.vocab)
    probe = (est["total"] - est["weights"]) / 2**20
    print(
        f"| estimate (gradients + activations + head, docs/memory.md) | {probe:.0f} "
        f"| {probe / figures['decoder_only']:.2f}x |"
    )
    print("\nPeak of each phase (MiB above the set before the step; the whole step's is the largest)\n")
    print("| step | phase | peak |\n|---|---|---|")
    for name, peaks in phases.items():
        for phase, peak in peaks.items():
            if phase != "whole step":
                print(f"| {name} | {phase} | {peak:.0f} |")
    print(
        "\nPaper presets, per GPU (GiB): DeepSpeed ZeRO-2 bf16 over 8 GPUs, one group per GPU at the cap\n"
        "\n| model | task | length | gradient checkpointing | states | activations | head | total |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    presets = preset_table()
    for r in presets:
        parts = " | ".join(f"{r[k] / GIB:.1f}" for k in ("states", "activations", "head", "total"))
        print(
            f"| {r['model']} | {r['task']} | {r['length']:,} | {'yes' if r['checkpointing'] else 'no'} "
            f"| {parts} |"
        )
    figures.update(chunk_logits_mib=round(chunk_mib, 1), target_mib=round(target, 1), row_length=length)
    figures.update(estimate_mib=round(probe, 1), phases=phases)
    figures["presets_gib"] = {
        f"{r['model']}_{r['task']}_{'ckpt' if r['checkpointing'] else 'full'}": round(r["total"] / GIB, 1)
        for r in presets
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
