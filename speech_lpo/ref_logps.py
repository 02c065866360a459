"""Compute reference log-probs of every response once and store them with the preference groups.

Training then needs no reference model in memory. Batches are packed exactly as in training (or one row
per pair with --no_shared_prefix), ``--batch_size`` groups per process as train takes it, run without
gradients in the training precision (``--bf16``, ``--fp16``, ``--pure_bf16`` and ``--deepspeed`` as
``train`` takes them: under DeepSpeed bf16 the weights are bf16 and nothing autocasts), and appended to
``<output>.partial`` as they finish; a killed run continues after the last complete line, and the finished
file is renamed into place. Each group records these settings in ``meta.ref_logps``; ``train`` stops at its
first step when x1 and x2 are not 0 (speech_lpo.trainer.STEP0_TOLERANCE) and names both stages' settings.

Under ``accelerate launch`` the groups are sharded over the processes: each takes one batch of every
``processes x batch_size`` groups, rank 0 gathers the results and appends them in the input order, so the
partial file, the resume and the output are those of one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from speech_lpo.groups import PreferenceGroup, load_groups
from speech_lpo.modeling import packed_attention
from speech_lpo.packing import collate_groups, response_logps
from speech_lpo.training_args import add_precision_arguments, forward_precision, forward_settings

log = logging.getLogger(__name__)


@torch.no_grad()
def with_ref_logps(
    model: torch.nn.Module,
    groups: Sequence[PreferenceGroup],
    batch_size: int = 8,
    shared_prefix: bool = True,
    pad_id: int = 0,
    autocast: torch.dtype | None = None,
    processes: int = 1,
) -> Iterator[PreferenceGroup]:
    """Yield the groups, in order, with ``ref_*`` fields filled from ``model`` (under ``autocast`` to that
    dtype when given, as the Trainer's mixed precision runs the policy) and these settings in
    ``meta.ref_logps``."""
    model.eval()
    weights = next(model.parameters())
    device = weights.device
    settings = forward_settings(weights.dtype, autocast, batch_size, shared_prefix, processes)
    precision = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    for start in range(0, len(groups), batch_size):
        chunk = groups[start : start + batch_size]
        batch = collate_groups(chunk, shared_prefix=shared_prefix, pad_id=pad_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with precision:
            logps = response_logps(model, batch).tolist()
        lengths = batch["resp_len"].tolist()
        chosen, rejected = batch["pair_chosen"].tolist(), batch["pair_rejected"].tolist()
        pair = 0  # pairs come group by group, k of them each, in either layout
        for g in chunk:
            c, rs = chosen[pair], rejected[pair : pair + g.k]
            g.ref_chosen_logp, g.ref_chosen_len = logps[c], lengths[c]
            g.ref_rejected_logp = [logps[r] for r in rs]
            g.ref_rejected_len = [lengths[r] for r in rs]
            g.meta["ref_logps"] = settings
            pair += g.k
            yield g


def _finished_ids(path: Path) -> list[str]:
    """Group ids of the complete lines of a partial file; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line)["id"] for line in data[:end].decode("utf-8").splitlines()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", required=True, help="preference groups JSONL (from make-pairs)")
    parser.add_argument("--model", required=True, help="reference model: the SFT model dir or a hub id")
    parser.add_argument("--output", required=True, help="groups JSONL with reference log-probs")
    parser.add_argument("--batch_size", type=int, default=4, help="groups per process and batch, as train's")
    parser.add_argument(
        "--max_length", type=int, default=None, help="drop groups whose packed length exceeds this"
    )
    parser.add_argument(
        "--no_shared_prefix", action="store_true", help="one row per pair instead of packed groups"
    )
    parser.add_argument("--device", default=None, help="default: this process's device under accelerate")
    add_precision_arguments(parser)
    parser.add_argument(
        "--deepspeed", default=None, help="train's DeepSpeed config: with --bf16, bf16 weights, no autocast"
    )


def main(args: argparse.Namespace) -> None:
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env
    from transformers import AutoModelForCausalLM

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dtype, autocast = forward_precision(args)  # bad precision options fail first
    # several CPU processes need ACCELERATE_USE_CPU, which the Trainer reads and PartialState alone does not
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    output = Path(args.output)
    if output.exists():
        log.info("%s exists; nothing to do", output)
        return
    groups, report = load_groups(args.groups, max_length=args.max_length)
    log.info("%d groups from %s; skipped: %s", len(groups), args.groups, report.summary())
    partial = output.with_name(output.name + ".partial")
    finished = [_finished_ids(partial) if state.is_main_process else None]
    finished = broadcast_object_list(finished)[0]  # rank 0 read (and cut a torn line off) the file
    done = len(finished)
    if finished != [g.id for g in groups[:done]]:
        raise ValueError(
            f"{partial} holds groups other than the first {done} of {args.groups}; remove it to start over"
        )
    if done:
        log.info("resuming after %d finished groups in %s", done, partial)
    device = args.device or state.device
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype, attn_implementation=packed_attention()
    )
    model = model.to(device)
    pad_id = model.config.pad_token_id or 0
    todo = groups[done:]
    per_round = args.batch_size * state.num_processes
    mine = slice(state.process_index * args.batch_size, (state.process_index + 1) * args.batch_size)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(partial.open("a", encoding="utf-8")) if state.is_main_process else None
        progress = tqdm(total=len(todo), desc="ref-logps", unit="group", disable=not state.is_main_process)
        for start in range(0, len(todo), per_round):
            shard = todo[start : start + per_round][mine]
            lines = [
                g.to_json()
                for g in with_ref_logps(
                    model,
                    shard,
                    args.batch_size,
                    not args.no_shared_prefix,
                    pad_id,
                    autocast,
                    state.num_processes,
                )
            ]
            lines = gather_object(lines)  # rank order is input order: rank r held the r-th batch
            if f is not None:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
            progress.update(len(lines))
        progress.close()
        if f is not None:
            os.fsync(f.fileno())
    if state.is_main_process:
        partial.replace(output)
        log.info("wrote %d groups with reference log-probs to %s", len(groups), output)
    state.wait_for_everyone()
