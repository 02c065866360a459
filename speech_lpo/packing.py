"""Preference groups as model inputs, and the log-probs of every response in them.

Two layouts of the same groups (DESIGN.md, Training):

- **packed** (shared prefix, the default): one row per group, ``[prompt | chosen | rejected_1 | ... |
  rejected_k]``. Every response attends to the prompt and to itself only, through an additive float 4-D
  mask; its position ids restart where the prompt ends. Prompts are left-padded so that they all end at
  the same column.
- **unpacked** (``shared_prefix=False``): one right-padded row ``[prompt | response]`` per response of
  every pair, the chosen response repeated for each of its k pairs, as TRL's DPOTrainer does. It is the
  reference the packed layout is tested and benchmarked against.

Both produce the same flat description of the response tokens (``tok_*``) and of the pairs
(``pair_*``: indices into the responses), so one function computes response log-probs for either.

Log-probs never build the logits of the whole batch (DESIGN.md, Scale): the final hidden states of the
positions that predict a response token go through the LM head and log-softmax a chunk of tokens at a
time, each chunk gathered from the decoder's output as it is used and recomputed in backward, so memory
grows with the chunk times the vocabulary (151,936 + audio rows for Qwen2.5), not with the response tokens
times the vocabulary, and no copy of the response positions' hidden states (or of their gradient) is made
beside the decoder's output. As TRL 1.16's chunked head does it: the matmul in the weights' (or
autocast's) dtype, the log-softmax and both gradient GEMMs accumulated in float32, the LM-head weight's
gradient accumulated in place in one float32 buffer across chunks (as Liger's fused linear losses do),
and under ZeRO-3 the head gathered once per pass.

Rows are padded to a multiple of 64 (``PAD_MULTIPLE``): a length that is not a multiple of 8 makes PyTorch
copy the padded 4-D mask in every layer, and few distinct lengths mean few kernel shapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from speech_lpo.groups import PreferenceGroup

Batch = dict[str, Any]

# Response tokens per LM-head chunk: at Qwen2.5's 168,320 rows (with a 16,384-code audio block) one chunk's
# float32 logits are 172 MB, and a chunk's forward and backward hold about four such tensors.
LOGPS_CHUNK = 256
PAD_MULTIPLE = 64
HALF = (torch.float16, torch.bfloat16)


class _Builder:
    """Accumulates rows, response tokens and pairs; the two layouts differ only in how they add rows."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self.positions: list[list[int]] = []
        self.segments: list[list[int]] = []
        self.tok_row: list[int] = []
        self.tok_pred: list[int] = []
        self.tok_target: list[int] = []
        self.tok_resp: list[int] = []
        self.resp_len: list[int] = []

    def add_response(self, row: int, start: int, pred_first: int, ids: list[int]) -> int:
        """Register a response whose tokens sit at columns start.. of ``row``; return its index."""
        resp = len(self.resp_len)
        n = len(ids)
        self.tok_row += [row] * n
        self.tok_pred += [pred_first] + list(range(start, start + n - 1))
        self.tok_target += ids
        self.tok_resp += [resp] * n
        self.resp_len.append(n)
        return resp

    def tensors(self, pad_id: int, packed: bool) -> Batch:
        """The rows, padded to a multiple of ``PAD_MULTIPLE``, and the response tokens as tensors."""
        length = padded_length(max(map(len, self.rows)))
        batch: Batch = {
            "input_ids": _pad(self.rows, pad_id, length),
            "tok_row": torch.tensor(self.tok_row),
            "tok_pred": torch.tensor(self.tok_pred),
            "tok_target": torch.tensor(self.tok_target),
            "tok_resp": torch.tensor(self.tok_resp),
            "resp_len": torch.tensor(self.resp_len),
        }
        if packed:
            batch["position_ids"] = _pad(self.positions, 0, length)
            batch["segment_ids"] = _pad(self.segments, -1, length)
        else:
            batch["attention_mask"] = _pad([[1] * len(r) for r in self.rows], 0, length)
        return batch


def _pad(rows: list[list[int]], value: int, length: int) -> torch.Tensor:
    return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long)


