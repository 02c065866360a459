"""ChatML prompts and responses for ASR and TTS, as token ids.

DESIGN.md, Formats: ASR puts the audio tokens in the user turn and the assistant answers text; TTS names
the voice (a speaker tag) and puts the text in the user turn, and the assistant answers audio tokens
between <|audio_start|> and <|audio_end|>. Every response ends with <|im_end|>, which is also where
generation stops. Ids are built by concatenation, so audio codes never pass through string formatting.
"""

from __future__ import annotations

import numpy as np

from speech_lpo.vocab import AudioVocab

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def im_end_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(IM_END)


def audio_span(vocab: AudioVocab, codes: np.ndarray | list[int]) -> list[int]:
    return [vocab.audio_start_id, *vocab.codes_to_ids(codes).tolist(), vocab.audio_end_id]


def asr_prompt_ids(tokenizer, vocab: AudioVocab, codes: np.ndarray | list[int]) -> list[int]:
    return (
        _encode(tokenizer, f"{IM_START}user\n")
        + audio_span(vocab, codes)
        + _encode(tokenizer, f"{IM_END}\n{IM_START}assistant\n")
    )


def asr_response_ids(tokenizer, text: str) -> list[int]:
    return _encode(tokenizer, text) + [im_end_id(tokenizer)]


def tts_prompt_ids(tokenizer, text: str, speaker: str | None = None) -> list[int]:
    """The TTS prompt (also a text task's): the user turn names the voice to speak, ``voice <speaker>`` on a
    line of its own (the speaker tag of the data's utt2spk / manifest), then holds the text. Without a
    speaker (a text prompt, data without speakers) the turn holds the text alone."""
    voice = f"voice {speaker}\n" if speaker else ""
    return _encode(tokenizer, f"{IM_START}user\n{voice}{text}{IM_END}\n{IM_START}assistant\n")


def tts_response_ids(tokenizer, vocab: AudioVocab, codes: np.ndarray | list[int]) -> list[int]:
    return audio_span(vocab, codes) + [im_end_id(tokenizer)]


def response_text(tokenizer, ids: list[int]) -> str:
    """Text of an ASR response: stops at the first <|im_end|>, drops special tokens."""
    end = im_end_id(tokenizer)
    if end in ids:
        ids = ids[: ids.index(end)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def response_codes(vocab: AudioVocab, ids: list[int]) -> tuple[np.ndarray, bool]:
    """Audio codes of a TTS response and whether it was closed by <|audio_end|>.

    Tokens outside the audio block (a stray text token from an undertrained model) are dropped.
    """
    ids_arr = np.asarray(ids, dtype=np.int64)
    closed = vocab.audio_end_id in ids
    if closed:
        ids_arr = ids_arr[: ids.index(vocab.audio_end_id)]
    return vocab.ids_to_codes(ids_arr[vocab.is_audio(ids_arr)]), closed
