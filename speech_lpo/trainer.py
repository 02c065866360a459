"""The preference trainer: a transformers ``Trainer`` that trains LPO (or a baseline) on preference groups.

Distribution, mixed precision, DeepSpeed/FSDP, checkpoints, resume and logging all come from the
Trainer and accelerate; this class adds the group batches (speech_lpo.packing), the losses
(speech_lpo.losses) and TRL-style metrics. Reference log-probs come precomputed with the groups
(``speech-lpo ref-logps``), from a live reference model, or, for a LoRA model, from the base model
with the adapter disabled.

Logged metrics (averaged over the pairs of each logging window, on every process together: each step's
sums are added up across ranks, as TRL gathers its metrics; a group of k rejected is k pairs):

- ``rewards/chosen``, ``rewards/rejected``: beta times the log-ratios the loss saw (x1, x2), so they are
  length-normalised exactly when the loss is (``length_normalise``); ``rewards/margins``,
  ``rewards/accuracies`` (x1 > x2).
- ``logps/chosen``, ``logps/rejected``: policy log-probs summed over the response tokens, as TRL logs them;
  ``logps_per_token/chosen``, ``logps_per_token/rejected``: the same divided by the response length.
- ``logratio_per_token/chosen``, ``logratio_per_token/rejected``: (policy - reference) log-prob per token,
  comparable across losses whatever their normalisation: what ``speech-lpo plot`` draws by default.
- ``grad/x1``, ``grad/x2``: the mean derivative of the per-pair loss on x1 and x2; ``grad/ratio``:
  mean |dL/dx2| / mean |dL/dx1| (r2/r1 for LPO-STE where the positive term is off).
- ``positive_active``: fraction of pairs with x1 < 0 (the positive term of LPO and DPOP is on).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel, gather_object
from transformers import Trainer, TrainerCallback, TrainingArguments

from speech_lpo.groups import PreferenceGroup
from speech_lpo.losses import DEFAULT_BETA, LOSSES, LPO_VARIANTS, NORMALISE, REFERENCE_FREE, default_r2
from speech_lpo.packing import collate_groups, response_logps
from speech_lpo.training_args import describe_settings, forward_settings


@dataclass
class PreferenceConfig(TrainingArguments):
    """TrainingArguments plus the preference-loss settings (defaults: the paper's Table 9)."""

    loss_type: str = field(default="lpo", metadata={"help": f"one of {sorted(LOSSES)}"})
    beta: float | None = field(default=None, metadata={"help": f"None: the loss's own, {DEFAULT_BETA}"})
    r1: float = 1.0
    r2: float | None = field(
        default=None,
        metadata={"help": "LPO; None: by the training groups' task (speech_lpo.losses.R2_BY_TASK)"},
    )
    gamma: float = field(default=10.0, metadata={"help": "LPO positive-term weight (the paper's lambda)"})
    lpo_variant: str = field(default="ste", metadata={"help": f"one of {LPO_VARIANTS}"})
    label_smoothing: float = 0.0
    simpo_gamma_beta_ratio: float = 0.5
    dpop_lambda: float = 50.0
    length_normalise: bool | None = field(
        default=None, metadata={"help": "divide log-ratios by response length; None: the loss's default"}
    )
    shared_prefix: bool = field(default=True, metadata={"help": "pack each group into one sequence"})
    pad_token_id: int = 0
    metrics_file: str | None = field(default=None, metadata={"help": "JSONL of logged metrics"})
    remove_unused_columns: bool = False  # our examples are groups, not dicts of model inputs

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; expected one of {sorted(LOSSES)}")
        if self.lpo_variant not in LPO_VARIANTS:
            raise ValueError(f"unknown lpo_variant {self.lpo_variant!r}; expected one of {LPO_VARIANTS}")
        if self.length_normalise is None:
            self.length_normalise = NORMALISE[self.loss_type]
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss_type]

    def loss_kwargs(self) -> dict:
        return {
            "lpo": {
                "beta": self.beta,
                "r1": self.r1,
                "r2": self.r2,
                "gamma": self.gamma,
                "variant": self.lpo_variant,
            },
            "dpo": {"beta": self.beta, "label_smoothing": self.label_smoothing},
            "ipo": {"beta": self.beta},
            "hinge": {"beta": self.beta},
            "simpo": {"beta": self.beta, "gamma_beta_ratio": self.simpo_gamma_beta_ratio},
            "dpop": {"beta": self.beta, "lam": self.dpop_lambda},
        }[self.loss_type]


