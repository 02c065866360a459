"""`speech-lpo sft`: the loss falls, the output is a complete model dir, long examples are counted."""

import json

import torch

from speech_lpo.cli import main as cli
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.sft import ResponseLossTrainer, build_examples, collate
from speech_lpo.tokenize_audio import load_tokenized
from speech_lpo.vocab import AudioVocab


def test_sft_learns_and_writes_a_model_dir(speech_lm, tmp_path):
    from transformers import AutoTokenizer

    model_dir, tokens = speech_lm
    out = tmp_path / "sft"
    cli(
        [
            "sft",
            "--data",
            str(tokens),
            "--model",
            str(model_dir),
            "--output_dir",
            str(out),
            "--task",
            "both",
            "--max_steps",
            "40",
            "--learning_rate",
            "3e-3",
            "--batch_size",
            "4",
            "--logging_steps",
            "5",
            "--lr_scheduler_type",
            "constant",
        ]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.6 * losses[0], losses
    assert AudioVocab.load(out) == AudioVocab.load(model_dir)

    tokenizer = AutoTokenizer.from_pretrained(out)
    data = load_tokenized(tokens)
    examples, too_long = build_examples(data, tokenizer, AudioVocab.load(out), "both", None)
    assert too_long == 0 and len(examples) == 2 * len(data)
    # the ASR response is the text then <|im_end|>; the TTS response ends <|audio_end|> <|im_end|>
    im_end, audio_end = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|audio_end|>"])
    assert tokenizer.decode(examples[0]["response"][:-1]) == data[0]["text"]
    assert examples[1]["response"][-2:] == [audio_end, im_end]
    shortest = min(len(e["prompt"]) + len(e["response"]) for e in examples)
    _, too_long = build_examples(data, tokenizer, AudioVocab.load(out), "both", shortest)
    assert 0 < too_long < len(examples)


def test_sft_loss_through_the_chunked_head_equals_the_models_own(tmp_path):
    from transformers import Trainer, TrainingArguments

    class SFTTrainer(ResponseLossTrainer, Trainer):
        pass

    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1, 97, (n,), generator=g).tolist()

    examples = [{"prompt": ids(p), "response": ids(r)} for p, r in ((5, 9), (12, 3), (7, 20))]
    batch = collate(examples, pad_id=0)
    # the model's own loss from full logits: labels on the response tokens, at the columns they sit in
    labels = torch.full_like(batch["input_ids"], -100)
    labels[batch["tok_row"], batch["tok_pred"] + 1] = batch["tok_target"]
    model = tiny_qwen2(97, hidden_size=32)
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    trainer = SFTTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
