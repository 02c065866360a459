"""Codecs: melvq and worldvq fitted on the mini corpus, EnCodec / Mimi / DAC on small random configs (real
classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from speech_lpo.codecs import (
    CODEC_FILE,
    FITTED_CODECS,
    MalformedCodes,
    flatten_codes,
    load_audio,
    load_codec,
    unflatten_codes,
)
from speech_lpo.codecs.melvq import MelVQ
from speech_lpo.codecs.neural import NEURAL_CODECS
from speech_lpo.prepare import read_manifest
from speech_lpo.vocab import AudioVocab
from tests.fixtures_corpus import LIBRISPEECH_DIR, MINI_CODEBOOK, need, tiny_neural_model

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def english_lines(mini_manifests, split="test-clean"):
    return read_manifest(mini_manifests["librispeech"] / f"{split}.jsonl")


def test_flatten_is_frame_major_with_offsets():
    codes = np.array([[1, 2, 3], [4, 5, 6]])  # (Q=2, T=3), 10 codes per codebook
    flat = flatten_codes(codes, 10)
    assert flat.tolist() == [1, 14, 2, 15, 3, 16]
    assert unflatten_codes(flat, 2, 10).tolist() == codes.tolist()
    # malformed: a partial frame, a code in another codebook's band, a text token (outside the codes)
    with pytest.raises(MalformedCodes, match="utterance 'a': 5 codes are not whole frames of 2"):
        unflatten_codes([1, 14, 2, 15, 3], 2, 10, "a")
    with pytest.raises(MalformedCodes, match="'b': 1 code.* position 3: codebook 0 where codebook 1"):
        unflatten_codes([1, 14, 2, 5], 2, 10, "b")
    with pytest.raises(MalformedCodes, match="'c': 1 token.*outside the audio codes \\[0, 20\\)"):
        unflatten_codes([1, 14, 2, 151643], 2, 10, "c")


def test_melvq_shapes_range_and_determinism(melvq_codec_dir, mini_manifests):
    codec = load_codec(melvq_codec_dir)
    assert isinstance(codec, MelVQ)
    assert codec.codebook_size == MINI_CODEBOOK and codec.sample_rate == 16000 and codec.frame_rate == 40
    line = english_lines(mini_manifests)[0]
    wav, sr = load_audio(line["audio"])
    codes = codec.encode(wav, sr)
    assert codes.dtype == np.int64 and codes.ndim == 1
    assert abs(len(codes) - line["duration"] * codec.frame_rate) <= 2
    assert codes.min() >= 0 and codes.max() < codec.codebook_size
    assert len(set(codes.tolist())) > 5  # speech moves through the codebook
    assert np.array_equal(codes, codec.encode(wav, sr))
    out = codec.decode(codes)
    assert out.dtype == np.float32 and abs(len(out) - len(wav)) <= codec.hop_length
    assert np.isfinite(out).all() and np.abs(out).max() > 0.1


def test_melvq_resamples_input(melvq_codec_dir, mini_manifests):
    import soxr

    codec = load_codec(melvq_codec_dir)
    wav, sr = load_audio(english_lines(mini_manifests)[1]["audio"])
    at_16k = codec.encode(wav, sr)
    at_22k = codec.encode(soxr.resample(wav, sr, 22050), 22050)
    assert abs(len(at_16k) - len(at_22k)) <= 1
    n = min(len(at_16k), len(at_22k))
    assert (at_16k[:n] == at_22k[:n]).mean() > 0.7  # same frames after resampling back


def test_melvq_save_load_identical(melvq_codec_dir, mini_manifests, tmp_path):
    codec = load_codec(melvq_codec_dir)
    codec.save(tmp_path / "again")
    again = load_codec(tmp_path / "again")
    assert np.array_equal(codec.codebook, again.codebook) and codec.params() == again.params()
    wav, sr = load_audio(english_lines(mini_manifests)[2]["audio"])
    assert np.array_equal(codec.encode(wav, sr), again.encode(wav, sr))
    meta = json.loads((tmp_path / "again" / CODEC_FILE).read_text())
    assert meta["codec"] == "melvq" and meta["codebook_size"] == MINI_CODEBOOK


def test_melvq_quantises_better_than_chance(melvq_codec_dir, mini_manifests):
    """Held-out frames lie closer to their centroid than to a random one (the codebook is fitted)."""
    codec = load_codec(melvq_codec_dir)
    wav, sr = load_audio(english_lines(mini_manifests)[3]["audio"])
    frames = codec.features(wav)
    nearest = codec.codebook[codec.quantize(frames)]
    random = codec.codebook[np.random.default_rng(0).integers(0, codec.codebook_size, len(frames))]
    assert np.linalg.norm(frames - nearest) < 0.5 * np.linalg.norm(frames - random)


def test_melvq_bad_input(melvq_codec_dir):
    codec = load_codec(melvq_codec_dir)
    with pytest.raises(ValueError, match="too short"):
        codec.encode(np.zeros(100, np.float32), 16000)
    with pytest.raises(ValueError, match="mono"):
        codec.encode(np.zeros((2, 3, 4), np.float32), 16000)
    assert codec.decode([]).size == 0
    # a token outside the codes (a text token among the audio tokens) is an error naming the utterance
    with pytest.raises(MalformedCodes, match="utterance 'u1': 2 token"):
        codec.decode([codec.codebook_size + 3, -1, 5], "u1")


def test_melvq_fit_needs_enough_frames():
    with pytest.raises(ValueError, match="cannot fit 512 centroids"):
        MelVQ.fit([(np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)], 512)


def test_melvq_spec_matches_codec(melvq_codec_dir):
    spec = yaml.safe_load((ROOT / "tokenizers" / "melvq.yaml").read_text())
    codec = MelVQ(
        np.zeros((spec["codebook_size"], spec["n_mels"]), np.float32),
        **{k: spec[k] for k in MelVQ.param_names()},
    )
    assert codec.frame_rate == spec["frame_rate"] and codec.sample_rate == spec["sample_rate"]
    with pytest.raises(ValueError, match="fitted"):
        load_codec(ROOT / "tokenizers" / "melvq.yaml")


def test_tokenizer_yamls_are_complete():
    for path in sorted((ROOT / "tokenizers").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for key in ("codec", "sample_rate", "frame_rate", "codebook_size", "token_format"):
            assert key in spec, f"{path.name} lacks {key}"
        assert spec["codec"] in FITTED_CODECS or spec["codec"] in NEURAL_CODECS, path.name
        assert spec["codec"] in FITTED_CODECS or "pretrained" in spec, path.name


def test_missing_codec_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_codec(tmp_path / "nope.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_codec(tmp_path / "empty")


@pytest.mark.parametrize("name", sorted(NEURAL_CODECS))
def test_neural_codec_round_trips(name, tmp_path, mini_manifests):
    """encode -> flat codes in their codebook bands -> ids -> codes -> decode; save/load and a
    transformers checkpoint directory give the same codes."""
    model = tiny_neural_model(name)
    n_q = 2
    codec = NEURAL_CODECS[name](model, num_quantizers=n_q)
    per = model.config.codebook_size
    assert codec.codebook_size == n_q * per
    wav, sr = load_audio(english_lines(mini_manifests)[0]["audio"])
    wav = wav[: sr // 2]
    codes = codec.encode(wav, sr)
    frames = len(codes) // n_q
    assert len(codes) == frames * n_q and abs(frames - 0.5 * codec.frame_rate) <= 2
    grid = codes.reshape(frames, n_q)
    for q in range(n_q):  # codebook q's codes sit in band [q * per, (q + 1) * per)
        assert (grid[:, q] >= q * per).all() and (grid[:, q] < (q + 1) * per).all()
    assert len(set(grid[:, 0].tolist())) > 1

    vocab = AudioVocab(audio_start_id=1000, audio_end_id=1001, offset=1002, codebook_size=codec.codebook_size)
    assert np.array_equal(vocab.ids_to_codes(vocab.codes_to_ids(codes)), codes)

    audio = codec.decode(codes)
    hop = codec.sample_rate / codec.frame_rate
    assert audio.dtype == np.float32 and abs(len(audio) - frames * hop) <= 2 * hop

    codec.save(tmp_path / "saved")
    assert np.array_equal(load_codec(tmp_path / "saved").encode(wav, sr), codes)
    model.save_pretrained(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match="--num-quantizers"):  # all of a checkpoint's codebooks: refused
        load_codec(tmp_path / "checkpoint")
    from_checkpoint = load_codec(tmp_path / "checkpoint", n_q)  # the from_pretrained path
    assert type(from_checkpoint) is type(codec)
    assert np.array_equal(from_checkpoint.encode(wav, sr), codes)


def test_encodec_bandwidth_follows_num_quantizers():
    model = tiny_neural_model("encodec")
    assert NEURAL_CODECS["encodec"](model, 1).bandwidth == 1.5
    assert NEURAL_CODECS["encodec"](model, 2).bandwidth == 3.0
    with pytest.raises(ValueError, match="num_quantizers"):
        NEURAL_CODECS["encodec"](model, 3)


def test_neural_spec_is_checked_against_the_model(tmp_path):
    model = tiny_neural_model("dac")
    model.save_pretrained(tmp_path / "dac")
    spec = {"codec": "dac", "pretrained": str(tmp_path / "dac"), "num_quantizers": 2, "codebook_size": 128}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec))
    assert load_codec(tmp_path / "ok.yaml").codebook_size == 128
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "codebook_size": 4096}))
    with pytest.raises(ValueError, match="codebook_size is 4096"):
        load_codec(tmp_path / "bad.yaml")


def test_real_librispeech_encodes(melvq_codec_dir):
    flac = need(LIBRISPEECH_DIR / "LibriSpeech" / "test-clean" / "1089" / "134691" / "1089-134691-0000.flac")
    codec = load_codec(melvq_codec_dir)
    wav, sr = load_audio(flac)
    assert sr == 16000 and abs(len(codec.encode(wav, sr)) - len(wav) / sr * 40) <= 2
    assert sf.info(str(flac)).frames == len(wav)


@pytest.mark.slow
def test_melvq_round_trip_stays_intelligible(tmp_path):
    """pocketsphinx, restricted to the corpus's words, on English of a 300-utterance mini corpus: the
    melvq round trip (the default 512 centroids, fitted on the train split) loses few words beyond what
    the originals lose. (With the 24 training utterances of the fast fixture it loses 23 points.)"""
    import jiwer
    import yaml

    from speech_lpo.prepare import prepare
    from speech_lpo.synth_corpus import jsgf_word_loop, synth_corpus
    from speech_lpo.tokenize_audio import fit_codec
    from speech_lpo.tts_metrics import pocketsphinx_asr

    synth_corpus(tmp_path / "corpus", {"train": 300, "dev": 0, "test": 30}, langs=("en",))
    prepare("librispeech", tmp_path / "corpus" / "librispeech", tmp_path / "data")
    spec = yaml.safe_load((ROOT / "tokenizers" / "melvq.yaml").read_text())
    codec = fit_codec(spec, tmp_path / "data" / "train.jsonl")
    asr = pocketsphinx_asr(jsgf_word_loop("en"))

    def transcribe(wav):
        return asr(wav).upper()

    lines = read_manifest(tmp_path / "data" / "test-clean.jsonl")
    refs = [x["text"] for x in lines]
    audio = [load_audio(x["audio"]) for x in lines]
    original = jiwer.wer(refs, [transcribe(w) for w, _ in audio])
    round_trip = jiwer.wer(refs, [transcribe(codec.decode(codec.encode(w, sr))) for w, sr in audio])
    assert original < 0.6
    assert round_trip < original + 0.15, (original, round_trip)


# -- worldvq -----------------------------------------------------------------------------------------------
WORLDVQ_SPEC = ROOT / "tokenizers" / "worldvq_25hz.yaml"


@pytest.fixture(scope="module")
def worldvq_codec_dir(mini_manifests, tmp_path_factory):
    """worldvq fitted through `tokenize`'s codec preparation on the mini corpus's English train split, with
    MINI_CODEBOOK codes (two codebooks of 32): what the recipe does, at the fixture's scale."""
    from speech_lpo.tokenize_audio import prepare_codec

    spec = yaml.safe_load(WORLDVQ_SPEC.read_text()) | {"codebook_size": MINI_CODEBOOK}
    out = tmp_path_factory.mktemp("worldvq")
    (out / "worldvq.yaml").write_text(yaml.safe_dump(spec))
    prepare_codec(str(out / "worldvq.yaml"), out, mini_manifests["librispeech"] / "train.jsonl")
    return out / "codec"