def collate_groups(groups: Sequence[PreferenceGroup], shared_prefix: bool = True, pad_id: int = 0) -> Batch:
    """Build one batch from preference groups (see the module docstring for the two layouts)."""
    for g in groups:  # an empty response has no token to predict: its log-prob and length would be 0
        if not g.chosen_ids or not all(g.rejected_ids):
            raise ValueError(f"group {g.id!r} has an empty response; load_groups drops such groups")
    b = _Builder()
    pair_chosen: list[int] = []
    pair_rejected: list[int] = []
    pair_group: list[int] = []
    if shared_prefix:
        prompt_end = max(len(g.prompt_ids) for g in groups)
        for gi, g in enumerate(groups):
            p = len(g.prompt_ids)
            row = [pad_id] * (prompt_end - p) + g.prompt_ids
            pos = [0] * (prompt_end - p) + list(range(p))
            seg = [-1] * (prompt_end - p) + [0] * p
            resp_ids = []
            for s, ids in enumerate([g.chosen_ids, *g.rejected_ids], start=1):
                resp_ids.append(b.add_response(gi, len(row), prompt_end - 1, ids))
                row += ids
                pos += list(range(p, p + len(ids)))
                seg += [s] * len(ids)
            b.rows.append(row)
            b.positions.append(pos)
            b.segments.append(seg)
            for rj in resp_ids[1:]:
                pair_chosen.append(resp_ids[0])
                pair_rejected.append(rj)
                pair_group.append(gi)
    else:
        for gi, g in enumerate(groups):
            p = len(g.prompt_ids)
            for rejected in g.rejected_ids:
                pair = []
                for ids in (g.chosen_ids, rejected):
                    pair.append(b.add_response(len(b.rows), p, p - 1, ids))
                    b.rows.append(g.prompt_ids + ids)
                pair_chosen.append(pair[0])
                pair_rejected.append(pair[1])
                pair_group.append(gi)

    batch = b.tensors(pad_id, packed=shared_prefix)
    batch["pair_chosen"] = torch.tensor(pair_chosen)
    batch["pair_rejected"] = torch.tensor(pair_rejected)
    batch["pair_group"] = torch.tensor(pair_group)
    batch["group_ids"] = [g.id for g in groups]
    if all(g.has_ref for g in groups):
        ref = [(g.ref_chosen_logp, r) for g in groups for r in g.ref_rejected_logp]
        batch["ref_chosen_logp"] = torch.tensor([c for c, _ in ref], dtype=torch.float32)
        batch["ref_rejected_logp"] = torch.tensor([r for _, r in ref], dtype=torch.float32)
    return batch


