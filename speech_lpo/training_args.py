"""Options shared by the Trainer-based stages (``sft``, ``train``) and what they become for the Trainer.

Precision is done as accelerate and TRL do it: float32 master weights, with bf16 or fp16 autocast
(``--bf16``, ``--fp16``: the Trainer's own arguments). Pure bf16 weights (``--pure_bf16``) halve the
memory of weights and optimiser state, but AdamW then rounds every update smaller than half a bf16 step
of its weight away: at the paper's learning rate 2e-7 almost no weight moves. ``ref-logps`` takes the
same options, so that reference and policy log-probs agree at step 0.

Also makes the output dirs complete model dirs: the tokenizer, audio vocabulary and codec of the source
model dir are copied beside the weights of the final model and of every checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Files that save_pretrained writes for the model itself; everything else in a model dir is copied over.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def add_optimisation_arguments(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """Optimisation, precision, logging and checkpoint options; a stage sets its own defaults after."""
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--learning_rate", type=float, default=5e-6)
    opt.add_argument("--num_train_epochs", type=float, default=1.0)
    opt.add_argument("--max_steps", type=int, default=-1, help="overrides epochs when > 0")
    opt.add_argument("--batch_size", type=int, default=4, help=batch_help)
    opt.add_argument("--grad_accum", type=int, default=1)
    opt.add_argument("--warmup_steps", type=float, default=0, help="steps, or a share of them if below 1")
    opt.add_argument("--lr_scheduler_type", default="linear")
    opt.add_argument(
        "--min_lr", type=float, default=None, help="the floor of --lr_scheduler_type cosine_with_min_lr"
    )
    opt.add_argument(
        "--decay_steps",
        type=int,
        default=None,
        help="the final cosine decay of --lr_scheduler_type warmup_stable_decay (the peak rate until then)",
    )
    opt.add_argument("--weight_decay", type=float, default=0.0)
    opt.add_argument("--adam_beta2", type=float, default=0.999)
    opt.add_argument("--max_grad_norm", type=float, default=1.0)
    add_precision_arguments(opt)
    opt.add_argument("--gradient_checkpointing", action="store_true")
    opt.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (with accelerate launch)")
    opt.add_argument("--seed", type=int, default=42)
    opt.add_argument("--logging_steps", type=int, default=10)
    opt.add_argument("--eval_steps", type=int, default=None, help="default: evaluate once per epoch")
    opt.add_argument("--save_strategy", default="steps", choices=("steps", "epoch"))
    opt.add_argument("--save_steps", type=int, default=500)
    opt.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept; 0 keeps all")
    opt.add_argument(
        "--save_only_model",
        action="store_true",
        help="checkpoints hold the weights only (no optimiser state); a killed run then starts over",
    )


def add_precision_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--bf16", action="store_true", help="float32 weights, bf16 autocast")
    parser.add_argument("--fp16", action="store_true", help="float32 weights, fp16 autocast, loss scaling")
    parser.add_argument(
        "--pure_bf16", action="store_true", help="bf16 weights and optimiser state (small updates round away)"
    )


def precision(args: argparse.Namespace) -> str:
    """``fp32``, ``bf16``, ``fp16`` or ``pure_bf16``, from the options above (at most one of them set)."""
    chosen = [name for name in ("bf16", "fp16", "pure_bf16") if getattr(args, name)]
    if len(chosen) > 1:
        raise SystemExit(f"choose one of --bf16, --fp16, --pure_bf16 (got {', '.join(chosen)})")
    if chosen == ["fp16"] and not torch.cuda.is_available():
        # accelerate turns fp16 autocast off on CPU: the run would be float32 under an fp16 name
        raise SystemExit("--fp16 needs a CUDA GPU (accelerate has no fp16 autocast on CPU); use --bf16 here")
    return chosen[0] if chosen else "fp32"


def weights_dtype(args: argparse.Namespace) -> torch.dtype:
    """The dtype to load the model in: bf16 only for pure bf16, float32 master weights otherwise."""
    return torch.bfloat16 if precision(args) == "pure_bf16" else torch.float32


def autocast_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The dtype the Trainer autocasts to under these options (None: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(args))


def forward_precision(args: argparse.Namespace) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights dtype, autocast dtype) of the training forward pass under these options. Under DeepSpeed
    with bf16 or fp16 (the recipes' --ngpu runs) the engine casts the model to that dtype and accelerate
    applies no autocast; otherwise float32 (or --pure_bf16) weights under the Trainer's autocast."""
    chosen = precision(args)
    if getattr(args, "deepspeed", None) and chosen in ("bf16", "fp16"):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[chosen], None
    return weights_dtype(args), autocast_dtype(args)