def log_mel(wav: np.ndarray) -> np.ndarray:
    import librosa

    return np.log(librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=1024, hop_length=160) + 1e-6)


def test_worldvq_round_trip(worldvq_codec_dir, mini_manifests):
    """Codes alternate between the two codebooks' bands at 25 frames/s; the decoded audio follows the
    original's spectrogram and pitch far more closely than a decode of random codes does."""
    import pyworld

    from speech_lpo.codecs.worldvq import WorldVQ

    codec = load_codec(worldvq_codec_dir)
    assert isinstance(codec, WorldVQ) and codec.num_quantizers == 2
    assert codec.codebook_size == MINI_CODEBOOK and codec.frame_rate == 25
    line = english_lines(mini_manifests)[0]
    wav, sr = load_audio(line["audio"])
    codes = codec.encode(wav, sr)
    frames = len(codes) // 2
    assert codes.dtype == np.int64 and len(codes) == 2 * frames and abs(frames - line["duration"] * 25) <= 1
    per = MINI_CODEBOOK // 2
    assert (codes[0::2] < per).all() and (codes[1::2] >= per).all() and codes.max() < MINI_CODEBOOK
    assert len(set(codes[0::2].tolist())) > 5 and len(set(codes[1::2].tolist())) > 5
    assert np.array_equal(codes, codec.encode(wav, sr))

    out = codec.decode(codes)
    assert out.dtype == np.float32 and len(out) == frames * codec.hop_length
    assert np.isfinite(out).all() and 0.05 < np.abs(out).max() <= 1.0
    random = codec.decode(flatten_codes(np.random.default_rng(0).integers(0, per, (2, frames)), per))
    ref = log_mel(wav[: len(out)]).ravel()
    fit, chance = (np.corrcoef(ref, log_mel(x).ravel())[0, 1] for x in (out, random))
    print(f"log-mel correlation with the original: round trip {fit:.2f}, random codes {chance:.2f}")
    assert fit > 0.5 and fit > chance + 0.2

    def median_f0(x):
        f0, _ = pyworld.dio(x.astype(np.float64), 16000)
        return np.median(f0[f0 > 0])

    assert abs(np.log(median_f0(out) / median_f0(wav))) < 0.1  # within 10% of the speaker's pitch


