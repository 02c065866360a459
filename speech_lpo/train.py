"""Train a model with LPO (or DPO, IPO, hinge, SimPO, DPOP) on preference groups.

Reference log-probs come from the groups (``speech-lpo ref-logps``), from ``--ref_model``, or, with
LoRA, from the base model with the adapter disabled. Re-running with the same output dir resumes from
its last checkpoint. The trained model is saved to the output dir with the tokenizer, the audio
vocabulary and everything else the source model dir held, so later stages can use it as a model dir.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from speech_lpo.groups import load_groups
from speech_lpo.losses import DEFAULT_BETA, LOSSES, LPO_VARIANTS, R2_BY_TASK
from speech_lpo.training_args import (
    add_optimisation_arguments,
    copy_model_extras,
    extras_callback,
    resume_checkpoint,
    trainer_kwargs,
    warn_if_updates_round_away,
    weights_dtype,
)

log = logging.getLogger(__name__)


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data and model")
    io.add_argument("--groups", required=True, help="training preference groups JSONL")
    io.add_argument("--eval_groups", default=None, help="held-out preference groups JSONL")
    io.add_argument("--model", required=True, help="policy to start from: a model dir or a hub id")
    io.add_argument(
        "--ref_model", default=None, help="live reference model (otherwise: stored ref log-probs)"
    )
    io.add_argument("--output_dir", required=True)
    io.add_argument(
        "--max_length", type=int, default=None, help="drop groups whose packed length exceeds this"
    )

    loss = parser.add_argument_group("loss (defaults: the paper's Table 9)")
    loss.add_argument("--loss", dest="loss_type", default="lpo", choices=sorted(LOSSES))
    loss.add_argument("--beta", type=float, default=None, help=f"default: the loss's own, {DEFAULT_BETA}")
    loss.add_argument("--r1", type=float, default=1.0)
    loss.add_argument(
        "--r2",
        type=float,
        default=None,
        help=f"LPO: rate of the rejected log-prob's fall; default by task {R2_BY_TASK}",
    )
    loss.add_argument("--gamma", type=float, default=10.0, help="LPO positive-term weight (paper: lambda)")
    loss.add_argument("--lpo_variant", default="ste", choices=LPO_VARIANTS)
    loss.add_argument("--label_smoothing", type=float, default=0.0, help="DPO")
    loss.add_argument("--simpo_gamma_beta_ratio", type=float, default=0.5)
    loss.add_argument("--dpop_lambda", type=float, default=50.0)
    loss.add_argument(
        "--length_normalise", type=_bool, default=None, help="default: the loss's own convention"
    )
    loss.add_argument("--no_shared_prefix", action="store_true", help="one row per pair (TRL's layout)")

    add_optimisation_arguments(parser, batch_help="groups per device per step")

    lora = parser.add_argument_group("LoRA (peft)")
    lora.add_argument("--lora_r", type=int, default=0, help="LoRA rank; 0 trains all weights")
    lora.add_argument("--lora_alpha", type=int, default=16)
    lora.add_argument("--lora_target_modules", default="q_proj,k_proj,v_proj,o_proj")


def build_config(args: argparse.Namespace):
    from speech_lpo.trainer import PreferenceConfig

    return PreferenceConfig(
        loss_type=args.loss_type,
        beta=args.beta,
        r1=args.r1,
        r2=args.r2,
        gamma=args.gamma,
        lpo_variant=args.lpo_variant,
        label_smoothing=args.label_smoothing,
        simpo_gamma_beta_ratio=args.simpo_gamma_beta_ratio,
        dpop_lambda=args.dpop_lambda,
        length_normalise=args.length_normalise,
        shared_prefix=not args.no_shared_prefix,
        metrics_file=str(Path(args.output_dir) / "metrics.jsonl"),
        **trainer_kwargs(args, has_eval=bool(args.eval_groups)),
    )


def loss_settings(config) -> dict:
    """The loss settings in effect (defaults resolved), as train_summary.json records them."""
    return {k: getattr(config, k) for k in ("loss_type", "beta", "r1", "r2", "gamma", "lpo_variant")}


def pairs_per_step(config, groups: list) -> str:
    """The effective pairs per optimiser step, spelled out: what the paper's Table 9 sizes its steps by."""
    k = sum(g.k for g in groups) / max(len(groups), 1)
    n = config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size * k
    return (
        f"pairs per optimiser step: {config.per_device_train_batch_size} groups x "
        f"{config.gradient_accumulation_steps} accumulation x {config.world_size} processes x {k:g} rejected "
        f"= {n:g}"
    )


def main(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speech_lpo.modeling import packed_attention
    from speech_lpo.trainer import PreferenceTrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = build_config(args)
    train_groups, report = load_groups(args.groups, max_length=args.max_length)
    log.info(
        "%d training groups (%d pairs); skipped: %s",
        len(train_groups),
        sum(g.k for g in train_groups),
        report.summary(),
    )
    eval_groups = load_groups(args.eval_groups, max_length=args.max_length)[0] if args.eval_groups else None

    dtype = weights_dtype(args)
    attention = packed_attention()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=attention)
    warn_if_updates_round_away(model, args.learning_rate)
    config.pad_token_id = model.config.pad_token_id or 0
    if args.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                target_modules=args.lora_target_modules.split(","),
                task_type="CAUSAL_LM",
            ),
        )
    ref_model = None
    if args.ref_model:
        ref_model = AutoModelForCausalLM.from_pretrained(
            args.ref_model, dtype=dtype, attn_implementation=attention
        )

    trainer = PreferenceTrainer(
        model=model,
        args=config,
        train_dataset=train_groups,
        eval_dataset=eval_groups,
        ref_model=ref_model,
        callbacks=[extras_callback(args.model)],
    )
    log.info("loss %s; %s", loss_settings(config), pairs_per_step(config, train_groups))
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(args))

    # Every rank takes part in saving (ZeRO-3 gathers the shards); only rank 0 writes files.
    if args.lora_r > 0:
        model = model.merge_and_unload()  # later stages load a plain model dir
        if trainer.is_world_process_zero():
            model.save_pretrained(args.output_dir)
    else:
        trainer.save_model(args.output_dir)
    trainer.save_state()  # trainer_state.json: the epoch and the log history beside the final model
    if trainer.is_world_process_zero():
        copy_model_extras(args.model, args.output_dir)
        if not Path(args.model).is_dir():
            AutoTokenizer.from_pretrained(args.model).save_pretrained(args.output_dir)
        summary = {
            "train_loss": result.training_loss,
            "steps": result.global_step,
            "seed": args.seed,
            "learning_rate": config.learning_rate,
            "epochs": config.num_train_epochs,
            "skipped": dict(report.counts),
            "loss": loss_settings(config),
        }
        Path(args.output_dir, "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: %s", summary)
    trainer.accelerator.wait_for_everyone()  # no rank exits while rank 0 still writes