class GroupDataset(torch.utils.data.Dataset):
    def __init__(self, groups: Sequence[PreferenceGroup]):
        self.groups = list(groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> PreferenceGroup:
        return self.groups[i]


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log entry to a JSONL file; on resume, drops entries past the restored step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= state.global_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # the torn last line of a killed run
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def deepspeed_reference_config(train_config: dict, hidden_size: int | None) -> dict:
    """The DeepSpeed config of a frozen reference model beside a policy trained with ``train_config``, as
    TRL's ``prepare_deepspeed`` makes it: under ZeRO-3 the reference is sharded too (buckets sized from the
    hidden size where the training config leaves them "auto"); under ZeRO-0/1/2 it is whole on every rank
    (stage 0). No optimizer or scheduler: the engine only runs forward passes. No ``train_batch_size``:
    DeepSpeed derives it from the micro batch, the accumulation and the world size (the Trainer may have
    filled it before the world size was known)."""
    config = copy.deepcopy(train_config)
    for unused in ("optimizer", "scheduler", "train_batch_size"):
        config.pop(unused, None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
        return config
    if hidden_size is not None:
        for key, value in (
            ("reduce_bucket_size", hidden_size * hidden_size),
            ("stage3_param_persistence_threshold", 10 * hidden_size),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
        ):
            if zero.get(key, "auto") == "auto":
                zero[key] = value
    return config


def prepare_deepspeed_reference(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Wrap a frozen reference model in a DeepSpeed inference engine (see ``deepspeed_reference_config``)."""
    import deepspeed  # imported here: only DeepSpeed runs need it installed

    config = deepspeed_reference_config(
        accelerator.state.deepspeed_plugin.deepspeed_config, getattr(model.config, "hidden_size", None)
    )
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, not the engine
    return engine


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss: training stops instead of silently continuing."""


# Largest per-token |x1|, |x2| (nats) that the first step accepts from stored reference log-probs. ref-logps
# in train's precision and batches gives exactly 0; float32 with other batch compositions differs by under
# 1e-6; bf16 with other batch compositions by up to 8e-5, and a float32 reference against bf16 training by
# about 2.5e-4 (a tiny 4-layer Qwen2, 200-token responses): both stop. LPO's gamma*max(0, -x1) has no
# tolerance of its own: it fires on any x1 < 0, so within this tolerance it can still fire at step 0 on pairs
# whose x1 is below 0 by rounding (float32, other batches); see docs/memory.md, Exact at step 0.
STEP0_TOLERANCE = 1e-5


class ReferenceMismatchError(ValueError):
    """Stored reference log-probs that were not computed as train computes the policy's."""


class PreferenceTrainer(Trainer):
    def __init__(
        self,
        model: torch.nn.Module,
        args: PreferenceConfig,
        train_dataset: Sequence[PreferenceGroup],
        eval_dataset: Sequence[PreferenceGroup] | None = None,
        ref_model: torch.nn.Module | None = None,
        **kwargs,
    ):
        if args.r2 is None and args.loss_type == "lpo":  # resolved here, where the groups' task is known
            args.r2 = default_r2(g.task for g in train_dataset)
        callbacks = list(kwargs.pop("callbacks", []) or [])
        if args.metrics_file:
            callbacks.append(MetricsJsonlCallback(args.metrics_file))
        super().__init__(
            model=model,
            args=args,
            train_dataset=GroupDataset(train_dataset),
            eval_dataset=GroupDataset(eval_dataset) if eval_dataset is not None else None,
            data_collator=lambda groups: collate_groups(groups, args.shared_prefix, args.pad_token_id),
            callbacks=callbacks,
            **kwargs,
        )
        # compute_loss divides the sum over pairs by the pairs of the global batch (_get_num_items_in_batch):
        # the Trainer must not divide it again by the accumulation steps.
        self.loss_is_scaled_for_ga = True
        self.model_accepts_loss_kwargs = False
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed_reference(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._ref_settings = {g.id: g.meta.get("ref_logps") for g in train_dataset}
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        """accelerate's autocast around the whole loss: accelerate applies mixed precision by wrapping the
        model's forward, and the LM head runs outside it (speech_lpo.packing.response_logps)."""
        return self.accelerator.autocast()

    def _reference_logps(self, model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair reference log-probs (summed): stored with the groups, or computed now without grad."""
        if "ref_chosen_logp" in inputs:
            return inputs["ref_chosen_logp"], inputs["ref_rejected_logp"]
        unwrapped = self.accelerator.unwrap_model(model)
        if self.ref_model is not None:
            ref, context = self.ref_model, contextlib.nullcontext()
        elif hasattr(unwrapped, "disable_adapter"):  # peft: the base model is the reference
            ref, context = model, unwrapped.disable_adapter()
        else:
            raise ValueError(
                f"groups {inputs['group_ids'][:3]} have no reference log-probs: run `speech-lpo ref-logps` "
                "first, or give the trainer a reference model"
            )
        with torch.no_grad(), context:
            logps = response_logps(ref, inputs)
        return logps[inputs["pair_chosen"]], logps[inputs["pair_rejected"]]

    def _forward_settings(self, model, device: torch.device) -> dict:
        """How this process runs the policy's forward pass, as ref-logps records its own."""
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        return forward_settings(
            next(extract_model_from_parallel(model).parameters()).dtype,
            autocast,
            self.args.per_device_train_batch_size,
            self.args.shared_prefix,
            self.accelerator.num_processes,
        )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """Pairs in the global batch: every accumulation step's batches on every rank."""
        pairs = torch.tensor(sum(len(b["pair_chosen"]) for b in batch_samples), device=device)
        return self.accelerator.gather(pairs[None]).sum() if self.accelerator.num_processes > 1 else pairs

    def _check_step0(self, model, inputs: dict, x1: torch.Tensor, x2: torch.Tensor) -> None:
        """Stop when stored reference log-probs do not give x1 = x2 = 0 at the first step (STEP0_TOLERANCE);
        ``x1``, ``x2``: summed log-ratios."""
        lengths = inputs["resp_len"].to(x1.dtype)
        per_token = torch.cat([x1 / lengths[inputs["pair_chosen"]], x2 / lengths[inputs["pair_rejected"]]])
        # a non-finite value is not a precision mismatch: the non-finite stop names its groups
        per_token = per_token.detach().abs().nan_to_num(nan=0.0, posinf=0.0)
        worst = self.accelerator.gather(per_token.max()[None]).max().item()
        if worst <= STEP0_TOLERANCE:
            return
        ids = inputs["group_ids"]
        ref = self._ref_settings.get(ids[0])
        mine = self._forward_settings(model, inputs["input_ids"].device)
        raise ReferenceMismatchError(
            f"stored reference log-probs do not match the policy at step 0: per-token |x1|, |x2| up to "
            f"{worst:.2e} nats (tolerance {STEP0_TOLERANCE:g}; groups {ids[:3]}); LPO's gamma*max(0, -x1) "
            f"would fire on rounding alone. ref-logps ran with {describe_settings(ref)}; train runs with "
            f"{describe_settings(mine)}. Run ref-logps with train's precision options (--bf16, --pure_bf16, "
            "--deepspeed) and --batch_size, under the same launcher."
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: PreferenceConfig = self.args
        logps = response_logps(model, inputs)
        lengths = inputs["resp_len"].to(logps.dtype)
        chosen, rejected = logps[inputs["pair_chosen"]], logps[inputs["pair_rejected"]]
        len_c, len_r = lengths[inputs["pair_chosen"]], lengths[inputs["pair_rejected"]]

        ref_c, ref_r = (
            (None, None) if args.loss_type in REFERENCE_FREE else self._reference_logps(model, inputs)
        )
        x1, x2 = (chosen, rejected) if ref_c is None else (chosen - ref_c, rejected - ref_r)
        stored = ref_c is not None and "ref_chosen_logp" in inputs
        if stored and model.training and self.state.global_step == 0:
            self._check_step0(model, inputs, x1, x2)
        if args.length_normalise:
            x1, x2 = x1 / len_c, x2 / len_r

        losses, extras = LOSSES[args.loss_type](x1, x2, **args.loss_kwargs())
        if num_items_in_batch is None:  # evaluation: the mean over this batch's pairs
            loss = losses.mean()
        else:
            # The sum over pairs / the pairs of the global batch, so that a pair weighs the same in a group
            # of 2 as in a group of 4; times the processes, whose gradients DDP and DeepSpeed average.
            loss = losses.sum() / num_items_in_batch * self.accelerator.num_processes

        # Per-pair sums of every metric, added up across ranks in one collective per step.
        sums: dict[str, torch.Tensor] = {}
        if x1.requires_grad:
            g1, g2 = torch.autograd.grad(losses.sum(), (x1, x2), retain_graph=True)  # per-pair derivatives
            sums["grad/x1"], sums["grad/x2"] = g1.sum(), g2.sum()
            sums["|grad/x1|"], sums["|grad/x2|"] = g1.abs().sum(), g2.abs().sum()
        with torch.no_grad():
            r1, r2 = args.beta * x1, args.beta * x2
            sums["rewards/chosen"] = r1.sum()
            sums["rewards/rejected"] = r2.sum()
            sums["rewards/margins"] = (r1 - r2).sum()
            sums["rewards/accuracies"] = (r1 > r2).float().sum()
            sums["logps/chosen"] = chosen.sum()
            sums["logps/rejected"] = rejected.sum()
            sums["logps_per_token/chosen"] = (chosen / len_c).sum()
            sums["logps_per_token/rejected"] = (rejected / len_r).sum()
            if ref_c is not None:
                sums["logratio_per_token/chosen"] = ((chosen - ref_c) / len_c).sum()
                sums["logratio_per_token/rejected"] = ((rejected - ref_r) / len_r).sum()
            for key, value in extras.items():
                sums[key] = value.sum()
            finite = torch.isfinite(losses)
            sums["pairs"] = torch.tensor(float(len(losses)), device=losses.device)
            sums["non_finite"] = (~finite).sum().float()
            names = list(sums)
            reduced = self.accelerator.reduce(torch.stack([sums[k] for k in names]), "sum")
            totals = dict(zip(names, reduced, strict=True))
        if totals.pop("non_finite") > 0:
            # every rank raises together: one that raised alone would leave the others in the next collective
            bad = sorted({inputs["group_ids"][g] for g in inputs["pair_group"][~finite].tolist()})
            bad = sorted(set(gather_object(bad)))
            raise NonFiniteLossError(f"non-finite loss at step {self.state.global_step}; groups {bad}")

        pairs = totals.pop("pairs")
        m = self._metrics["train" if model.training else "eval"]
        if "|grad/x1|" in totals:
            ratio = totals.pop("|grad/x2|") / totals.pop("|grad/x1|").clamp_min(1e-12)
            m["grad/ratio"].append(ratio.item())
        for key, total in totals.items():
            m[key].append((total / pairs).item())
        return (loss, {"losses": losses}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)
