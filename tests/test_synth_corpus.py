"""synth-corpus: the grammar, espeak-ng through ctypes, both release layouts, determinism, resumption."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from speech_lpo.synth_corpus import (
    CMN_VOICES,
    EN_VOICES,
    GRAMMARS,
    sentences,
    synth_corpus,
    synthesize,
    vocabulary,
)
from tests.fixtures_corpus import MINI_COUNTS

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures


@pytest.mark.parametrize("lang", sorted(GRAMMARS))
def test_sentences_are_short_distinct_bounded_and_seeded(lang):
    a = sentences(lang, 300, seed=1)
    assert a == sentences(lang, 300, seed=1)
    assert a != sentences(lang, 300, seed=2)
    assert len({tuple(s) for s in a}) == 300
    assert all(3 <= len(s) <= (12 if lang == "en_large" else 8) for s in a)
    assert {w for s in a for w in s} <= vocabulary(lang)
    assert len(vocabulary(lang)) < (200 if lang == "en_large" else 100)


def test_grammar_refuses_more_sentences_than_it_has():
    with pytest.raises(ValueError, match="distinct sentences"):
        sentences("cmn", 10**6, seed=0)


def test_espeak_16k_voiced_and_voices_differ():
    a = synthesize("the red dog saw the cat", "en-us+f2")
    assert 0.8 < len(a) / 16000 < 3.0 and 0.5 < np.abs(a).max() <= 0.9 + 1e-6
    b = synthesize("the red dog saw the cat", "en-us+klatt4")
    assert not np.array_equal(a[: len(b)], b[: len(a)])  # another voice is another speaker
    c = synthesize("小明看见两个苹果", "cmn")
    assert 1.0 < len(c) / 16000 < 4.0
    with pytest.raises(ValueError, match="no voice"):
        synthesize("hello", "xx-nonexistent")


def test_layouts_counts_and_transcripts(mini_corpus):
    aishell = mini_corpus / "aishell1" / "data_aishell"
    transcript = (
        (aishell / "transcript" / "aishell_transcript_v0.8.txt").read_text(encoding="utf-8").splitlines()
    )
    texts = dict(line.split(" ", 1) for line in transcript)
    for split, n in MINI_COUNTS.items():
        wavs = sorted((aishell / "wav" / split).glob("S*/BAC009S*W*.wav"))
        assert len(wavs) == n
        assert all(w.stem in texts and w.parent.name == w.stem[6:11] for w in wavs)
    assert len(texts) == sum(MINI_COUNTS.values())
    speakers = {w.parent.name for w in (aishell / "wav").rglob("*.wav")}
    assert len(speakers) == len(CMN_VOICES)

    libri = mini_corpus / "librispeech" / "LibriSpeech"
    subsets = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
    for split, n in MINI_COUNTS.items():
        flacs = sorted((libri / subsets[split]).glob("*/*/*.flac"))
        assert len(flacs) == n
        for trans in (libri / subsets[split]).glob("*/*/*.trans.txt"):
            for line in trans.read_text().splitlines():
                uid, text = line.split(" ", 1)
                assert text == text.upper() and (trans.parent / f"{uid}.flac").is_file()
                assert uid.startswith(f"{trans.parent.parent.name}-{trans.parent.name}-")
    assert len((libri / "SPEAKERS.TXT").read_text().splitlines()) == 1 + len(EN_VOICES)
    info = sf.info(str(next(libri.rglob("*.flac"))))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


def test_no_test_sentence_is_in_training(mini_corpus):
    trans = (mini_corpus / "librispeech" / "LibriSpeech").rglob("*.trans.txt")
    by_split: dict[str, set[str]] = {}
    for t in trans:
        split = t.relative_to(mini_corpus / "librispeech" / "LibriSpeech").parts[0].split("-")[0]
        by_split.setdefault(split, set()).update(line.split(" ", 1)[1] for line in t.read_text().splitlines())
    assert not by_split["test"] & by_split["train"] and not by_split["dev"] & by_split["train"]


def cli(out, *extra) -> list[str]:
    cmd = [sys.executable, "-m", "speech_lpo.cli", "synth-corpus", "--out", str(out), "--langs", "en", "cmn"]
    return cmd + ["--num-train", "3", "--num-dev", "1", "--num-test", "1", "--seed", "5", *extra]


def run_cli(out, *extra):
    subprocess.run(cli(out, *extra), check=True, capture_output=True)


def tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def checksums(root) -> dict:
    return {path: hashlib.sha256(data).hexdigest() for path, data in tree(root).items()}


def test_fresh_runs_with_one_seed_are_byte_identical(tmp_path):
    run_cli(tmp_path / "a")
    run_cli(tmp_path / "b")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert list(a) == list(b) and a == b
    run_cli(tmp_path / "c", "--seed", "6")
    assert tree(tmp_path / "c") != a


def test_same_bytes_for_any_jobs_and_after_kill_and_resume(tmp_path):
    """Every file of the corpus has the same checksum with one process, with two, and when a run is
    SIGKILLed part-way and resumed (espeak-ng restarts from the same state for every utterance)."""
    size = ("--num-train", "120", "--num-dev", "10", "--num-test", "10")
    run_cli(tmp_path / "one", *size, "--jobs", "1")
    reference = checksums(tmp_path / "one")
    assert sum(p.suffix in (".wav", ".flac") for p in reference) == 2 * 140
    run_cli(tmp_path / "two", *size, "--jobs", "2")
    assert checksums(tmp_path / "two") == reference

    killed = tmp_path / "killed"
    devnull = subprocess.DEVNULL
    proc = subprocess.Popen(
        cli(killed, *size, "--jobs", "2"), stdout=devnull, stderr=devnull, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while len(list(killed.rglob("*.wav"))) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the synthesis workers too: no clean-up, possibly mid-file
    proc.wait()
    written = list(killed.rglob("*.wav")) + list(killed.rglob("*.flac"))
    assert 0 < len(written) < 2 * 140, "the run should have been killed part-way"
    run_cli(killed, *size, "--jobs", "1")
    assert checksums(killed) == reference


def test_rerun_fills_only_missing_files(tmp_path):
    counts = {"train": 3, "dev": 1, "test": 1}
    synth_corpus(tmp_path, counts, seed=5, langs=("en",))
    flacs = sorted(tmp_path.rglob("*.flac"))
    stamp = flacs[0].stat().st_mtime_ns
    missing = flacs[1].read_bytes()
    flacs[1].unlink()  # as if killed before this file was written
    synth_corpus(tmp_path, counts, seed=5, langs=("en",))
    assert flacs[0].stat().st_mtime_ns == stamp
    assert flacs[1].read_bytes() == missing  # the same bytes again, though spoken after other files


def test_word_loop_grammar_is_written_and_restricts_pocketsphinx(mini_corpus, tmp_path):
    """The English corpus carries its word-loop grammar; pocketsphinx restricted to it hears only corpus
    words and misses far fewer of them than with its general language model, and transcripts cached
    under one ASR are not reused under the other."""
    import jiwer

    from speech_lpo.prepare import librispeech_candidates
    from speech_lpo.synth_corpus import GRAMMAR_FILE, jsgf_word_loop
    from speech_lpo.tts_metrics import make_asr, transcribe_files

    root = mini_corpus / "librispeech"
    grammar = (root / GRAMMAR_FILE).read_text()
    assert grammar == jsgf_word_loop("en")
    utts = librispeech_candidates(root, ["train-clean-100"])
    texts, wavs = {u.id: u.text for u in utts}, {u.id: str(u.audio) for u in utts}
    cache = tmp_path / "asr.jsonl"
    general, _ = transcribe_files(wavs, make_asr("pocketsphinx", "en"), cache, asr_name="pocketsphinx")
    restricted, _ = transcribe_files(wavs, make_asr("pocketsphinx", "en", grammar), cache, asr_name="loop")
    assert {w for h in restricted.values() for w in h.upper().split()} <= vocabulary("en")
    ids = sorted(texts)
    wer_general = jiwer.wer([texts[k] for k in ids], [general[k].upper() for k in ids])
    wer_restricted = jiwer.wer([texts[k] for k in ids], [restricted[k].upper() for k in ids])
    print(f"pocketsphinx WER: {wer_general:.2f} general LM, {wer_restricted:.2f} word loop")
    assert wer_restricted < 0.6 < wer_general
    assert len(cache.read_text().splitlines()) == 2 * len(ids)  # the second ASR transcribed everything


def test_harder_english_task_is_perturbed_per_utterance_and_reproducible(tmp_path):
    """en_large with speaking rates and noise drawn per utterance: more words, varied durations, noise in
    the pauses, the same bytes with one or two processes."""
    from speech_lpo.synth_corpus import Perturbation

    counts = {"train": 30, "dev": 0, "test": 6}
    hard = Perturbation(rate_wpm=(120, 220), snr_db=(10.0, 20.0))
    for out, jobs in (("a", 1), ("b", 2)):
        synth_corpus(
            tmp_path / out,
            counts,
            seed=3,
            jobs=jobs,
            langs=("en",),
            en_grammar="en_large",
            en_perturbation=hard,
        )
    assert checksums(tmp_path / "a") == checksums(tmp_path / "b")
    words = {
        w
        for t in (tmp_path / "a").rglob("*.trans.txt")
        for line in t.read_text().splitlines()
        for w in line.split()[1:]
    }
    assert words <= vocabulary("en_large") and not words <= vocabulary("en")
    grammar = (tmp_path / "a" / "librispeech" / "corpus_words.jsgf").read_text()
    assert " horse " in grammar or "| horse |" in grammar
    flacs = sorted((tmp_path / "a").rglob("*.flac"))
    n_words = {
        line.split()[0]: len(line.split()) - 1
        for t in (tmp_path / "a").rglob("*.trans.txt")
        for line in t.read_text().splitlines()
    }
    rates = [len(sf.read(f)[0]) / n_words[f.stem] for f in flacs]  # samples per word
    assert max(rates) / min(rates) > 1.3  # speaking rates differ
    wav, _ = sf.read(flacs[0])
    assert np.abs(wav[:40]).mean() > 1e-3  # the first samples, silent in clean audio, carry noise
    synth_corpus(tmp_path / "clean", counts, seed=3, langs=("en",), en_grammar="en_large")
    clean, _ = sf.read(sorted((tmp_path / "clean").rglob("*.flac"))[0])
    assert np.abs(clean[:40]).max() == 0.0
