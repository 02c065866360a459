"""Build the speech LM: a Qwen tokenizer extended with audio tokens, a model with resized embeddings.

The tokenizer gains ``<|audio_start|>``, ``<|audio_end|>``, ``<|audio_0|>`` .. ``<|audio_{K-1}|>`` (K = the
codec's codebook size) as one contiguous block (speech_lpo.modeling.extend_tokenizer); text tokenises
exactly as before. The embedding matrix is padded to a multiple of 64 rows (as Qwen2.5's own is); every
row past the text tokens starts at the mean of the text rows plus small seeded noise
(``init_new_rows``). Two ways to get the model:

- ``--model`` (a local dir or hub id of a Qwen2.5 checkpoint): ``from_pretrained``; its tokenizer too,
  unless ``--tokenizer`` names another;
- the embedded default: a tiny Qwen2 built from a config, with ``--tokenizer`` (e.g. the Qwen2.5 tokenizer
  files) or, without one, a byte-level BPE trained on the text of ``--text-manifests``.

The output directory holds the model and tokenizer (``save_pretrained``), ``audio_vocab.json``
(speech_lpo.vocab.AudioVocab) and the codec under ``codec/``, so later stages need only the directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Tokenizer

from speech_lpo.codecs import MODEL_CODEC_DIR, load_codec
from speech_lpo.modeling import extend_tokenizer, tiny_qwen2
from speech_lpo.prepare import read_manifest
from speech_lpo.prompts import IM_END, IM_START
from speech_lpo.vocab import AudioVocab

ENDOFTEXT = "<|endoftext|>"
PAD_MULTIPLE = 64  # embedding rows: GPU matrix products are fastest on multiples of 64
NEW_ROW_NOISE = 0.1  # per-dimension std of a new row's noise, relative to the text rows' std
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # Qwen's, in Qwen's order


def train_bpe(texts: list[str], vocab_size: int) -> Qwen2Tokenizer:
    """A byte-level BPE on corpus text, with Qwen2's normaliser and pre-tokeniser (any UTF-8 text,
    Chinese included, has a tokenisation), returned as the Qwen2Tokenizer that reloading it gives."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bpe = json.loads(tok.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]],
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
    )


def init_new_rows(model, first_new: int, seed: int) -> None:
    """Rows from ``first_new`` on (audio tokens, padding) start at the mean of the rows before plus
    Gaussian noise of NEW_ROW_NOISE times their per-dimension std, drawn from ``seed``: close to the mean
    but not identical, so the audio tokens do not start symmetric. Input and untied output embeddings.

    Not transformers' ``mean_resizing``: its noise (covariance 1e-9 times the rows') vanishes in bf16, it
    draws from the global RNG, and it leaves alone the padding rows a Qwen2.5 checkpoint already has,
    where audio tokens land too."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = [e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None]
    weights = {e.weight.data_ptr(): e.weight for e in embeddings}  # tied: one matrix, initialised once
    with torch.no_grad():
        for weight in weights.values():
            std, mean = torch.std_mean(weight[:first_new].float(), dim=0)
            noise = torch.randn(weight.shape[0] - first_new, weight.shape[1], generator=generator)
            weight[first_new:] = (mean + NEW_ROW_NOISE * std * noise).to(weight.dtype)


def build(
    codec_path: str,
    out: Path,
    model_name: str | None = None,
    tokenizer_name: str | None = None,
    text_manifests: list[Path] | None = None,
    bpe_vocab_size: int = 2000,
    tiny_config: dict | None = None,
    seed: int = 0,
) -> AudioVocab:
    codec = load_codec(codec_path)
    if tokenizer_name or model_name:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name)
    else:
        if not text_manifests:
            raise ValueError("the embedded default needs --text-manifests to train its BPE on")
        texts = [x["text"] for m in text_manifests for x in read_manifest(m)]
        tokenizer = train_bpe(texts, bpe_vocab_size)
    text_size = len(tokenizer)
    if model_name:
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype="auto")
    else:
        model = tiny_qwen2(text_size, seed=seed, **(tiny_config or {}))
    vocab = extend_tokenizer(tokenizer, codec.codebook_size)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows or rows % PAD_MULTIPLE:
        # never shrinks: Qwen2.5 checkpoints already pad (151,936 rows for 151,665 tokens)
        model.resize_token_embeddings(
            max(len(tokenizer), rows), pad_to_multiple_of=PAD_MULTIPLE, mean_resizing=False
        )
    init_new_rows(model, text_size, seed)
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
        config.pad_token_id = tokenizer.pad_token_id

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    vocab.save(tmp)
    codec.save(tmp / MODEL_CODEC_DIR)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return vocab


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codec", required=True, help="the codec the audio was tokenised with (<tokens>/codec)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory")
    parser.add_argument("--model", help="Qwen2.5 checkpoint: local dir or hub id (default: tiny Qwen2)")
    parser.add_argument("--tokenizer", help="tokenizer dir or hub id (default: the model's, else a new BPE)")
    parser.add_argument("--text-manifests", type=Path, nargs="+", help="manifests whose text trains the BPE")
    parser.add_argument("--bpe-vocab-size", type=int, default=2000)
    parser.add_argument("--hidden-size", type=int, default=128, help="tiny Qwen2")
    parser.add_argument("--num-layers", type=int, default=4, help="tiny Qwen2")
    parser.add_argument("--num-heads", type=int, default=4, help="tiny Qwen2")
    parser.add_argument("--num-kv-heads", type=int, default=2, help="tiny Qwen2")
    parser.add_argument("--seed", type=int, default=0, help="tiny Qwen2's weights and the new rows' noise")


def main(args: argparse.Namespace) -> None:
    tiny = {
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "num_heads": args.num_heads,
        "num_kv_heads": args.num_kv_heads,
    }
    vocab = build(
        args.codec,
        args.out,
        args.model,
        args.tokenizer,
        args.text_manifests,
        args.bpe_vocab_size,
        tiny,
        args.seed,
    )
    print(f"{args.out}: audio tokens [{vocab.offset}, {vocab.end}), <|audio_start|> {vocab.audio_start_id}")
