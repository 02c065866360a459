"""worldvq: the embedded default codec. WORLD vocoder parameters, two k-means codebooks, WORLD synthesis.

WORLD (``pyworld``) analyses the audio every ``analysis_period`` ms: F0 (DIO refined by StoneMask), the
spectral envelope (CheapTrick, as a mel-cepstrum through ``pysptk``) and the aperiodicity (D4C, coded in
WORLD's bands). The analysis frames are averaged into code frames of ``hop_length`` samples, and each code
frame is two codes, flattened frame-major as every multi-codebook codec here (speech_lpo.codecs):

  codebook 0  the envelope's shape: mel-cepstral coefficients 1..``mcep_order``
  codebook 1  the excitation and level: mel-cepstral c0 (log energy), log F0 (interpolated through
              unvoiced frames, so the contour stays continuous), the voiced share of the frame, and
              the band aperiodicity

Each codebook is a k-means codebook (``codebook_size / 2`` centroids over standardised features) fitted
on the training split (``WorldVQ.fit``); no download. Decoding interpolates the centroids back to the
analysis period and runs WORLD's synthesis, which puts the phase of a pulse train or noise under the
envelope instead of guessing it (Griffin-Lim's phase, melvq's, is what made its audio sound broken).

Audio is peak-normalised before analysis, as melvq does, so c0 spends its centroids on the loudness
contour of speech rather than on recording levels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from speech_lpo.codecs import CODEC_FILE, Codec, as_mono_float32, flatten_codes, resample, unflatten_codes

CODEBOOK_FILE = "codebooks.npz"
PEAK = 0.95
NUM_QUANTIZERS = 2
SPECTRAL_FLOOR = 1e-12  # power floor before the mel-cepstrum: digital silence has an all-zero envelope


class WorldVQ(Codec):
    name = "worldvq"
    num_quantizers = NUM_QUANTIZERS

    def __init__(
        self,
        codebooks: list[np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
        sample_rate: int = 16000,
        hop_length: int = 640,
        analysis_period: float = 5.0,
        mcep_order: int = 40,
        alpha: float = 0.42,
        fft_size: int = 1024,
        f0_floor: float = 60.0,
        f0_ceil: float = 500.0,
        dio_speed: int = 2,
    ):
        per = {len(c) for c in codebooks}
        if len(codebooks) != NUM_QUANTIZERS or len(per) != 1:
            raise ValueError(
                f"worldvq needs {NUM_QUANTIZERS} codebooks of one size, got {[c.shape for c in codebooks]}"
            )
        period_samples = sample_rate * analysis_period / 1000
        if hop_length % period_samples:
            raise ValueError(
                f"hop_length {hop_length} is not whole analysis frames of {period_samples} samples"
            )
        # codebook 0: c1..c_order; codebook 1: c0, log F0, voiced share, aperiodicity
        self.dims = (mcep_order, 4)
        for c, d in zip(codebooks, self.dims, strict=True):
            if c.ndim != 2 or c.shape[1] != d:
                raise ValueError(f"codebook of shape {c.shape}, expected (C, {d})")
        self.codebooks = [c.astype(np.float32) for c in codebooks]
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.analysis_period = analysis_period
        self.mcep_order = mcep_order
        self.alpha = alpha
        self.fft_size = fft_size
        self.f0_floor = f0_floor
        self.f0_ceil = f0_ceil
        self.dio_speed = dio_speed
        self.ratio = int(hop_length // period_samples)  # analysis frames per code frame
        self.frame_rate = sample_rate / hop_length
        self.per_codebook = per.pop()
        self.codebook_size = NUM_QUANTIZERS * self.per_codebook
        self._sq = [(c**2).sum(axis=1) for c in self.codebooks]
        self._sp2mc, self._mc2sp, self._mc2sp_zero = mel_cepstrum_matrices(mcep_order, alpha, fft_size)

    def params(self) -> dict:
        return {name: getattr(self, name) for name in self.param_names()}

    @staticmethod
    def param_names() -> tuple[str, ...]:
        return (
            "sample_rate",
            "hop_length",
            "analysis_period",
            "mcep_order",
            "alpha",
            "fft_size",
            "f0_floor",
            "f0_ceil",
            "dio_speed",
        )

    # analysis -----------------------------------------------------------------------------------------
    def features(self, wav: np.ndarray) -> np.ndarray:
        """(T, 1 + mcep_order + 3) code-frame features of audio at the codec's rate, unstandardised:
        [c0, c1..c_order, log F0, voiced share, aperiodicity]."""
        import pyworld

        peak = float(np.abs(wav).max()) if wav.size else 0.0
        x = (wav * (PEAK / peak) if peak > 0 else wav).astype(np.float64)
        n_frames = len(x) // self.hop_length
        if n_frames == 0:
            raise ValueError(
                f"audio too short for worldvq: {len(x)} samples < one frame of {self.hop_length}"
            )
        x = x[: n_frames * self.hop_length]
        f0, t = pyworld.dio(
            x,
            self.sample_rate,
            self.f0_floor,
            self.f0_ceil,
            frame_period=self.analysis_period,
            speed=self.dio_speed,
        )
        f0 = pyworld.stonemask(x, f0, t, self.sample_rate)[: n_frames * self.ratio]
        t = t[: n_frames * self.ratio]
        sp = pyworld.cheaptrick(x, f0, t, self.sample_rate, fft_size=self.fft_size)
        # D4C costs 4x CheapTrick: one aperiodicity per code frame, at the analysis frame in its middle
        mid = np.arange(n_frames) * self.ratio + self.ratio // 2
        ap = pyworld.d4c(x, f0[mid], t[mid], self.sample_rate, fft_size=self.fft_size)
        bap = pyworld.code_aperiodicity(ap, self.sample_rate).mean(axis=1)
        mcep = np.log(np.maximum(sp, SPECTRAL_FLOOR)) @ self._sp2mc
        frames = np.hstack([mcep, continuous_log_f0(f0)[:, None], (f0 > 0)[:, None].astype(np.float64)])
        # DIO's frames sit at 0, period, 2 period, ...: code frame k averages those of its hop
        frames = frames.reshape(n_frames, self.ratio, -1).mean(axis=1)
        frames = np.hstack([frames, bap[:, None]])
        return frames.astype(np.float32)

    def split(self, frames: np.ndarray) -> list[np.ndarray]:
        """Standardised features -> the vectors of codebook 0 (envelope) and codebook 1 (excitation)."""
        z = (frames - self.mean) / self.std
        order = self.mcep_order
        return [z[:, 1 : order + 1], np.hstack([z[:, :1], z[:, order + 1 :]])]

    def quantize(self, frames: np.ndarray) -> np.ndarray:
        """(Q, T) nearest-centroid codes (squared Euclidean) of (T, D) code-frame features."""
        return np.stack(
            [
                (sq[None, :] - 2.0 * v @ c.T).argmin(axis=1)
                for v, c, sq in zip(self.split(frames), self.codebooks, self._sq, strict=True)
            ]
        ).astype(np.int64)

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        return flatten_codes(self.quantize(self.features(wav)), self.per_codebook)

    # synthesis ----------------------------------------------------------------------------------------
    def decode(self, codes: np.ndarray | list[int], utterance: str = "") -> np.ndarray:
        grid = unflatten_codes(codes, NUM_QUANTIZERS, self.per_codebook, utterance)
        env, exc = (c[g] for c, g in zip(self.codebooks, grid, strict=True))
        z = np.hstack([exc[:, :1], env, exc[:, 1:]])
        return self.features_to_audio(z * self.std + self.mean)

    def features_to_audio(self, frames: np.ndarray) -> np.ndarray:
        """WORLD synthesis of (T, D) code-frame features (quantised or not): T * hop_length samples."""
        import pyworld

        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        # code frame k's average sits at the middle of its hop; interpolate linearly between those
        n = len(frames) * self.ratio
        at = (np.arange(n) - (self.ratio - 1) / 2) / self.ratio
        fine = np.stack(
            [np.interp(at, np.arange(len(frames)), col) for col in frames.T.astype(np.float64)], 1
        )
        order = self.mcep_order
        mcep, lf0, voiced, bap = (
            fine[:, : order + 1],
            fine[:, order + 1],
            fine[:, order + 2],
            fine[:, order + 3 :],
        )
        f0 = np.where(voiced >= 0.5, np.exp(lf0), 0.0)
        sp = np.exp(mcep @ self._mc2sp + self._mc2sp_zero)
        n_bands = pyworld.get_num_aperiodicities(self.sample_rate)
        ap = pyworld.decode_aperiodicity(
            np.ascontiguousarray(np.repeat(bap, n_bands, axis=1)), self.sample_rate, self.fft_size
        )
        synth = pyworld.synthesize(f0, sp, ap, self.sample_rate, self.analysis_period)
        # WORLD ends at the last analysis frame's centre: pad to whole code frames, as encode consumed them
        wav = np.zeros(len(frames) * self.hop_length)
        wav[: min(len(wav), len(synth))] = synth[: len(wav)]
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        # WORLD's level follows c0; only a rare overshoot is scaled back into range
        return (wav * (PEAK / peak) if peak > 1.0 else wav).astype(np.float32)

    # fitting, saving ----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        wavs: Iterable[tuple[np.ndarray, int]],
        codebook_size: int = 1024,
        seed: int = 0,
        max_frames: int = 200_000,
        **params,
    ) -> WorldVQ:
        """Per-feature mean and std, then a k-means codebook of ``codebook_size / 2`` centroids for each of
        the two codebooks, over the code frames of (wav, sample_rate) pairs (the training split)."""
        from sklearn.cluster import KMeans

        per = codebook_size // NUM_QUANTIZERS
        if per * NUM_QUANTIZERS != codebook_size:
            raise ValueError(
                f"worldvq: codebook_size {codebook_size} is not {NUM_QUANTIZERS} equal codebooks"
            )
        order = params.get("mcep_order", 40)
        probe = cls(
            [np.zeros((1, order), np.float32), np.zeros((1, 4), np.float32)],
            np.zeros(order + 4),
            np.ones(order + 4),
            **params,
        )
        frames = np.concatenate(
            [probe.features(resample(as_mono_float32(w), sr, probe.sample_rate)) for w, sr in wavs]
        )
        if len(frames) < per:
            raise ValueError(
                f"worldvq: {len(frames)} training frames cannot fit {per} centroids per codebook"
            )
        rng = np.random.default_rng(seed)
        if len(frames) > max_frames:
            frames = frames[rng.choice(len(frames), max_frames, replace=False)]
        mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-6
        probe.mean, probe.std = mean.astype(np.float32), std.astype(np.float32)
        codebooks = [
            KMeans(n_clusters=per, n_init=1, max_iter=100, random_state=seed).fit(v).cluster_centers_
            for v in probe.split(frames)
        ]
        return cls(codebooks, mean, std, **params)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / CODEBOOK_FILE,
            envelope=self.codebooks[0],
            excitation=self.codebooks[1],
            mean=self.mean,
            std=self.std,
        )
        meta = {**self.spec(), **self.params()}
        (directory / CODEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, meta: dict) -> WorldVQ:
        z = np.load(directory / CODEBOOK_FILE)
        params = {k: meta[k] for k in cls.param_names() if k in meta}
        return cls([z["envelope"], z["excitation"]], z["mean"], z["std"], **params)

    @classmethod
    def from_spec(cls, spec: dict, path: Path, num_quantizers: int | None = None) -> WorldVQ:
        raise ValueError(
            f"{path}: worldvq has no codebooks until it is fitted on a training split; "
            "`speech-lpo tokenize --codec <this yaml>` fits them and saves them under the output dir"
        )


def continuous_log_f0(f0: np.ndarray) -> np.ndarray:
    """log F0 with unvoiced frames filled by linear interpolation between voiced ones (held at the ends);
    all-unvoiced audio gets log(100 Hz), a neutral value the voiced share switches off."""
    voiced = np.flatnonzero(f0 > 0)
    if voiced.size == 0:
        return np.full(len(f0), np.log(100.0))
    return np.interp(np.arange(len(f0)), voiced, np.log(f0[voiced]))


def mel_cepstrum_matrices(
    order: int, alpha: float, fft_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pysptk's sp2mc and mc2sp as matrices. Both are linear in the log spectrum (a real cepstrum, then
    ``freqt``'s frequency warping), so ``log(sp) @ A`` equals ``sp2mc(sp)`` and ``exp(mc @ B + b)`` equals
    ``mc2sp(mc)`` to float precision, at the cost of one matrix product (sp2mc per frame was 3x all of
    WORLD's analysis)."""
    import pysptk

    bins = fft_size // 2 + 1
    to_mcep = pysptk.sp2mc(np.exp(np.eye(bins)), order, alpha)  # row i: the image of log-spectrum bin i
    zero = np.log(pysptk.mc2sp(np.zeros(order + 1), alpha, fft_size))
    to_log_sp = np.log(pysptk.mc2sp(np.eye(order + 1), alpha, fft_size)) - zero
    return to_mcep, to_log_sp, zero
