"""Transcript perturbation on the real AISHELL-1 and LibriSpeech transcripts in ../shared/data.

The realised noise ratio is measured with kaldialign's edit distance, not with the counts perturb()
reports about itself.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from kaldialign import edit_distance

from speech_lpo.perturb import DEFAULT_MIX, confusable_units, parse_mix, perturb, split_units, utterance_rng

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
    # the paper's three operators, substitution only on request
    assert set(operators) == set(DEFAULT_MIX) and min(operators.values()) > 0.2 * sum(operators.values()) / 3


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


def test_substitution_replaces_a_character_by_a_homophone_of_the_corpus():
    vocab = sorted(set("小明画了花在商店上学校看书两个漂亮"))
    confusable = confusable_units(vocab, "zh")
    assert confusable["花"] == ["画"] and confusable["画"] == ["花"] and confusable["上"] == ["商"]
    assert "明" not in confusable and confusable_units(["SEE", "SEA"], "en") == {}
    mix = parse_mix("substitution=1")
    for draw in range(20):
        p = perturb(
            "小明画了花",
            "zh",
            utterance_rng(0, "s", draw),
            eta=1.0,
            mix=mix,
            vocab=vocab,
            confusable=confusable,
        )
        assert p.operators == {"substitution": 5} and len(p.text) == 5
        assert (
            p.text[2] == "花" and p.text[4] == "画"
        )  # every character substituted: homophones where there are
        assert all(a != b and b in vocab for a, b in zip("小明画了花", p.text, strict=True))
