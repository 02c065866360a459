"""EnCodec, Mimi and DAC through transformers, flattened to 1-D codes (see speech_lpo.codecs).

Loaded with ``from_pretrained`` (a local directory or a hub id; a hub id downloads only because the
user named it). ``num_quantizers`` picks how many residual codebooks are kept (fewer: shorter sequences,
lower fidelity); EnCodec expresses it as a bandwidth, which is derived here. EnCodec checkpoints that
normalise audio per chunk (the 48 kHz one) need a scale per chunk that 1-D codes cannot carry and are
refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from speech_lpo.codecs import CODEC_FILE, Codec, flatten_codes, unflatten_codes

MODEL_SUBDIR = "model"


class NeuralCodec(Codec):
    """Shared machinery; subclasses say how their model encodes and decodes a (Q, T) code array."""

    model_type: str

    def __init__(self, model, num_quantizers: int | None = None, pretrained: str | None = None):
        self.model = model.eval()
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

    @staticmethod
    def _max_quantizers(config) -> int:
        return config.num_quantizers

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            codes = self._model_encode(torch.from_numpy(wav)[None, None, :])  # (Q, T)
        return flatten_codes(codes.cpu().numpy(), self.per_codebook)

    def decode(self, codes: np.ndarray | list[int], utterance: str = "") -> np.ndarray:
        grid = unflatten_codes(codes, self.num_quantizers, self.per_codebook, utterance)
        if grid.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            wav = self._model_decode(torch.from_numpy(grid)[None])
        return wav.reshape(-1).float().cpu().numpy()

    def _model_encode(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _model_decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / MODEL_SUBDIR)
        meta = {**self.spec(), "num_quantizers": self.num_quantizers, "pretrained": self.pretrained}
        (directory / CODEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, meta: dict) -> NeuralCodec:
        model = cls.model_class().from_pretrained(directory / MODEL_SUBDIR)
        return cls(model, meta["num_quantizers"], meta.get("pretrained"))

    @classmethod
    def from_spec(cls, spec: dict, path: Path) -> NeuralCodec:
        codec = cls(cls.model_class().from_pretrained(spec["pretrained"]), spec.get("num_quantizers"))
        codec.pretrained = spec["pretrained"]
        for key in ("sample_rate", "frame_rate", "codebook_size"):
            if key in spec and not math.isclose(float(spec[key]), float(getattr(codec, key))):
                raise ValueError(f"{path}: {key} is {spec[key]} but the model gives {getattr(codec, key)}")
        return codec

    @classmethod
    def from_pretrained(cls, name_or_path: str, num_quantizers: int | None = None) -> NeuralCodec:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(name_or_path).model_type
        if model_type not in NEURAL_CODECS:
            raise ValueError(
                f"{name_or_path}: model type {model_type!r} is not one of {sorted(NEURAL_CODECS)}"
            )
        codec_cls = NEURAL_CODECS[model_type]
        return codec_cls(codec_cls.model_class().from_pretrained(name_or_path), num_quantizers, name_or_path)

    @staticmethod
    def model_class():
        raise NotImplementedError


class EncodecCodec(NeuralCodec):
    name = "encodec"

    def __init__(self, model, num_quantizers: int | None = None, pretrained: str | None = None):
        if model.config.normalize:
            raise ValueError(
                "EnCodec with normalize=True (per-chunk scales) cannot be flattened to 1-D codes"
            )
        super().__init__(model, num_quantizers, pretrained)
        bits = math.log2(model.config.codebook_size) * model.config.frame_rate
        # the smallest configured bandwidth that keeps num_quantizers codebooks
        fits = [b for b in model.config.target_bandwidths if int(b * 1000 // bits) == self.num_quantizers]
        if not fits:
            raise ValueError(
                f"encodec: no target bandwidth gives {self.num_quantizers} codebooks "
                f"(bandwidths {model.config.target_bandwidths}, {bits:.0f} bit/s per codebook)"
            )
        self.bandwidth = fits[0]

    @staticmethod
    def _max_quantizers(config) -> int:
        bits = math.log2(config.codebook_size) * config.frame_rate
        return max(int(b * 1000 // bits) for b in config.target_bandwidths)

    @staticmethod
    def model_class():
        from transformers import EncodecModel

        return EncodecModel

    def _model_encode(self, wav):
        out = self.model.encode(wav, bandwidth=self.bandwidth)
        return out.audio_codes[0, 0]  # (chunks=1, batch, Q, T) -> (Q, T)

    def _model_decode(self, codes):
        return self.model.decode(codes[None], [None]).audio_values


class MimiCodec(NeuralCodec):
    name = "mimi"

    @staticmethod
    def model_class():
        from transformers import MimiModel

        return MimiModel

    def _model_encode(self, wav):
        return self.model.encode(wav, num_quantizers=self.num_quantizers).audio_codes[0]

    def _model_decode(self, codes):
        return self.model.decode(codes).audio_values


class DacCodec(NeuralCodec):
    name = "dac"

    @staticmethod
    def _max_quantizers(config) -> int:
        return config.n_codebooks

    @staticmethod
    def model_class():
        from transformers import DacModel

        return DacModel

    def _model_encode(self, wav):
        return self.model.encode(wav, n_quantizers=self.num_quantizers).audio_codes[0, : self.num_quantizers]

    def _model_decode(self, codes):
        return self.model.decode(audio_codes=codes).audio_values


NEURAL_CODECS: dict[str, type[NeuralCodec]] = {"encodec": EncodecCodec, "mimi": MimiCodec, "dac": DacCodec}
