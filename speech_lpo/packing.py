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
positions that predict a response token are gathered first, then go through the LM head and log-softmax
a chunk of tokens at a time, each chunk recomputed in backward, so memory grows with the chunk times the
vocabulary (151,936 + audio rows for Qwen2.5), not with the response tokens times the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint

from speech_lpo.groups import PreferenceGroup

Batch = dict[str, Any]

# Response tokens per LM-head chunk: at Qwen2.5's 168,320 rows (with a 16,384-code audio block) one chunk's
# float32 logits are 172 MB, and a chunk's forward and backward hold about four such tensors.
LOGPS_CHUNK = 256


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

    length = max(map(len, b.rows))
    batch: Batch = {
        "input_ids": _pad(b.rows, pad_id, length),
        "tok_row": torch.tensor(b.tok_row),
        "tok_pred": torch.tensor(b.tok_pred),
        "tok_target": torch.tensor(b.tok_target),
        "tok_resp": torch.tensor(b.tok_resp),
        "resp_len": torch.tensor(b.resp_len),
        "pair_chosen": torch.tensor(pair_chosen),
        "pair_rejected": torch.tensor(pair_rejected),
        "pair_group": torch.tensor(pair_group),
        "group_ids": [g.id for g in groups],
    }
    if shared_prefix:
        batch["position_ids"] = _pad(b.positions, 0, length)
        batch["segment_ids"] = _pad(b.segments, -1, length)
    else:
        batch["attention_mask"] = _pad([[1] * len(r) for r in b.rows], 0, length)
    if all(g.has_ref for g in groups):
        ref = [(g.ref_chosen_logp, r) for g in groups for r in g.ref_rejected_logp]
        batch["ref_chosen_logp"] = torch.tensor([c for c, _ in ref], dtype=torch.float32)
        batch["ref_rejected_logp"] = torch.tensor([r for _, r in ref], dtype=torch.float32)
    return batch


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where attention is allowed, the dtype's minimum elsewhere.

    Allowed: causal, and the key is in the prompt (segment 0) or in the query's own response. Padding
    (segment -1) attends only to itself so that no row is fully masked. A boolean 4-D mask would be
    read differently by eager attention, hence the float mask.
    """
    length = segment_ids.shape[1]
    idx = torch.arange(length, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]
    q = segment_ids[:, :, None]
    k = segment_ids[:, None, :]
    allowed = causal & (q >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _token_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token from its final hidden state, in float32."""
    logits = lm_head(hidden).float()
    return logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(dim=-1)


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
    forward. The LM head then runs on the gathered response positions only, ``chunk_size`` tokens at a
    time, each chunk recomputed in backward (``torch.utils.checkpoint``). The caller's autocast applies.
    """
    causal_lm = extract_model_from_parallel(model)
    if hasattr(causal_lm, "get_base_model"):  # peft: its adapters live inside the transformers model
        causal_lm = causal_lm.get_base_model()
    decoder, lm_head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    input_ids = batch["input_ids"]
    if "segment_ids" in batch:
        mask = packed_attention_mask(batch["segment_ids"], _mask_dtype(model, input_ids.device))
        kwargs = {"attention_mask": mask, "position_ids": batch["position_ids"]}
    else:
        kwargs = {"attention_mask": batch["attention_mask"]}
    captured: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda _m, _a, out: captured.append(out.last_hidden_state))
    try:
        no_logits = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, use_cache=False, logits_to_keep=no_logits, **kwargs)
    finally:
        hook.remove()
    hidden = captured[-1][batch["tok_row"], batch["tok_pred"]]
    targets = batch["tok_target"]
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    token_logps = torch.cat(
        [
            checkpoint(_token_logps, lm_head, h, t, use_reentrant=False)
            if recompute
            else _token_logps(lm_head, h, t)
            for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size), strict=True)
        ]
    )
    out = torch.zeros(len(batch["resp_len"]), dtype=torch.float32, device=token_logps.device)
    return out.index_add_(0, batch["tok_resp"], token_logps)
