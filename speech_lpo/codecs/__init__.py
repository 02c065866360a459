"""Audio codecs behind one interface: waveform <-> 1-D integer codes.

Every codec has ``sample_rate``, ``frame_rate`` (code frames per second), ``codebook_size`` (K, the number
of distinct codes, all codebooks together), ``encode(wav, sample_rate)``, ``decode(codes)`` and
``save(dir)``; ``load_codec`` reads any of them back.

Multi-codebook codecs (EnCodec, Mimi, DAC) are flattened as ESPnet does: frame-major, codebook q of
frame t at position ``t * Q + q`` with value ``code + q * C`` (C codes per codebook), so K = Q * C and one
audio token block serves every codebook. ``decode`` refuses a malformed sequence (``MalformedCodes``,
naming the utterance): a code outside [0, K) (a text token among the audio tokens), a code of another
codebook than its position's, or a partial frame. Folding such a slip back into range would shift every
later frame and make garbage audio without an error; generation avoids them under
speech_lpo.codecs.constrain.CodebookOrder.

``load_codec(path_or_name, num_quantizers)`` accepts
- a directory written by ``Codec.save`` (it holds ``codec.json``), or a model directory from
  ``speech-lpo build-model`` (the codec lives in its ``codec/`` subdirectory); a neural codec's
  ``codec.json`` refers to its weights (speech_lpo.codecs.neural), the small codebooks of melvq and
  worldvq are in the dir;
- a tokenizer spec, ``tokenizers/<name>.yaml``: neural codecs load their ``pretrained`` model; melvq and
  worldvq have no codebooks until fitted (``FITTED_CODECS``: ``MelVQ.fit``, ``WorldVQ.fit``);
- a transformers EnCodec / Mimi / DAC checkpoint: a local directory or a hub id, with ``num_quantizers``
  (a checkpoint without a count is refused: all 32 codebooks is rarely what anyone wants).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import yaml

CODEC_FILE = "codec.json"
MODEL_CODEC_DIR = "codec"  # where build-model puts the codec inside a model directory


class Codec(ABC):
    """Waveform (float32 mono) <-> codes (int64, 1-D, values in [0, codebook_size))."""

    name: str
    sample_rate: int
    frame_rate: float
    codebook_size: int
    num_quantizers: int = 1  # codebooks per frame: tokens per frame in the flattened sequence

    def encode(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Codes of one utterance; ``wav`` is resampled (soxr) to the codec's rate first."""
        wav = resample(as_mono_float32(wav), sample_rate, self.sample_rate)
        codes = self._encode(wav)
        return np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)

    @abstractmethod
    def _encode(self, wav: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def decode(self, codes: np.ndarray | list[int], utterance: str = "") -> np.ndarray:
        """Waveform (float32, ``sample_rate``) of a code sequence; ``MalformedCodes`` names ``utterance``."""

    def encode_batch(self, audio: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Codes of several (waveform, sample rate) utterances; neural codecs run them as one padded batch."""
        return [self.encode(wav, sr) for wav, sr in audio]

    def decode_batch(self, sequences: list, utterances: list[str] | None = None) -> list[np.ndarray]:
        """Waveforms of several code sequences; neural codecs run them as one padded batch."""
        utterances = utterances or [""] * len(sequences)
        return [self.decode(c, u) for c, u in zip(sequences, utterances, strict=True)]

    @abstractmethod
    def save(self, directory: str | Path) -> None: ...

    def spec(self) -> dict:
        """The figures a tokenizer YAML documents."""
        return {
            "codec": self.name,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "codebook_size": self.codebook_size,
            "num_quantizers": self.num_quantizers,
            "tokens_per_second": self.frame_rate * self.num_quantizers,
            "token_format": "<|audio_{code}|>",
        }


def read_codec_meta(path: str | Path) -> dict:
    """The figures of the codec a saved codec dir or a model dir holds (``codec.json``), without loading
    any weights: what length limits and the codebook constraint need."""
    path = Path(path)
    if (path / MODEL_CODEC_DIR / CODEC_FILE).is_file():
        path = path / MODEL_CODEC_DIR
    if not (path / CODEC_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {CODEC_FILE}; is it a model dir from `speech-lpo build-model`?")
    meta = json.loads((path / CODEC_FILE).read_text())
    meta.setdefault("num_quantizers", 1)  # written before multi-codebook codecs recorded it: melvq
    meta.setdefault("tokens_per_second", meta["frame_rate"] * meta["num_quantizers"])
    return meta


def as_mono_float32(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:  # (samples, channels), as soundfile reads it
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio (samples,) or (samples, channels), got shape {wav.shape}")
    return wav


def resample(wav: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    if sample_rate == target_rate:
        return wav
    return soxr.resample(wav, sample_rate, target_rate).astype(np.float32, copy=False)


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Float32 mono samples and their rate; errors name the file."""
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or TypeError by case
        raise ValueError(f"{path}: unreadable audio ({e})") from e
    return as_mono_float32(wav), sr


def flatten_codes(codes: np.ndarray, per_codebook: int) -> np.ndarray:
    """(Q, T) codes -> 1-D frame-major codes with codebook q offset by q * per_codebook."""
    n_q = codes.shape[0]
    offsets = (np.arange(n_q, dtype=np.int64) * per_codebook)[:, None]
    return (codes.astype(np.int64) + offsets).T.reshape(-1)


class MalformedCodes(ValueError):
    """A code sequence that is not whole frames of codes in codebook order."""


def unflatten_codes(
    codes: np.ndarray | list[int], n_q: int, per_codebook: int, utterance: str = ""
) -> np.ndarray:
    """Inverse of flatten_codes: 1-D -> (Q, T). A malformed sequence raises MalformedCodes naming the
    utterance: a code outside [0, Q * C) (a text token among audio tokens), one in another codebook's
    band than its position's, or a partial frame."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    where = f"utterance {utterance!r}: " if utterance else ""
    outside = np.flatnonzero((codes < 0) | (codes >= n_q * per_codebook))
    if outside.size:
        raise MalformedCodes(
            f"{where}{outside.size} token(s) outside the audio codes [0, {n_q * per_codebook}), "
            f"first at position {outside[0]} (a text token among the audio tokens?)"
        )
    stray = np.flatnonzero(codes // per_codebook != np.arange(len(codes)) % n_q)
    if stray.size:
        p = stray[0]
        raise MalformedCodes(
            f"{where}{stray.size} code(s) in the wrong codebook, first at position {p}: "
            f"codebook {codes[p] // per_codebook} where codebook {p % n_q} belongs"
        )
    if len(codes) % n_q:
        raise MalformedCodes(f"{where}{len(codes)} codes are not whole frames of {n_q} codebooks")
    return (codes.reshape(-1, n_q) % per_codebook).T


# codecs with a codebook fitted on the training split (``fit``) rather than a pretrained model
FITTED_CODECS = ("melvq", "worldvq")


def codec_class(name: str) -> type[Codec]:
    from speech_lpo.codecs import melvq, neural, worldvq

    classes = {"melvq": melvq.MelVQ, "worldvq": worldvq.WorldVQ, **neural.NEURAL_CODECS}
    if name not in classes:
        raise ValueError(f"unknown codec {name!r}; known: {sorted(classes)}")
    return classes[name]


def load_codec(path_or_name: str | Path, num_quantizers: int | None = None) -> Codec:
    """A codec from a saved codec dir, a model dir, a tokenizer YAML, or a transformers checkpoint;
    ``num_quantizers`` (``--num-quantizers``) must agree with a saved codec or spec, and is required
    for a checkpoint."""
    path = Path(path_or_name)
    if (path / MODEL_CODEC_DIR / CODEC_FILE).is_file():
        path = path / MODEL_CODEC_DIR
    if (path / CODEC_FILE).is_file():
        meta = json.loads((path / CODEC_FILE).read_text())
        saved = meta.get("num_quantizers", 1)
        if num_quantizers and num_quantizers != saved:
            raise ValueError(
                f"{path} holds a codec with {saved} codebooks, not --num-quantizers {num_quantizers}"
            )
        return codec_class(meta["codec"]).load(path, meta)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokenizer spec")
        spec = yaml.safe_load(path.read_text())
        return codec_class(spec["codec"]).from_spec(spec, path, num_quantizers)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: neither a saved codec ({CODEC_FILE}) nor a transformers checkpoint")
    from speech_lpo.codecs.neural import NeuralCodec

    return NeuralCodec.from_pretrained(str(path_or_name), num_quantizers)
