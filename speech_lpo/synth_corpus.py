"""Synthesise the embedded mini corpus with espeak-ng, in the AISHELL-1 and LibriSpeech release layouts.

Sentences come from a small grammar with a bounded vocabulary (3 to 8 words), drawn without repeats
and split into train/dev/test so that no test sentence is seen in training. Every espeak voice is one
speaker and speaks in every split. ``--en-grammar en_large`` with ``--en-rate`` and ``--en-snr-db`` makes
a harder English task: a larger grammar, and a speaking rate and white noise drawn per utterance.
Deterministic for a given seed. Output (16 kHz, 16-bit PCM):

  <out>/aishell1/data_aishell/wav/{train,dev,test}/S<spk>/BAC009S<spk>W<utt>.wav
  <out>/aishell1/data_aishell/transcript/aishell_transcript_v0.8.txt   (words separated by spaces)
  <out>/librispeech/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
  <out>/librispeech/LibriSpeech/.../<spk>-<chapter>.trans.txt           (upper case)
  <out>/librispeech/LibriSpeech/SPEAKERS.TXT                            (speaker id -> espeak voice)
  <out>/librispeech/corpus_words.jsgf                                   (pocketsphinx word-loop grammar)

espeak-ng is the library bundled in the ``espeakng-loader`` wheel, driven through ctypes (no system
package). Audio files are written atomically and existing ones are kept, so a killed run resumes.

Reproducibility: sentences, ids, speakers and splits depend on the seed alone, and every utterance is
spoken by a freshly loaded espeak-ng (see ``espeak``), so the corpus is the same bytes for a given seed
whatever ``--jobs`` is and however often a run is killed and resumed.
"""

from __future__ import annotations

import _ctypes
import argparse
import ctypes
import math
import os
import random
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

SAMPLE_RATE = 16000
PEAK = 0.9
SPLITS = ("train", "dev", "test")
LIBRISPEECH_SUBSETS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
# pocketsphinx, restricted to the grammar's words, misses 29% of the words of en-us+f2, 40% of +klatt4,
# 47% of plain en-us, 55% of +klatt2 and 82% of +f4 (12 sentences each): the default speakers are the
# three best; with its general language model it misses 70% and more of every voice
EN_VOICES = ("en-us+f2", "en-us+klatt4", "en-us")
CMN_VOICES = ("cmn", "cmn+f2", "cmn+klatt4")
EN_SPEAKER_BASE = 9001  # LibriSpeech-style numeric speaker ids, far above the real corpus's
CMN_SPEAKER_BASE = 1  # AISHELL-style S0001...
GRAMMAR_FILE = "corpus_words.jsgf"  # beside LibriSpeech/: the English word loop (jsgf_word_loop)

