"""`speech-lpo sft`: the loss falls, the output is a complete model dir, long examples are counted."""

import json

from speech_lpo.cli import main as cli
from speech_lpo.sft import build_examples
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
