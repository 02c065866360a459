"""melvq: the embedded default codec. Log-mel frames, a k-means codebook, Griffin-Lim decoding.

One code per frame (``codebook_size`` centroids of 80-band log-mel vectors at ``sample_rate / hop_length``
frames per second), so a 3 s utterance is about 120 tokens at the default 40 Hz. It needs no download:
the codebook is fit on the training split (``MelVQ.fit``). Decoding interpolates the centroid sequence to
a finer hop, maps mel back to linear magnitude with the pseudo-inverse of the mel filterbank and runs
Griffin-Lim; intelligible, not pretty (bench/codec.py measures how intelligible).

Audio is peak-normalised before analysis, so the codebook spends its centroids on spectral shape rather
than on recording level.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import librosa
import numpy as np

from speech_lpo.codecs import CODEC_FILE, Codec, unflatten_codes

CODEBOOK_FILE = "codebook.npy"
LOG_FLOOR = 1e-5  # mel power floor before the log: about 80 dB below loud speech bins
PEAK = 0.95


class MelVQ(Codec):
    name = "melvq"

    def __init__(
        self,
        codebook: np.ndarray,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 400,
        n_mels: int = 80,
        synthesis_hop: int = 100,
        griffin_lim_iters: int = 32,
    ):
        if codebook.ndim != 2 or codebook.shape[1] != n_mels:
            raise ValueError(f"codebook must be (K, {n_mels}), got {codebook.shape}")
        if hop_length % synthesis_hop:
            raise ValueError(f"hop_length {hop_length} must be a multiple of synthesis_hop {synthesis_hop}")
        self.codebook = codebook.astype(np.float32)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.synthesis_hop = synthesis_hop
        self.griffin_lim_iters = griffin_lim_iters
        self.frame_rate = sample_rate / hop_length
        self.codebook_size = len(codebook)
        self._mel_basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        self._mel_pinv = np.linalg.pinv(self._mel_basis)
        self._codebook_sq = (self.codebook**2).sum(axis=1)

    def params(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "synthesis_hop": self.synthesis_hop,
            "griffin_lim_iters": self.griffin_lim_iters,
        }

    # analysis -----------------------------------------------------------------------------------------
    @staticmethod
    def log_mel(wav: np.ndarray, mel_basis: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
        """(T, n_mels) log-mel frames of peak-normalised audio at the codec's rate."""
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        if peak > 0:
            wav = wav * (PEAK / peak)
        spec = np.abs(librosa.stft(wav, n_fft=n_fft, hop_length=hop_length)) ** 2
        return np.log(mel_basis @ spec + LOG_FLOOR).T.astype(np.float32)

    def features(self, wav: np.ndarray) -> np.ndarray:
        return self.log_mel(wav, self._mel_basis, self.n_fft, self.hop_length)

    def quantize(self, frames: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid of each frame (squared Euclidean)."""
        dist = self._codebook_sq[None, :] - 2.0 * frames @ self.codebook.T
        return dist.argmin(axis=1).astype(np.int64)

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        if wav.size < self.n_fft:
            raise ValueError(f"audio too short for melvq: {wav.size} samples < n_fft {self.n_fft}")
        return self.quantize(self.features(wav))

    # synthesis ----------------------------------------------------------------------------------------
    def decode(self, codes: np.ndarray | list[int], utterance: str = "") -> np.ndarray:
        codes = unflatten_codes(codes, 1, self.codebook_size, utterance)[0]
        return self.mel_to_audio(self.codebook[codes])

    def mel_to_audio(self, frames: np.ndarray) -> np.ndarray:
        """Griffin-Lim waveform of (T, n_mels) log-mel frames (quantised or not)."""
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        ratio = self.hop_length // self.synthesis_hop
        # linear interpolation in time: frame t of the analysis sits at synthesis frame t * ratio
        pos = np.arange((len(frames) - 1) * ratio + 1) / ratio
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, len(frames) - 1)
        frac = (pos - lo)[:, None].astype(np.float32)
        fine = frames[lo] * (1 - frac) + frames[hi] * frac
        power = np.maximum(np.exp(fine) - LOG_FLOOR, 0.0)
        magnitude = np.sqrt(np.maximum(self._mel_pinv @ power.T, 0.0))
        wav = librosa.griffinlim(
            magnitude,
            n_iter=self.griffin_lim_iters,
            hop_length=self.synthesis_hop,
            n_fft=self.n_fft,
            random_state=0,
        )
        peak = float(np.abs(wav).max())
        return (wav * (PEAK / peak) if peak > 0 else wav).astype(np.float32)

    # fitting, saving ----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        wavs: Iterable[tuple[np.ndarray, int]],
        codebook_size: int = 512,
        seed: int = 0,
        max_frames: int = 200_000,
        **params,
    ) -> MelVQ:
        """k-means codebook over the log-mel frames of (wav, sample_rate) pairs (the training split)."""
        from sklearn.cluster import KMeans

        from speech_lpo.codecs import as_mono_float32, resample

        probe = cls(np.zeros((1, params.get("n_mels", 80)), np.float32), **params)
        frames = np.concatenate(
            [probe.features(resample(as_mono_float32(w), sr, probe.sample_rate)) for w, sr in wavs]
        )
        if len(frames) < codebook_size:
            raise ValueError(f"melvq: {len(frames)} training frames cannot fit {codebook_size} centroids")
        rng = np.random.default_rng(seed)
        if len(frames) > max_frames:
            frames = frames[rng.choice(len(frames), max_frames, replace=False)]
        kmeans = KMeans(n_clusters=codebook_size, n_init=1, max_iter=100, random_state=seed).fit(frames)
        return cls(kmeans.cluster_centers_.astype(np.float32), **params)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / CODEBOOK_FILE, self.codebook)
        meta = {**self.spec(), **self.params()}
        (directory / CODEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, meta: dict) -> MelVQ:
        codebook = np.load(directory / CODEBOOK_FILE)
        params = {k: meta[k] for k in cls.param_names() if k in meta}
        return cls(codebook, **params)

    @staticmethod
    def param_names() -> tuple[str, ...]:
        return ("sample_rate", "n_fft", "hop_length", "n_mels", "synthesis_hop", "griffin_lim_iters")

    @classmethod
    def from_spec(cls, spec: dict, path: Path, num_quantizers: int | None = None) -> MelVQ:
        raise ValueError(
            f"{path}: melvq has no codebook until it is fitted on a training split; "
            "`speech-lpo tokenize --codec <this yaml>` fits it and saves it under the output dir"
        )