def collate_responses(examples: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> Batch:
    """One right-padded row ``[prompt | response]`` per (prompt, response) example, its response tokens
    described as ``collate_groups`` describes them: what ``sft`` trains on through the same LM head."""
    b = _Builder()
    for prompt, response in examples:
        b.add_response(len(b.rows), len(prompt), len(prompt) - 1, response)
        b.rows.append(prompt + response)
    return b.tensors(pad_id, packed=False)


def padded_length(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where attention is allowed, the dtype's minimum elsewhere.

    Allowed as ``_allowed`` says. A boolean 4-D mask would be read differently by eager attention, hence
    the float mask.
    """
    rows = torch.arange(segment_ids.shape[0], device=segment_ids.device)
    cols = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    allowed = _allowed(segment_ids, rows[:, None, None], cols[:, None], cols[None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _allowed(segment_ids: torch.Tensor, b, q, k):
    """The packed layout's rule for query column q and key column k of row b: causal, and the key in the
    prompt (segment 0) or in the query's own response; padding (segment -1) attends only to itself, so that
    no row is fully masked."""
    sq, sk = segment_ids[b, q], segment_ids[b, k]
    return ((k <= q) & (sq >= 0) & ((sk == 0) | (sk == sq))) | (q == k)


def packed_block_mask(segment_ids: torch.Tensor):
    """The packed mask as a FlexAttention ``BlockMask``: the tiles it blanks (a response's keys for another
    response's queries, the future) are skipped, not computed and masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segment_ids.shape
    return create_block_mask(
        lambda b, _h, q, k: _allowed(segment_ids, b, q, k),
        batch,
        None,
        length,
        length,
        device=segment_ids.device,
    )


def _gathered(weight: torch.Tensor):
    """Under DeepSpeed ZeRO-3, the LM head's full weight for the duration of a pass (one all-gather for every
    chunk instead of one per chunk); elsewhere nothing to do."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled() or not hasattr(weight, "ds_status"):
        return contextlib.nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if weight.ds_status == ZeroParamStatus.AVAILABLE:  # tied: the embedding holds it gathered
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters([weight])


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` in float32 without rounding ``a @ b`` to a half dtype first (TRL's ``_addmm_fp32``):
    on CUDA a half-precision GEMM with a float32 output, elsewhere a float32 GEMM."""
    if acc.device.type == "cuda" and b.dtype in HALF:
        torch.addmm(acc, a.to(b.dtype), b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _head_grads(
    hidden, weight, rows, targets, log_z, grad_out, chunk, compute_dtype, want_hidden, want_weight
):
    """Gradients of the chunked log-probs for the hidden states and the LM-head weight, in float32: one
    chunk's logits recomputed at a time, turned into the logits' gradient in place, its two GEMMs added
    into float32 buffers (the weight's accumulated in place, not materialised per chunk and summed)."""
    grad_hidden = (
        torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_hidden else None
    )
    with _gathered(weight):  # under ZeRO-3 the weight has its full shape only inside
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device) if want_weight else None
        )
        w = weight.to(compute_dtype)
        for s in range(0, len(rows), chunk):
            at = rows[s : s + chunk]
            h = hidden[at].to(compute_dtype)
            g = grad_out[s : s + chunk, None].float()
            # d logp / d logits = onehot(target) - softmax, times the incoming gradient, in place
            grad = (h @ w.T).float().sub_(log_z[s : s + chunk, None]).exp_().mul_(-g)
            grad.scatter_add_(1, targets[s : s + chunk, None], g)
            if grad_hidden is not None:
                # index_add: a position may predict several tokens (a shared prompt's last one)
                part = torch.zeros(len(at), hidden.shape[1], dtype=torch.float32, device=hidden.device)
                _addmm_fp32(part, grad, w)
                grad_hidden.index_add_(0, at, part)
            if grad_weight is not None:
                _addmm_fp32(grad_weight, grad.T, h)
            del grad  # as in forward: one chunk of logits at a time
    return grad_hidden, grad_weight


class DeferredHeadGrad(torch.autograd.Function):
    """Identity on the embedding output and the LM-head weight, placed between the embedding and the
    decoder. Its backward runs once the decoder's gradient has reached the embedding output, when the
    decoder's activations are freed, and only then computes the head's weight gradient, which
    ``ChunkedLogProbs`` left to it: the vocabulary-sized gradient never coexists with the activations.

    With tied weights (``ids``: the input ids the embedding looked up, its output passed in detached), the
    embedding's gradient rows are added into the same float32 buffer, and the weight receives one gradient,
    which autograd keeps as it is: a second one, dense or sparse, makes it allocate their sum, another
    vocabulary-sized tensor."""

    @staticmethod
    def forward(ctx, embeds, weight, ids, padding_idx: int | None, pending: dict):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.pending = padding_idx, pending
        return embeds.view_as(embeds), weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_embeds, _placeholder):
        (ids,) = ctx.saved_tensors
        args = ctx.pending.pop("args")  # ChunkedLogProbs.backward's
        grad_weight = _head_grads(*args, want_hidden=False, want_weight=True)[1]
        if ids is None:
            return grad_embeds, grad_weight.to(args[1].dtype), None, None, None
        ids, rows = ids.flatten(), grad_embeds.reshape(-1, grad_weight.shape[1]).float()
        if ctx.padding_idx is not None:  # as nn.Embedding: no gradient for the padding row
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        grad_weight.index_add_(0, ids, rows)
        return None, grad_weight.to(args[1].dtype), None, None, None


class ChunkedLogProbs(torch.autograd.Function):
    """Log-prob of each target token from the hidden state at its row of ``hidden``, ``chunk`` tokens at a
    time, in float32.

    Forward keeps only the hidden states and each token's log-partition; backward recomputes the logits a
    chunk at a time (``_head_grads``). Each chunk's rows are gathered as it is used: the hidden states of
    all targets, or their gradient, are never copied out whole. With ``pending`` (the dict of a
    ``DeferredHeadGrad``), backward computes the hidden states' gradient only, leaves what the weight's
    needs in ``pending`` and gives the weight a zero placeholder that takes no memory (an expanded scalar).
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, rows, targets, chunk: int, compute_dtype: torch.dtype, pending: dict | None
    ):
        out = torch.empty(len(rows), dtype=torch.float32, device=hidden.device)
        log_z = torch.empty_like(out)
        with _gathered(weight):
            w = weight.to(compute_dtype)
            for s in range(0, len(rows), chunk):
                logits = (hidden[rows[s : s + chunk]].to(compute_dtype) @ w.T).float()
                out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
                # logsumexp in place: torch.logsumexp would hold a second chunk-sized buffer
                peak = logits.amax(dim=-1, keepdim=True)
                log_z[s : s + chunk] = logits.sub_(peak).exp_().sum(dim=-1).log_() + peak.squeeze(1)
                del logits  # else it lives on while the next chunk's logits are made: two chunks at once
        ctx.save_for_backward(hidden, weight, rows, targets, log_z)
        ctx.chunk, ctx.compute_dtype, ctx.pending = chunk, compute_dtype, pending
        return out - log_z

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, rows, targets, log_z = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        args = (hidden, weight, rows, targets, log_z, grad_out, ctx.chunk, ctx.compute_dtype)
        if ctx.pending is not None and want_weight:
            ctx.pending["args"] = args
            grad_hidden = _head_grads(*args, want_hidden=want_hidden, want_weight=False)[0]
            grad_weight = weight.new_zeros(()).expand(weight.shape)
        else:
            grad_hidden, grad_weight = _head_grads(*args, want_hidden=want_hidden, want_weight=want_weight)
            grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_hidden = grad_hidden.to(hidden.dtype) if grad_hidden is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None


def token_logps(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = LOGPS_CHUNK,
    weight: torch.Tensor | None = None,
    pending: dict | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-prob of each target token from a final hidden state, in float32 (``ChunkedLogProbs``).

    ``hidden`` is (positions, hidden size); ``rows`` the position that predicts each target (default: the
    positions in order, one per target); ``weight`` and ``pending`` from a ``DeferredHeadGrad`` (default:
    the head's own weight).
    """
    if getattr(lm_head, "bias", None) is not None:
        raise ValueError("the chunked LM head supports heads without a bias (Qwen2's)")
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm_head.weight.dtype
    weight = lm_head.weight if weight is None else weight
    rows = torch.arange(len(targets), device=hidden.device) if rows is None else rows
    with torch.autocast(device, enabled=False):  # the casts are ChunkedLogProbs's own
        return ChunkedLogProbs.apply(hidden, weight, rows, targets, chunk_size, compute, pending)


def _mask_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype attention computes in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def response_logps(model: torch.nn.Module, batch: Batch, chunk_size: int = LOGPS_CHUNK) -> torch.Tensor:
    """Summed log-prob of every response in the batch, shape (R,), in float32.

    ``model`` may be wrapped (DDP, DeepSpeed, a peft model): it is called as it is, so the wrapper's
    forward does its work (gradient reduction, parameter gathering, accelerate's autocast), and the
    decoder's output is taken from a forward hook; the LM head is asked for no logits at all inside the
    forward. The LM head then runs on the response positions only, ``chunk_size`` tokens at a
    time, each chunk recomputed in backward (``ChunkedLogProbs``). The caller's autocast applies.
    """
    causal_lm = extract_model_from_parallel(model)
    if hasattr(causal_lm, "get_base_model"):  # peft: its adapters live inside the transformers model
        causal_lm = causal_lm.get_base_model()
    decoder, lm_head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    input_ids = batch["input_ids"]
    if "segment_ids" in batch and causal_lm.config._attn_implementation == "flex_attention":
        kwargs = {
            "attention_mask": packed_block_mask(batch["segment_ids"]),
            "position_ids": batch["position_ids"],
        }
    elif "segment_ids" in batch:
        mask = packed_attention_mask(batch["segment_ids"], _mask_dtype(model, input_ids.device))
        kwargs = {"attention_mask": mask, "position_ids": batch["position_ids"]}
    else:
        kwargs = {"attention_mask": batch["attention_mask"]}
    captured: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda _m, _a, out: captured.append(out.last_hidden_state))
    # The head's weight gradient is computed after the decoder's backward (DeferredHeadGrad at the
    # embedding's output); with tied weights the embedding's gradient is added into the same buffer there.
    # Not under ZeRO-3, whose partitioned weight a view would hide from the gather.
    from transformers.integrations import is_deepspeed_zero3_enabled

    embed = decoder.get_input_embeddings()
    tied = embed.weight is lm_head.weight
    # the rows are added as a plain embedding's backward would make them
    plain = isinstance(embed, torch.nn.Embedding) and not (
        embed.scale_grad_by_freq or embed.sparse or embed.max_norm is not None
    )
    defer = (
        torch.is_grad_enabled()
        and lm_head.weight.requires_grad
        and not is_deepspeed_zero3_enabled()
        and (plain or not tied)
    )
    pending: dict = {}
    head_weight: list[torch.Tensor] = []

    def through_deferred(_m, args, embeds):
        ids, padding = (args[0], embed.padding_idx) if tied else (None, None)
        embeds, weight = DeferredHeadGrad.apply(
            embeds.detach() if tied else embeds, lm_head.weight, ids, padding, pending
        )
        head_weight.append(weight)
        return embeds

    hooks = [hook, embed.register_forward_hook(through_deferred)] if defer else [hook]
    try:
        no_logits = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, use_cache=False, logits_to_keep=no_logits, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    hidden = captured[-1]
    rows = (batch["tok_row"] * hidden.shape[1] + batch["tok_pred"]).to(hidden.device)  # row-major positions
    logps = token_logps(
        lm_head,
        hidden.flatten(0, 1),
        batch["tok_target"],
        chunk_size,
        weight=head_weight[-1] if defer else None,
        pending=pending if defer else None,
        rows=rows,
    )
    out = torch.zeros(len(batch["resp_len"]), dtype=torch.float32, device=logps.device)
    return out.index_add_(0, batch["tok_resp"], logps)
