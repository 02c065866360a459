"""Model and tokenizer construction shared by build-model, the tests and the embedded default.

The tiny Qwen2 is built from a config (no download); real runs load Qwen2.5 with ``from_pretrained``.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from speech_lpo.vocab import AUDIO_END, AUDIO_START, AudioVocab, audio_token


def tiny_qwen2_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        attn_implementation="sdpa",  # transformers' default for real checkpoints too
    )


def packed_attention() -> str:
    """The attention implementation that ``train`` and ``ref-logps`` load models with (the same in both, so
    that their log-probs agree at step 0): on CUDA FlexAttention, which skips the tiles that the packed
    mask blanks (other responses, the future); on the CPU SDPA (torch has no FlexAttention backward there).
    """
    return "flex_attention" if torch.cuda.is_available() else "sdpa"


def tiny_qwen2(vocab_size: int, seed: int = 0, **config_kwargs) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(vocab_size, **config_kwargs))


def extend_tokenizer(tokenizer, codebook_size: int) -> AudioVocab:
    """Append <|audio_start|>, <|audio_end|>, <|audio_0|>..<|audio_{K-1}|> as one contiguous block.

    Added as special tokens so that BPE never splits or merges them, and text that contains none of
    them tokenises exactly as before.
    """
    new = [AUDIO_START, AUDIO_END, *(audio_token(c) for c in range(codebook_size))]
    tokenizer.add_tokens(new, special_tokens=True)
    return AudioVocab.from_tokenizer(tokenizer, codebook_size)
