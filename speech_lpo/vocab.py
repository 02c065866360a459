"""The audio block of the extended vocabulary: codec code c <-> token id offset + c.

DESIGN.md, Formats: the Qwen text vocabulary, then ``<|audio_start|>``, ``<|audio_end|>``, then
``<|audio_0|>`` ... ``<|audio_{K-1}|>`` as one contiguous id block. Mapping is a vectorised add, never
string formatting, because it runs on every tokenised utterance and every generated candidate.
The block's position is stored beside the model as ``audio_vocab.json`` so that stages need not
look tokens up by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"
VOCAB_FILE = "audio_vocab.json"


def audio_token(code: int) -> str:
    """The token string of one code (used only when building the vocabulary)."""
    return f"<|audio_{code}|>"


@dataclass(frozen=True)
class AudioVocab:
    """Where the audio tokens sit in the extended vocabulary."""

    audio_start_id: int
    audio_end_id: int
    offset: int  # id of <|audio_0|>
    codebook_size: int  # K: number of audio tokens (all codebooks flattened)

    def codes_to_ids(self, codes: np.ndarray | list[int]) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"audio code out of range [0, {self.codebook_size}): min {codes.min()}, max {codes.max()}"
            )
        return codes + self.offset

    def ids_to_codes(self, ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        codes = ids - self.offset
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"token ids outside the audio block [{self.offset}, {self.end})")
        return codes

    def is_audio(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.offset) & (ids < self.end)

    @property
    def end(self) -> int:
        """One past the last audio token id."""
        return self.offset + self.codebook_size

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir, VOCAB_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> AudioVocab:
        path = Path(model_dir, VOCAB_FILE)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no audio vocabulary; was the model made by `speech-lpo build-model`?"
            )
        return cls(**json.loads(path.read_text()))

    @classmethod
    def from_tokenizer(cls, tokenizer, codebook_size: int) -> AudioVocab:
        """Read the block's position from a tokenizer and check that it is contiguous."""
        ids = tokenizer.convert_tokens_to_ids([AUDIO_START, AUDIO_END, audio_token(0)])
        offset = ids[2]
        last = tokenizer.convert_tokens_to_ids(audio_token(codebook_size - 1))
        if last != offset + codebook_size - 1 or ids[1] != ids[0] + 1 or offset != ids[1] + 1:
            raise ValueError("audio tokens are not one contiguous block after <|audio_start|>, <|audio_end|>")
        return cls(audio_start_id=ids[0], audio_end_id=ids[1], offset=offset, codebook_size=codebook_size)
