"""Keep generated TTS answers well formed: codebook order within frames, whole frames only.

Codes are flattened frame-major with codebook q in the id band ``offset + [q * C, (q + 1) * C)``
(speech_lpo.codecs.flatten_codes). An unconstrained LM can emit a code of the wrong codebook, a text
token, or stop mid-frame; one slip shifts every later frame. Under ``CodebookOrder`` a TTS answer is
``<|audio_start|>``, then at audio position t only codebook (t mod Q)'s band, ``<|audio_end|>`` only at a
frame boundary after at least one frame, then ``<|im_end|>``. Only a generation cut by max_new_tokens can
still end mid-frame (counted by the stages as a cut answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor

from speech_lpo.codecs import read_codec_meta
from speech_lpo.vocab import AudioVocab


@dataclass(frozen=True)
class CodebookOrder(LogitsProcessor):
    """A transformers ``LogitsProcessor`` for TTS answers (prompts hold no ``<|audio_start|>``)."""

    audio_start_id: int
    audio_end_id: int
    im_end_id: int
    offset: int  # id of code 0
    num_quantizers: int  # Q: codebooks per frame
    per_codebook: int  # C: codes per codebook

    @classmethod
    def for_model(cls, model_dir: str | Path, vocab: AudioVocab, im_end_id: int) -> CodebookOrder:
        """The constraint of a model dir's codec (its ``codec.json``)."""
        n_q = read_codec_meta(model_dir)["num_quantizers"]
        if vocab.codebook_size % n_q:
            raise ValueError(f"{model_dir}: {vocab.codebook_size} audio tokens are not {n_q} equal codebooks")
        return cls(
            vocab.audio_start_id, vocab.audio_end_id, im_end_id, vocab.offset, n_q, vocab.codebook_size // n_q
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        is_start = input_ids == self.audio_start_id
        started = is_start.any(dim=1)
        # tokens since the last <|audio_start|>: the audio position t of the token to come
        t = is_start.flip(1).int().argmax(dim=1)
        ended = started & (input_ids == self.audio_end_id).any(dim=1)
        in_audio = started & ~ended
        vocab_ids = torch.arange(scores.shape[1], device=scores.device)
        low = self.offset + (t % self.num_quantizers) * self.per_codebook
        high = low + self.per_codebook
        allowed = in_audio[:, None] & (vocab_ids >= low[:, None]) & (vocab_ids < high[:, None])
        rows = torch.arange(batch, device=scores.device)
        allowed[rows, self.audio_start_id] = ~started
        allowed[rows, self.audio_end_id] = in_audio & (t > 0) & (t % self.num_quantizers == 0)
        allowed[rows, self.im_end_id] = ended
        return scores.masked_fill(~allowed, float("-inf"))