# -- grammar ---------------------------------------------------------------------------------------------
EN_WORDS = {
    "name": ["JOHN", "MARY", "PETER", "ANNA", "DAVID", "SARAH"],
    "adj": ["RED", "BIG", "SMALL", "GREEN", "OLD", "YOUNG", "HAPPY", "COLD"],
    "noun": ["DOG", "CAT", "HOUSE", "CAR", "BOOK", "TREE", "BIRD", "TABLE", "RIVER", "GARDEN"],
    "plural": ["DOGS", "CATS", "HOUSES", "CARS", "BOOKS", "TREES", "BIRDS", "APPLES"],
    "verb": ["SAW", "FOUND", "LIKED", "WANTED", "OPENED", "PAINTED", "CALLED", "FOLLOWED"],
    "num": ["TWO", "THREE", "FOUR", "FIVE", "SIX", "TEN"],
    "adv": ["TODAY", "AGAIN", "SLOWLY", "QUICKLY", "LATER", "OUTSIDE"],
    "place": ["HOME", "SCHOOL", "WORK", "TOWN"],
}
EN_TEMPLATES = [
    "name verb THE adj noun",
    "THE adj noun IS adj",
    "name verb num plural adv",
    "THE noun verb THE noun",
    "name WENT TO place adv",
    "THE adj noun verb THE adj noun",
    "name AND name verb num plural",
    "I verb THE noun adv",
    "name verb THE adj noun NEAR THE noun",
]
CMN_WORDS = {
    "name": ["小明", "小红", "老王", "妈妈", "爸爸", "老师"],
    "verb": ["看见", "喜欢", "买了", "找到", "画了", "拿了"],
    "num": ["一", "两", "三", "四", "五", "六"],
    "noun": ["苹果", "小猫", "汽车", "书", "花", "鸟"],
    "adj": ["红色", "大", "小", "新", "旧", "漂亮"],
    "place": ["学校", "公园", "商店", "北京", "上海"],
    "time": ["今天", "明天", "昨天", "早上", "晚上"],
}
CMN_TEMPLATES = [
    "name verb num 个 noun",
    "time name 去 place",
    "name 在 place verb noun",
    "这 个 noun 很 adj",
    "time name verb 的 adj 的 noun",
    "name 和 name 去 place",
    "name time 在 place 看 书",
]
# A harder English task (``--en-grammar en_large``): about five times the words, longer templates, so that
# a small model cannot learn every sentence shape and its error rate leaves room to move
EN_LARGE_WORDS = {
    "name": EN_WORDS["name"]
    + ["JAMES", "EMMA", "THOMAS", "LUCY", "GEORGE", "ALICE", "HENRY", "KATE", "FRANK"],
    "adj": EN_WORDS["adj"]
    + ["BLUE", "WHITE", "BLACK", "NEW", "LONG", "SHORT", "WARM", "QUIET", "BRIGHT", "DARK", "HEAVY", "EMPTY"],
    "noun": EN_WORDS["noun"]
    + [
        "HORSE",
        "WINDOW",
        "CHAIR",
        "LETTER",
        "BOX",
        "BRIDGE",
        "CASTLE",
        "FOREST",
        "SHIP",
        "TRAIN",
        "DOOR",
        "PICTURE",
        "FLOWER",
        "MOUNTAIN",
        "KITCHEN",
        "BOTTLE",
        "BASKET",
        "HAT",
    ],
    "plural": EN_WORDS["plural"]
    + ["HORSES", "LETTERS", "BOXES", "FLOWERS", "SHIPS", "CHAIRS", "BOTTLES", "STONES", "SHOES", "PENS"],
    "verb": EN_WORDS["verb"]
    + ["BOUGHT", "CARRIED", "WASHED", "MOVED", "BROKE", "SOLD", "CLEANED", "WATCHED", "DREW", "HID", "LOST"],
    "num": EN_WORDS["num"] + ["SEVEN", "EIGHT", "NINE", "TWELVE", "TWENTY"],
    "adv": EN_WORDS["adv"] + ["YESTERDAY", "TOMORROW", "NOW", "SOON", "ALWAYS", "NEVER", "QUIETLY"],
    "place": EN_WORDS["place"] + ["CHURCH", "MARKET", "LONDON", "THE CITY", "THE BEACH", "THE STATION"],
    "prep": ["NEAR", "UNDER", "BEHIND", "ABOVE", "BESIDE", "INSIDE"],
}
EN_LARGE_TEMPLATES = EN_TEMPLATES + [
    "name verb THE adj noun prep THE adj noun adv",
    "name AND name WENT TO place adv",
    "THE num adj plural WERE prep THE noun",
    "I verb num adj plural AT place",
    "WHY DID name verb THE noun prep THE noun",
]
GRAMMARS = {
    "en": (EN_TEMPLATES, EN_WORDS),
    "en_large": (EN_LARGE_TEMPLATES, EN_LARGE_WORDS),
    "cmn": (CMN_TEMPLATES, CMN_WORDS),
}


