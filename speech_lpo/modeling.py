"""Model and tokenizer construction shared by build-model, the tests and the embedded default.

The tiny Qwen2 is built from a config (no download); real runs load Qwen2.5 with ``from_pretrained``.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

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


def resize_embeddings_to_mean(model: PreTrainedModel, new_size: int) -> None:
    """Resize input (and untied output) embeddings; new rows start at the mean of the old rows."""
    old_size = model.get_input_embeddings().weight.shape[0]
    # mean_resizing=False: transformers' default samples new rows from a Gaussian fitted to the old
    # ones; DESIGN.md asks for the plain mean, which we set ourselves.
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for emb in {
            id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e
        }.values():
            if new_size > old_size:
                emb.weight[old_size:] = emb.weight[:old_size].mean(dim=0, keepdim=True)