def forward_settings(
    weights: torch.dtype, autocast: torch.dtype | None, batch_size: int, shared_prefix: bool, processes: int
) -> dict:
    """What decides a forward pass's rounding, as ref-logps records it and train compares it at step 0."""
    return {
        "weights": str(weights).removeprefix("torch."),
        "autocast": str(autocast).removeprefix("torch.") if autocast else "off",
        "groups_per_batch": batch_size,
        "layout": "packed" if shared_prefix else "one row per pair",
        "processes": processes,
    }


def describe_settings(settings: dict | None) -> str:
    if not settings:
        return "settings not recorded (groups from an older ref-logps)"
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def rounded_away_share(model: torch.nn.Module, learning_rate: float) -> float:
    """Share of the trainable bf16 weights for which an update of ``learning_rate`` is under half a bf16
    step, so that adding it rounds back to the same weight (Adam's updates are about lr in size)."""
    lost = total = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            # a bf16 step at w is 2**(exponent(w) - 7): 8 significant bits
            half_step = torch.exp2(torch.floor(torch.log2(p.detach().float().abs())) - 8)
            lost += int((half_step > learning_rate).sum())
            total += p.numel()
    return lost / max(total, 1)


def warn_if_updates_round_away(model: torch.nn.Module, learning_rate: float) -> None:
    share = rounded_away_share(model, learning_rate)
    if share > 0.01:
        log.warning(
            "--pure_bf16 at learning rate %g: for %.1f%% of the weights an update of that size is under half "
            "a bf16 step and rounds away; use --bf16 (float32 weights, bf16 autocast) instead",
            learning_rate,
            100 * share,
        )


# (option, the scheduler it belongs to, its name in TrainingArguments.lr_scheduler_kwargs)
SCHEDULER_OPTIONS = (
    ("min_lr", "cosine_with_min_lr", "min_lr"),
    ("decay_steps", "warmup_stable_decay", "num_decay_steps"),
)


def trainer_kwargs(args: argparse.Namespace, has_eval: bool) -> dict:
    """TrainingArguments keyword arguments from the options above."""
    if not has_eval:
        evaluation = {"eval_strategy": "no"}
    elif args.eval_steps:
        evaluation = {"eval_strategy": "steps", "eval_steps": args.eval_steps}
    else:
        evaluation = {"eval_strategy": "epoch"}
    schedule = {}
    for option, scheduler, kwarg in SCHEDULER_OPTIONS:
        value = getattr(args, option)
        if (value is None) != (args.lr_scheduler_type != scheduler):
            raise SystemExit(
                f"--{option} goes with --lr_scheduler_type {scheduler}, and that scheduler needs it"
            )
        if value is not None:
            schedule[kwarg] = value
    return {
        "output_dir": args.output_dir,
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "warmup_steps": args.warmup_steps,
        "lr_scheduler_type": args.lr_scheduler_type,
        "lr_scheduler_kwargs": schedule,
        "weight_decay": args.weight_decay,
        "adam_beta2": args.adam_beta2,
        "max_grad_norm": args.max_grad_norm,
        "use_cpu": not torch.cuda.is_available(),  # the Trainer refuses --bf16 on CPU unless told
        "bf16": precision(args) == "bf16",
        "fp16": precision(args) == "fp16",
        "gradient_checkpointing": args.gradient_checkpointing,
        "deepspeed": args.deepspeed,
        "seed": args.seed,
        "data_seed": args.seed,
        "logging_steps": args.logging_steps,
        "save_strategy": args.save_strategy,
        "save_steps": args.save_steps,
        "save_total_limit": args.save_total_limit or None,
        "save_only_model": args.save_only_model,
        "remove_unused_columns": False,
        "report_to": [],
        **evaluation,
    }


def resume_checkpoint(args: argparse.Namespace) -> str | None:
    """The output dir's last checkpoint to resume from; None to start (over). Model-only checkpoints
    (--save_only_model) hold no optimiser state, and DeepSpeed cannot resume from them at all: start over."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last and args.save_only_model:
        log.warning("%s holds weights only (--save_only_model): starting over, not resuming", last)
        return None
    if last:
        log.info("resuming from %s", last)
    return last


def copy_model_extras(src: str, dst: str) -> None:
    """Copy what a model dir holds beside the weights (tokenizer, audio vocabulary, codec)."""
    src_dir = Path(src)
    if not src_dir.is_dir():
        return  # a hub id: the tokenizer is saved separately
    for item in src_dir.iterdir():
        target = Path(dst) / item.name
        if item.name in _MODEL_FILES or item.name.startswith("checkpoint-") or target.exists():
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)


def extras_callback(src: str):
    """A callback that makes every checkpoint a complete model dir, so epochs can be decoded (Figure 2)."""
    from transformers import TrainerCallback

    class CopyModelExtras(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                copy_model_extras(src, str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))

    return CopyModelExtras()