def sentences(lang: str, count: int, seed: int) -> list[list[str]]:
    """``count`` distinct sentences (lists of words) from a grammar of ``GRAMMARS``."""
    templates, words = GRAMMARS[lang]
    capacity = sum(math.prod(len(words.get(slot, [slot])) for slot in t.split()) for t in templates)
    if count > capacity // 2:  # past half the grammar, rejection sampling slows down for little gain
        raise ValueError(
            f"the {lang} grammar gives at most {capacity // 2} distinct sentences; ask for fewer"
        )
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    out: list[list[str]] = []
    while len(out) < count:
        template = rng.choice(templates).split()
        # a slot may fill in several words ("THE CITY"): a sentence is a list of single words
        sentence = tuple(
            " ".join(rng.choice(words[slot]) if slot in words else slot for slot in template).split()
        )
        if sentence not in seen:
            seen.add(sentence)
            out.append(list(sentence))
    return out


def vocabulary(lang: str) -> set[str]:
    templates, words = GRAMMARS[lang]
    fixed = {w for t in templates for w in t.split() if w not in words}
    return fixed | {w for ws in words.values() for phrase in ws for w in phrase.split()}


def jsgf_word_loop(lang: str = "en") -> str:
    """A JSGF grammar accepting any sequence of the corpus's words, for pocketsphinx
    (``Decoder.add_jsgf_string``): scoring synthetic speech against the words it can contain, not
    against all of English, which a general language model does badly on espeak voices."""
    words = " | ".join(sorted(w.lower() for w in vocabulary(lang)))
    return f"#JSGF V1.0;\ngrammar corpus;\npublic <utterance> = <word>+;\n<word> = {words};\n"