def test_worldvq_decodes_random_and_refuses_malformed_codes(worldvq_codec_dir):
    codec = load_codec(worldvq_codec_dir)
    per = codec.per_codebook
    grid = np.random.default_rng(1).integers(0, per, (2, 50))  # any code of each band: what the LM may emit
    out = codec.decode(flatten_codes(grid, per))
    assert len(out) == 50 * codec.hop_length and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert codec.decode([]).size == 0
    good = flatten_codes(grid[:, :3], per).tolist()
    with pytest.raises(MalformedCodes, match="utterance 'u1': 5 codes are not whole frames of 2"):
        codec.decode(good[:5], "u1")
    with pytest.raises(MalformedCodes, match="'u2': 1 code.* position 1: codebook 0 where codebook 1"):
        codec.decode([good[0], good[0]] + good[2:], "u2")
    with pytest.raises(MalformedCodes, match="'u3': 1 token.*outside the audio codes"):
        codec.decode(good[:-1] + [151643], "u3")


def test_worldvq_save_load_and_bad_input(worldvq_codec_dir, mini_manifests, tmp_path):
    from speech_lpo.codecs.worldvq import WorldVQ

    codec = load_codec(worldvq_codec_dir)
    codec.save(tmp_path / "again")
    again = load_codec(tmp_path / "again")
    assert codec.params() == again.params()
    wav, sr = load_audio(english_lines(mini_manifests)[1]["audio"])
    assert np.array_equal(codec.encode(wav, sr), again.encode(wav, sr))
    assert np.array_equal(codec.decode(codec.encode(wav, sr)), again.decode(again.encode(wav, sr)))
    with pytest.raises(ValueError, match="too short for worldvq"):
        codec.encode(np.zeros(100, np.float32), 16000)
    with pytest.raises(ValueError, match="cannot fit 512 centroids"):
        WorldVQ.fit([(wav, sr)], 1024)


