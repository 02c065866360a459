"""Attention of one packed group: the dense additive mask the trainer uses against FlexAttention's block mask.

A packed group ``[prompt | chosen | rejected_1 | ... | rejected_k]`` lets every response attend to the
prompt and to itself only, so most of the (L, L) score matrix is masked. The dense path (SDPA with the
float mask of ``speech_lpo.packing.packed_attention_mask``) computes all of it; FlexAttention with
``create_block_mask`` skips the blocks that are fully masked. Both run on the same query, key and value
at Qwen2.5-0.5B's attention shape (14 query heads of 64, 2 KV heads), forward and backward on a GPU,
forward only on CPU (torch 2.13's FlexAttention has no CPU backward: there it serves ``ref-logps``, not
training); outputs and gradients are checked equal before timing. Prints a table and, last, one JSON line.

    .venv/bin/python bench/packed_attention.py [--prompt 60] [--response 1000] [--repeats 3]

FlexAttention runs through ``torch.compile`` (the first call compiles; it is not timed).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from speech_lpo.packing import packed_attention_mask

HEADS, KV_HEADS, HEAD_DIM = 14, 2, 64


def segments(prompt: int, response: int, k: int) -> torch.Tensor:
    """Segment ids of one packed group: 0 for the prompt, 1.. for the chosen and the k rejected."""
    return torch.cat(
        [torch.zeros(prompt, dtype=torch.long)] + [torch.full((response,), s) for s in range(1, k + 2)]
    )


def timed(fn, q, k, v, repeats: int) -> tuple[float, torch.Tensor, tuple]:
    """Best wall time of forward (+ backward where the inputs need gradients) over ``repeats``, with the
    output and the input gradients."""
    best = float("inf")
    for _ in range(repeats):
        for t in (q, k, v):
            t.grad = None
        start = time.perf_counter()
        out = fn(q, k, v)
        if q.requires_grad:
            out.sum().backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    grads = tuple(t.grad.clone() for t in (q, k, v)) if q.requires_grad else ()
    return best, out.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=60)
    parser.add_argument("--response", type=int, default=1000)
    parser.add_argument("--rejected", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    seg = segments(opts.prompt, opts.response, opts.rejected).to(device)
    length = len(seg)
    torch.manual_seed(0)
    backward = device == "cuda"
    q = torch.randn(1, HEADS, length, HEAD_DIM, device=device, requires_grad=backward)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=device, requires_grad=backward)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=device, requires_grad=backward)

    dense_mask = packed_attention_mask(seg[None], torch.float32)

    def dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask, enable_gqa=True)

    def allowed(b, h, q_idx, kv_idx):  # the rule of packed_attention_mask (no padding in one group)
        return (kv_idx <= q_idx) & ((seg[kv_idx] == 0) | (seg[kv_idx] == seg[q_idx]))

    block_mask = create_block_mask(allowed, 1, 1, length, length, device=device)
    compiled = torch.compile(flex_attention)

    def flex(q, k, v):
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=True)

    timed(flex, q, k, v, 1)  # compile, untimed
    dense_s, dense_out, dense_grads = timed(dense, q, k, v, opts.repeats)
    flex_s, flex_out, flex_grads = timed(flex, q, k, v, opts.repeats)
    torch.testing.assert_close(flex_out, dense_out, atol=1e-4, rtol=1e-4)
    for a, b in zip(flex_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU, 1 thread"
    print(
        f"\nOne packed group: prompt {opts.prompt}, 1 + {opts.rejected} responses of {opts.response} "
        f"({length} tokens), {HEADS} heads x {HEAD_DIM}, {KV_HEADS} KV heads, "
        f"{'forward + backward' if backward else 'forward only'}, "
        f"best of {opts.repeats}, {name}; blocks skipped by the block mask: {block_mask.sparsity():.1f}%\n"
    )
    print("| attention | seconds | speed vs dense |\n|---|---|---|")
    print(f"| SDPA, dense float mask | {dense_s:.3f} | 1.00x |")
    print(f"| FlexAttention, block mask | {flex_s:.3f} | {dense_s / flex_s:.2f}x |")
    figures = {
        "tokens": length,
        "backward": backward,
        "block_sparsity_percent": block_mask.sparsity(),
        "dense_s": dense_s,
        "flex_s": flex_s,
        "flex_speed_vs_dense": dense_s / flex_s,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
