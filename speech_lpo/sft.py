"""Supervised fine-tuning: causal-LM training on ASR (audio -> text) and/or TTS (text -> audio) examples.

Examples are ChatML prompt/response pairs (speech_lpo.prompts) built from a tokenised dataset; the loss
is on response tokens only, through the chunked LM head that ``train`` uses (no full-vocabulary logits).
The Trainer does the rest (checkpoints, resume, accumulation, distribution); re-running with the same
output dir resumes from its last checkpoint. The output dir is a complete model
dir (tokenizer, audio vocabulary, codec) for the stages after it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from speech_lpo.packing import collate_responses, response_logps
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

TASKS = ("asr", "tts", "both")


def build_examples(dataset, tokenizer, vocab, task: str, max_length: int | None) -> tuple[list[dict], int]:
    """Prompt/response ids for every utterance (both tasks for ``both``); returns the examples and how many
    were dropped for exceeding ``max_length`` (dropped, not truncated: a cut response teaches a wrong end)."""
    from speech_lpo.prompts import asr_prompt_ids, asr_response_ids, tts_prompt_ids, tts_response_ids

    tasks = ("asr", "tts") if task == "both" else (task,)
    examples, too_long = [], 0
    for row in dataset:
        for t in tasks:
            if t == "asr":
                prompt, response = (
                    asr_prompt_ids(tokenizer, vocab, row["codes"]),
                    asr_response_ids(tokenizer, row["text"]),
                )
            else:
                prompt, response = (
                    tts_prompt_ids(tokenizer, row["text"], row.get("speaker")),
                    tts_response_ids(tokenizer, vocab, row["codes"]),
                )
            if max_length is not None and len(prompt) + len(response) > max_length:
                too_long += 1
                continue
            examples.append({"prompt": prompt, "response": response, "id": f"{row['id']}/{t}"})
    return examples, too_long


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded ``[prompt | response]`` rows with their response tokens (speech_lpo.packing)."""
    return collate_responses([(e["prompt"], e["response"]) for e in examples], pad_id)


class ResponseLossTrainer:
    """Mixed into the Trainer: the causal-LM loss on response tokens through the chunked LM head that
    ``train`` uses (``speech_lpo.packing.response_logps``), so no batch x length x vocabulary logits; the sum
    of the tokens' negative log-probs over the response tokens of the global batch (every rank, every
    accumulation step), as the Trainer weighs a causal-LM loss by ``num_items_in_batch``."""

    loss_is_scaled_for_ga = True

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        tokens = torch.tensor(sum(len(b["tok_target"]) for b in batch_samples), device=device)
        return self.accelerator.gather(tokens[None]).sum() if self.accelerator.num_processes > 1 else tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        total = -response_logps(model, inputs).sum()
        if num_items_in_batch is None:  # evaluation: this batch's mean
            loss = total / len(inputs["tok_target"])
        else:  # times the processes, whose gradients DDP and DeepSpeed average
            loss = total / num_items_in_batch * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="tokenised training split (speech-lpo tokenize)")
    parser.add_argument("--eval_data", default=None, help="tokenised held-out split")
    parser.add_argument("--model", required=True, help="model dir from build-model (or an earlier SFT)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--task", default="asr", choices=TASKS)
    parser.add_argument("--max_length", type=int, default=2048, help="drop longer examples (counted)")
    add_optimisation_arguments(parser, batch_help="examples per device per step")
    parser.set_defaults(learning_rate=1e-4, num_train_epochs=3.0, batch_size=8, lr_scheduler_type="cosine")


def main(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from speech_lpo.tokenize_audio import load_tokenized
    from speech_lpo.trainer import MetricsJsonlCallback
    from speech_lpo.vocab import AudioVocab

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dtype = weights_dtype(args)  # bad precision options fail before the data is read
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = AudioVocab.load(args.model)
    train_examples, dropped = build_examples(
        load_tokenized(args.data), tokenizer, vocab, args.task, args.max_length
    )
    log.info(
        "%d %s training examples; %d dropped as longer than %d tokens",
        len(train_examples),
        args.task,
        dropped,
        args.max_length,
    )
    if not train_examples:
        raise SystemExit(f"{args.data}: no training examples left")
    eval_examples = None
    if args.eval_data:
        eval_examples = build_examples(
            load_tokenized(args.eval_data), tokenizer, vocab, args.task, args.max_length
        )[0]

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    warn_if_updates_round_away(model, args.learning_rate)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = TrainingArguments(**trainer_kwargs(args, has_eval=bool(eval_examples)))

    class SFTTrainer(ResponseLossTrainer, Trainer):
        pass

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_examples,
        eval_dataset=eval_examples,
        data_collator=lambda batch: collate(batch, pad_id),
        callbacks=[
            MetricsJsonlCallback(Path(args.output_dir) / "metrics.jsonl"),
            extras_callback(args.model),
        ],
    )
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(args))
    trainer.save_model(args.output_dir)  # on every rank (ZeRO-3 gathers the shards); rank 0 writes
    if trainer.is_world_process_zero():
        copy_model_extras(args.model, args.output_dir)
        summary = {
            "train_loss": result.training_loss,
            "steps": result.global_step,
            "examples": len(train_examples),
            "dropped_too_long": dropped,
        }
        Path(args.output_dir, "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: %s", summary)
    trainer.accelerator.wait_for_everyone()  # no rank exits while rank 0 still writes
