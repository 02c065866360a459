"""Options shared by the Trainer-based stages (``sft``, ``train``) and what they become for the Trainer.

Also makes the output dirs complete model dirs: the tokenizer, audio vocabulary and codec of the source
model dir are copied beside the weights of the final model and of every checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

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
    opt.add_argument("--warmup_steps", type=int, default=0)
    opt.add_argument("--lr_scheduler_type", default="linear")
    opt.add_argument("--weight_decay", type=float, default=0.0)
    opt.add_argument("--max_grad_norm", type=float, default=1.0)
    opt.add_argument("--bf16", action="store_true")
    opt.add_argument("--gradient_checkpointing", action="store_true")
    opt.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (with accelerate launch)")
    opt.add_argument("--seed", type=int, default=42)
    opt.add_argument("--logging_steps", type=int, default=10)
    opt.add_argument("--eval_steps", type=int, default=None, help="default: evaluate once per epoch")
    opt.add_argument("--save_strategy", default="steps", choices=("steps", "epoch"))
    opt.add_argument("--save_steps", type=int, default=500)
    opt.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept; 0 keeps all")


def trainer_kwargs(args: argparse.Namespace, has_eval: bool) -> dict:
    """TrainingArguments keyword arguments from the options above."""
    if not has_eval:
        evaluation = {"eval_strategy": "no"}
    elif args.eval_steps:
        evaluation = {"eval_strategy": "steps", "eval_steps": args.eval_steps}
    else:
        evaluation = {"eval_strategy": "epoch"}
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
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing,
        "deepspeed": args.deepspeed,
        "seed": args.seed,
        "data_seed": args.seed,
        "logging_steps": args.logging_steps,
        "save_strategy": args.save_strategy,
        "save_steps": args.save_steps,
        "save_total_limit": args.save_total_limit or None,
        "remove_unused_columns": False,
        "report_to": [],
        **evaluation,
    }


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
