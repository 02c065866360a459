"""Transcript perturbation on the real AISHELL-1 and LibriSpeech transcripts in ../shared/data.

The realised noise ratio is measured with kaldialign's edit distance, not with the counts perturb()
reports about itself.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from kaldialign import edit_distance

from speech_lpo.perturb import OPERATORS, parse_mix, perturb, split_units, utterance_rng

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
AISHELL_TEXT = DATA / "aishell1" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
LIBRISPEECH = DATA / "librispeech" / "LibriSpeech"


def read_corpus() -> list[tuple[str, str, str]]:
    """(id, text, lang) for every transcript of both corpora."""
    if not AISHELL_TEXT.is_file() or not LIBRISPEECH.is_dir():
        pytest.skip(f"real corpora not found under {DATA} (see shared/data/SOURCES.md)")
    lines = [(line, "zh") for line in AISHELL_TEXT.read_text(encoding="utf-8").splitlines()]
    for trans in sorted(LIBRISPEECH.glob("*/*/*/*.trans.txt")):
        lines += [(line, "en") for line in trans.read_text(encoding="utf-8").splitlines()]
    corpus = []
    for line, lang in lines:
        utt, text = line.split(maxsplit=1)
        corpus.append((utt, text.strip(), lang))
    return corpus


def vocabularies(corpus):
    units: dict[str, set[str]] = {}
    for _, text, lang in corpus:
        units.setdefault(lang, set()).update(split_units(text, lang))
    return {lang: sorted(u) for lang, u in units.items()}


@pytest.mark.parametrize("eta", [0.1, 0.2])
def test_realised_noise_ratio_is_eta_and_every_operator_occurs(eta):
    corpus = read_corpus()
    vocab = vocabularies(corpus)
    edits, units, operators = Counter(), Counter(), Counter()
    for draw in range(40):  # 40 corruptions of each of the ~20 transcripts
        for utt, text, lang in corpus:
            p = perturb(text, lang, utterance_rng(7, utt, draw), eta=eta, vocab=vocab[lang])
            ref, hyp = split_units(text, lang), split_units(p.text, lang)
            edits[lang] += edit_distance(ref, hyp)["total"]
            units[lang] += len(ref)
            operators.update(p.operators)
            assert p.text != text
    for lang in ("zh", "en"):
        assert abs(edits[lang] / units[lang] - eta) <= 0.02, (lang, edits[lang] / units[lang])
    assert set(operators) == set(OPERATORS) and min(operators.values()) > 0.2 * sum(operators.values()) / 3


def test_chinese_perturbs_characters_and_english_words():
    corpus = read_corpus()
    zh = next(t for _, t, lang in corpus if lang == "zh")
    en = next(t for _, t, lang in corpus if lang == "en")
    for draw in range(20):
        # deletion only: the output is the input with whole units removed, so it shows what a unit is
        p = perturb(zh, "zh", utterance_rng(0, "zh", draw), eta=0.2, mix=parse_mix("deletion=1"))
        assert " " not in p.text and len(p.text) == len(zh) - p.n_edits
        p = perturb(en, "en", utterance_rng(0, "en", draw), eta=0.2, mix=parse_mix("deletion=1"))
        words = p.text.split()
        assert len(words) == len(en.split()) - p.n_edits and set(words) <= set(en.split())
    # repetition doubles a whole English word in place
    p = perturb("HELLO THERE WORLD", "en", utterance_rng(0, "r", 0), eta=0.1, mix=parse_mix("repetition=1"))
    assert p.text in {"HELLO HELLO THERE WORLD", "HELLO THERE THERE WORLD", "HELLO THERE WORLD WORLD"}


def test_seeded_per_utterance_and_mix_is_respected():
    corpus = read_corpus()
    vocab = vocabularies(corpus)
    runs = [
        [perturb(t, lang, utterance_rng(3, u, 0), vocab=vocab[lang]).text for u, t, lang in order]
        for order in (corpus, corpus[::-1])
    ]
    assert runs[0] == runs[1][::-1]  # the same utterance gets the same corruption whatever the order
    ops = Counter()
    for draw in range(10):
        for u, t, lang in corpus:
            ops.update(
                perturb(t, lang, utterance_rng(1, u, draw), mix=parse_mix("insertion=1,deletion=0")).operators
            )
    assert set(ops) == {"insertion"}


def test_no_output_equals_its_input_even_for_tiny_texts():
    for text, lang in [("A", "en"), ("好", "zh"), ("A A", "en"), ("好好", "zh"), ("A B", "en")]:
        for draw in range(50):
            p = perturb(text, lang, utterance_rng(0, text, draw), eta=0.5)
            assert p.text and p.text != text


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="empty transcript"):
        perturb("  ", "en", utterance_rng(0, "x"))
    with pytest.raises(ValueError, match="bad operator mix"):
        parse_mix("insertion=1,swap=1")
    with pytest.raises(ValueError, match="not all 0"):
        parse_mix("deletion=0")
    with pytest.raises(ValueError, match="no non-empty perturbation"):
        perturb("A", "en", utterance_rng(0, "x"), mix=parse_mix("deletion=1"))