def test_worldvq_mel_cepstrum_matrices_equal_pysptk():
    import pysptk

    from speech_lpo.codecs.worldvq import mel_cepstrum_matrices

    to_mcep, to_log_sp, zero = mel_cepstrum_matrices(24, 0.42, 1024)
    sp = np.exp(np.random.default_rng(0).standard_normal((5, 513)))
    mcep = pysptk.sp2mc(sp, 24, 0.42)
    np.testing.assert_allclose(np.log(sp) @ to_mcep, mcep, atol=1e-9)
    np.testing.assert_allclose(mcep @ to_log_sp + zero, np.log(pysptk.mc2sp(mcep, 0.42, 1024)), atol=1e-9)


def test_worldvq_spec_matches_codec():
    from speech_lpo.codecs.worldvq import WorldVQ

    spec = yaml.safe_load(WORLDVQ_SPEC.read_text())
    per = spec["codebook_size"] // spec["num_quantizers"]
    dims = (spec["mcep_order"], 4)
    codec = WorldVQ(
        [np.zeros((per, d), np.float32) for d in dims],
        np.zeros(spec["mcep_order"] + 4),
        np.ones(spec["mcep_order"] + 4),
        **{k: spec[k] for k in WorldVQ.param_names()},
    )
    assert codec.spec()["tokens_per_second"] <= 50  # the TTS recipe's budget (issue 24)
    for key in ("frame_rate", "sample_rate", "num_quantizers", "codebook_size"):
        assert codec.spec()[key] == spec[key], key
    with pytest.raises(ValueError, match="fitted"):
        load_codec(WORLDVQ_SPEC)