# -- espeak-ng through ctypes -------------------------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
ESPEAK_SAMPLE_RATE = 22050  # what espeak_Initialize reports for every voice
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _load_espeak() -> ctypes.CDLL:
    """A fresh image of the espeak-ng library, initialised for synchronous output."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    data = espeakng_loader.get_data_path().encode()
    if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0) != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(f"espeak_Initialize failed with data path {data.decode()}")
    return lib


def _unload(lib: ctypes.CDLL) -> None:
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def espeak(text: str, voice: str, rate_wpm: int = 160) -> np.ndarray:
    """Float32 samples at 22,050 Hz of ``text`` in an espeak-ng voice, from a freshly loaded library.

    espeak-ng keeps synthesis state in static variables (pitch flutter phase, resonator and echo
    buffers, ...) that neither its API nor espeak_Terminate/espeak_Initialize resets, so the same
    sentence comes out differently depending on what was spoken before it. Unloading the library and
    loading it again (about 4 ms) starts every utterance from the same state: the audio depends on the
    utterance alone, not on the order, the number of processes or an earlier killed run.
    """
    lib = _load_espeak()
    try:
        chunks: list[np.ndarray] = []

        def collect(wav, num_samples, events) -> int:
            if num_samples > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0

        callback = SYNTH_CALLBACK(collect)  # referenced until the library is unloaded
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        lib.espeak_SetParameter(ESPEAK_RATE, rate_wpm, 0)
        lib.espeak_ng_SetRandSeed(0)  # the +f voices breathe noise from espeak's own generator
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
    finally:
        _unload(lib)
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def synthesize(text: str, voice: str, rate_wpm: int = 160) -> np.ndarray:
    """16 kHz float32 audio of ``text`` spoken by an espeak-ng voice."""
    wav = soxr.resample(espeak(text, voice, rate_wpm), ESPEAK_SAMPLE_RATE, SAMPLE_RATE)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    return (wav * (PEAK / peak) if peak > 0 else wav).astype(np.float32)  # klatt voices overshoot 1.0


# -- corpus layout ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path  # audio file
    words: list[str]
    voice: str
    speaker: str
    split: str
    rate_wpm: int = 160  # espeak speaking rate
    snr_db: float | None = None  # white noise added at this signal-to-noise ratio; None: clean


def write_audio(path: Path, wav: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "x.flac.tmp", not "x.tmp.flac": a run killed mid-write must not leave audio that the layout lists
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, wav, SAMPLE_RATE, subtype="PCM_16", format=path.suffix[1:].upper())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def assign(lang: str, counts: dict[str, int], voices: tuple[str, ...], seed: int) -> Iterator[tuple]:
    """(split, voice index, per-voice utterance index, words) for every utterance, deterministically."""
    pool = sentences(lang, sum(counts.values()), seed)
    start = 0
    per_voice = [0] * len(voices)
    for split in SPLITS:
        for i, words in enumerate(pool[start : start + counts[split]]):
            v = i % len(voices)
            per_voice[v] += 1
            yield split, v, per_voice[v], words
        start += counts[split]


def aishell_utterances(
    root: Path, counts: dict[str, int], seed: int, voices: tuple[str, ...]
) -> list[Utterance]:
    out = []
    for split, v, n, words in assign("cmn", counts, voices, seed):
        spk = f"S{CMN_SPEAKER_BASE + v:04d}"
        uid = f"BAC009{spk}W{n:04d}"
        path = root / "data_aishell" / "wav" / split / spk / f"{uid}.wav"
        out.append(Utterance(uid, path, words, voices[v], spk, split))
    return out


@dataclass(frozen=True)
class Perturbation:
    """Per-utterance speaking rate and noise, drawn uniformly from these ranges (a seeded draw per
    utterance id, so an utterance's audio does not depend on the others)."""

    rate_wpm: tuple[int, int] = (160, 160)
    snr_db: tuple[float, float] | None = None

    def draw(self, seed: int, uid: str) -> dict:
        rng = random.Random(f"{seed}/{uid}")
        rate = rng.randint(*self.rate_wpm)
        return {"rate_wpm": rate, "snr_db": round(rng.uniform(*self.snr_db), 2) if self.snr_db else None}


def librispeech_utterances(
    root: Path,
    counts: dict[str, int],
    seed: int,
    voices: tuple[str, ...],
    grammar: str = "en",
    perturbation: Perturbation = Perturbation(),
) -> list[Utterance]:
    out = []
    for split, v, n, words in assign(grammar, counts, voices, seed + 1):
        spk = str(EN_SPEAKER_BASE + v)
        chapter = str(100 + SPLITS.index(split))  # one chapter per speaker and split
        uid = f"{spk}-{chapter}-{n:04d}"
        path = root / "LibriSpeech" / LIBRISPEECH_SUBSETS[split] / spk / chapter / f"{uid}.flac"
        out.append(Utterance(uid, path, words, voices[v], spk, split, **perturbation.draw(seed, uid)))
    return out


def render(utt: Utterance) -> str:
    """Synthesise one utterance unless its file already exists; returns its id."""
    if not utt.path.is_file():
        # Mandarin is written without spaces; English is spoken from lower case, because espeak reads
        # short all-capital words as letter-by-letter abbreviations
        text = "".join(utt.words) if utt.voice.startswith("cmn") else " ".join(utt.words).lower()
        wav = synthesize(text, utt.voice, utt.rate_wpm)
        if utt.snr_db is not None:
            noise = np.random.default_rng(zlib.crc32(utt.id.encode())).standard_normal(len(wav))
            power = float(np.mean(wav**2)) if wav.size else 0.0
            wav = np.clip(wav + noise * math.sqrt(power / 10 ** (utt.snr_db / 10)), -1.0, 1.0).astype(
                np.float32
            )
        write_audio(utt.path, wav)
    return utt.id


def write_transcripts(root: Path, utts: list[Utterance], layout: str) -> None:
    if layout == "aishell":
        lines = "".join(f"{u.id} {' '.join(u.words)}\n" for u in sorted(utts, key=lambda u: u.id))
        write_text(root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt", lines)
        return
    chapters: dict[Path, list[Utterance]] = {}
    for u in utts:
        chapters.setdefault(u.path.parent, []).append(u)
    for chapter_dir, chapter_utts in chapters.items():
        name = f"{chapter_dir.parent.name}-{chapter_dir.name}.trans.txt"
        lines = "".join(f"{u.id} {' '.join(u.words)}\n" for u in sorted(chapter_utts, key=lambda u: u.id))
        write_text(chapter_dir / name, lines)
    speakers = sorted({(u.speaker, u.voice) for u in utts})
    table = "".join(
        f"{spk:<5}| {'F' if '+f' in voice else 'M'} | synthetic | espeak-ng {voice}\n"
        for spk, voice in speakers
    )
    write_text(root / "LibriSpeech" / "SPEAKERS.TXT", "; ID  | SEX | SUBSET | NAME\n" + table)


def synth_corpus(
    out: Path,
    counts: dict[str, int],
    seed: int = 0,
    jobs: int = 1,
    langs: tuple[str, ...] = ("cmn", "en"),
    cmn_voices: tuple[str, ...] = CMN_VOICES,
    en_voices: tuple[str, ...] = EN_VOICES,
    en_grammar: str = "en",
    en_perturbation: Perturbation = Perturbation(),
) -> dict:
    """Write both layouts under ``out``; returns {layout: number of utterances}."""
    plan = {}
    if "cmn" in langs:
        plan["aishell"] = (out / "aishell1", aishell_utterances(out / "aishell1", counts, seed, cmn_voices))
    if "en" in langs:
        root = out / "librispeech"
        utts = librispeech_utterances(root, counts, seed, en_voices, en_grammar, en_perturbation)
        plan["librispeech"] = (root, utts)
    for layout, (root, utts) in plan.items():
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                list(tqdm(pool.map(render, utts, chunksize=16), total=len(utts), desc=f"synth {layout}"))
        else:  # espeak is fast; one process avoids forking a torch-free but still large interpreter
            list(tqdm(map(render, utts), total=len(utts), desc=f"synth {layout}"))
        write_transcripts(root, utts, layout)
        if layout == "librispeech":  # for pocketsphinx in `speech-lpo score tts --grammar`
            write_text(root / GRAMMAR_FILE, jsgf_word_loop(en_grammar))
    return {layout: len(utts) for layout, (_, utts) in plan.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="corpus root (aishell1/ and librispeech/ below)"
    )
    parser.add_argument("--num-train", type=int, default=800, help="utterances per language")
    parser.add_argument("--num-dev", type=int, default=80)
    parser.add_argument("--num-test", type=int, default=80)
    parser.add_argument("--langs", nargs="+", choices=["cmn", "en"], default=["cmn", "en"])
    parser.add_argument("--cmn-voices", nargs="+", default=list(CMN_VOICES), help="one speaker each")
    parser.add_argument("--en-voices", nargs="+", default=list(EN_VOICES), help="one speaker each")
    parser.add_argument(
        "--en-grammar", choices=["en", "en_large"], default="en", help="en_large: the harder English task"
    )
    parser.add_argument(
        "--en-rate",
        type=int,
        nargs=2,
        default=[160, 160],
        metavar=("MIN", "MAX"),
        help="English speaking rate in words per minute, drawn per utterance",
    )
    parser.add_argument(
        "--en-snr-db",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="white noise on the English audio at an SNR drawn per utterance (default: clean)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="synthesis processes")


def main(args: argparse.Namespace) -> None:
    counts = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    written = synth_corpus(
        args.out,
        counts,
        seed=args.seed,
        jobs=args.jobs,
        langs=tuple(args.langs),
        cmn_voices=tuple(args.cmn_voices),
        en_voices=tuple(args.en_voices),
        en_grammar=args.en_grammar,
        en_perturbation=Perturbation(tuple(args.en_rate), tuple(args.en_snr_db) if args.en_snr_db else None),
    )
    for layout, n in written.items():
        print(f"{layout}: {n} utterances under {args.out}")
