"""EnCodec, Mimi and DAC through transformers, flattened to 1-D codes (see speech_lpo.codecs).

Loaded with ``from_pretrained`` (a local directory or a hub id; a hub id downloads only because the
user named it). ``num_quantizers`` picks how many residual codebooks are kept (fewer: shorter sequences,
lower fidelity); a checkpoint holds up to 32 (Mimi, EnCodec) or 12 (DAC), which no LM vocabulary wants,
so a checkpoint without a count is refused: the count comes from ``--num-quantizers`` or a tokenizer
spec. EnCodec expresses the count as a bandwidth, which is derived here. EnCodec checkpoints that
normalise audio per chunk (the 48 kHz one) need a scale per chunk that 1-D codes cannot carry and are
refused.

A saved codec (``save``) refers to its weights, it does not copy them: ``codec.json`` holds the spec,
the count, and ``pretrained`` (a hub id with its ``revision``, or an absolute local path), so model dirs
and checkpoints stay the size of the LM. Only a model with no source to refer to (built in memory) has
its weights written, once, into ``<dir>/model``; a codec loaded from there refers to that directory.

The model runs on the GPU when there is one. ``encode_batch`` / ``decode_batch`` run many utterances as
one padded batch and cut each result to its own length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from speech_lpo.codecs import CODEC_FILE, Codec, as_mono_float32, flatten_codes, resample, unflatten_codes

MODEL_SUBDIR = "model"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class NeuralCodec(Codec):
    """Shared machinery; subclasses say how their model encodes and decodes (B, Q, T) code arrays."""

    model_type: str
    causal = True  # an encoder/decoder that looks only backwards (EnCodec 24 kHz, Mimi)

    def __init__(
        self,
        model,
        num_quantizers: int | None = None,
        pretrained: str | None = None,
        revision: str | None = None,
        device: str | None = None,
    ):
        self.device = torch.device(device or _default_device())
        self.model = model.eval().to(self.device)
        config = model.config
        self.max_quantizers = self._max_quantizers(config)
        self.num_quantizers = num_quantizers or self.max_quantizers
        if not 1 <= self.num_quantizers <= self.max_quantizers:
            raise ValueError(f"{self.name}: num_quantizers must be in [1, {self.max_quantizers}]")
        self.per_codebook = config.codebook_size
        self.sample_rate = config.sampling_rate
        self.frame_rate = float(config.frame_rate)
        self.codebook_size = self.num_quantizers * self.per_codebook
        self.pretrained = pretrained
        self.revision = revision

    @staticmethod
    def _max_quantizers(config) -> int:
        return config.num_quantizers

    @property
    def samples_per_frame(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        return self._encode_padded([wav])[0]

    def encode_batch(self, audio: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Codes of several (waveform, sample rate) utterances, as one zero-padded batch."""
        return self._encode_padded([resample(as_mono_float32(w), sr, self.sample_rate) for w, sr in audio])

    def _encode_padded(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        # every utterance is zero-padded to whole frames, so that one-at-a-time and batched agree
        spf = self.samples_per_frame
        frames = [-(-len(w) // spf) for w in wavs]
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(wavs)
        for group in self._batches(frames):
            batch = torch.zeros(len(group), 1, max(frames[i] for i in group) * spf)
            mask = torch.zeros_like(batch, dtype=torch.long)
            for k, i in enumerate(group):
                batch[k, 0, : len(wavs[i])] = torch.from_numpy(wavs[i])
                mask[k, 0, : frames[i] * spf] = 1
            with torch.inference_mode():
                codes = self._model_encode(batch.to(self.device), mask.to(self.device)).cpu().numpy()
            for k, i in enumerate(group):
                out[i] = flatten_codes(codes[k, :, : frames[i]], self.per_codebook)
        return out

    def _batches(self, frames: list[int]) -> list[list[int]]:
        """Indices run together: all of them for a causal codec; for a non-causal one (DAC) only
        utterances of one length, because its convolutions would see a longer neighbour's padding
        differently from their own zero padding and change the last frames."""
        if self.causal:
            return [list(range(len(frames)))] if frames else []
        by_length: dict[int, list[int]] = {}
        for i, n in enumerate(frames):
            by_length.setdefault(n, []).append(i)
        return list(by_length.values())

    def decode(self, codes: np.ndarray | list[int], utterance: str = "") -> np.ndarray:
        return self.decode_batch([codes], [utterance])[0]

    def decode_batch(self, sequences: list, utterances: list[str] | None = None) -> list[np.ndarray]:
        """Waveforms of several code sequences, as batches padded with code 0; a malformed sequence
        raises MalformedCodes naming its utterance."""
        utterances = utterances or [""] * len(sequences)
        grids = [
            unflatten_codes(c, self.num_quantizers, self.per_codebook, u)
            for c, u in zip(sequences, utterances, strict=True)
        ]
        frames = [g.shape[1] for g in grids]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(grids)
        for group in self._batches(frames):
            group = [i for i in group if frames[i]]
            if not group:
                continue
            batch = torch.zeros(
                len(group), self.num_quantizers, max(frames[i] for i in group), dtype=torch.long
            )
            for k, i in enumerate(group):
                batch[k, :, : frames[i]] = torch.from_numpy(grids[i])
            with torch.inference_mode():
                wavs = self._model_decode(batch.to(self.device)).float().cpu().numpy().reshape(len(group), -1)
            for k, i in enumerate(group):
                out[i] = wavs[k, : frames[i] * self.samples_per_frame].copy()
        return out

    def _model_encode(self, wav: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, samples) audio and its padding mask -> (B, Q, T) codes."""
        raise NotImplementedError

    def _model_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, Q, T) codes -> (B, 1, samples) audio."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {**self.spec(), "pretrained": self.pretrained, "revision": self.revision}
        if self.pretrained is None:  # nothing to refer to: the weights are stored here, once
            self.model.save_pretrained(directory / MODEL_SUBDIR)
        (directory / CODEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, meta: dict) -> NeuralCodec:
        if (directory / MODEL_SUBDIR).is_dir():
            source, revision = str((directory / MODEL_SUBDIR).resolve()), None
        else:
            source, revision = meta["pretrained"], meta.get("revision")
            if source is None or (source.startswith("/") and not Path(source).is_dir()):
                raise FileNotFoundError(
                    f"{directory / CODEC_FILE}: the codec's weights are not at {source!r} (it refers to them)"
                )
        model = cls.model_class().from_pretrained(source, revision=revision)
        return cls(model, meta["num_quantizers"], source, revision)

    @classmethod
    def from_spec(cls, spec: dict, path: Path, num_quantizers: int | None = None) -> NeuralCodec:
        count = spec.get("num_quantizers")
        if num_quantizers and count and num_quantizers != count:
            raise ValueError(
                f"{path} keeps {count} codebooks; --num-quantizers {num_quantizers} contradicts it"
            )
        count = count or num_quantizers
        if not count:
            raise ValueError(f"{path}: no num_quantizers in the spec; pass --num-quantizers")
        codec = cls.from_pretrained(spec["pretrained"], count, spec.get("revision"))
        for key in ("sample_rate", "frame_rate", "codebook_size"):
            if key in spec and not math.isclose(float(spec[key]), float(getattr(codec, key))):
                raise ValueError(f"{path}: {key} is {spec[key]} but the model gives {getattr(codec, key)}")
        return codec

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, num_quantizers: int | None, revision: str | None = None
    ) -> NeuralCodec:
        """A transformers codec checkpoint (local dir or hub id) keeping ``num_quantizers`` codebooks."""
        from transformers import AutoConfig
        from transformers.utils.hub import resolve_revision

        local = Path(name_or_path)
        if not local.exists():  # a hub id: pinned to the commit its revision points to now, and recorded
            revision = getattr(resolve_revision(name_or_path, revision), "resolved", None) or revision
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
        if config.model_type not in NEURAL_CODECS:
            raise ValueError(
                f"{name_or_path}: model type {config.model_type!r} is not one of {sorted(NEURAL_CODECS)}"
            )
        codec_cls = NEURAL_CODECS[config.model_type]
        if not num_quantizers:
            raise ValueError(
                f"{name_or_path}: a {config.model_type} checkpoint holds {codec_cls._max_quantizers(config)} "
                "codebooks; say how many to keep with --num-quantizers (or use a tokenizers/*.yaml spec)"
            )
        model = codec_cls.model_class().from_pretrained(name_or_path, revision=revision)
        # a local checkpoint is referred to by its absolute path, a hub id by its id and commit
        source = str(local.resolve()) if local.exists() else name_or_path
        return codec_cls(model, num_quantizers, source, revision)

    @staticmethod
    def model_class():
        raise NotImplementedError


class EncodecCodec(NeuralCodec):
    name = "encodec"

    def __init__(self, model, num_quantizers: int | None = None, *args, **kwargs):
        if model.config.normalize:
            raise ValueError(
                "EnCodec with normalize=True (per-chunk scales) cannot be flattened to 1-D codes"
            )
        super().__init__(model, num_quantizers, *args, **kwargs)
        bits = math.log2(model.config.codebook_size) * model.config.frame_rate
        # the smallest configured bandwidth that keeps at least num_quantizers codebooks; the codes of the
        # first codebooks of a residual quantiser do not depend on how many follow, so the rest are cut
        self.bandwidth = min(
            b for b in model.config.target_bandwidths if int(b * 1000 // bits) >= self.num_quantizers
        )

    @staticmethod
    def _max_quantizers(config) -> int:
        bits = math.log2(config.codebook_size) * config.frame_rate
        return max(int(b * 1000 // bits) for b in config.target_bandwidths)

    @staticmethod
    def model_class():
        from transformers import EncodecModel

        return EncodecModel

    def _model_encode(self, wav, mask):
        out = self.model.encode(wav, padding_mask=mask, bandwidth=self.bandwidth)
        return out.audio_codes[0, :, : self.num_quantizers]  # (chunks=1, B, Q, T) -> (B, Q, T)

    def _model_decode(self, codes):
        return self.model.decode(codes[None], [None]).audio_values


class MimiCodec(NeuralCodec):
    name = "mimi"

    @staticmethod
    def model_class():
        from transformers import MimiModel

        return MimiModel

    def _model_encode(self, wav, mask):
        return self.model.encode(wav, padding_mask=mask, num_quantizers=self.num_quantizers).audio_codes

    def _model_decode(self, codes):
        return self.model.decode(codes).audio_values


class DacCodec(NeuralCodec):
    name = "dac"
    causal = False

    @staticmethod
    def _max_quantizers(config) -> int:
        return config.n_codebooks

    @staticmethod
    def model_class():
        from transformers import DacModel

        return DacModel

    def _model_encode(self, wav, mask):  # DAC takes no mask; batches hold one length (_batches)
        return self.model.encode(wav, n_quantizers=self.num_quantizers).audio_codes[:, : self.num_quantizers]

    def _model_decode(self, codes):
        return self.model.decode(audio_codes=codes).audio_values


NEURAL_CODECS: dict[str, type[NeuralCodec]] = {"encodec": EncodecCodec, "mimi": MimiCodec, "dac": DacCodec}
