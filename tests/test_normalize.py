"""Normalisers on the real AISHELL-1 and LibriSpeech transcripts in ../shared/data."""

from pathlib import Path

import opencc
import pytest

from speech_lpo.normalize import get_normalizer

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
AISHELL_TRANSCRIPT = DATA / "aishell1" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
LIBRISPEECH = DATA / "librispeech" / "LibriSpeech"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real corpus samples not found at {DATA}")


def librispeech_texts() -> dict[str, str]:
    lines = [
        line for f in sorted(LIBRISPEECH.glob("*/*/*/*.trans.txt")) for line in f.read_text().splitlines()
    ]
    return dict(line.split(maxsplit=1) for line in lines)


def aishell_texts() -> dict[str, str]:
    return dict(
        line.split(maxsplit=1) for line in AISHELL_TRANSCRIPT.read_text(encoding="utf-8").splitlines()
    )


def test_librispeech_transcripts_are_already_in_their_own_convention():
    texts = librispeech_texts()
    assert len(texts) == 11
    norm = get_normalizer("librispeech")
    for text in texts.values():
        assert norm.normalize(text) == text


def test_librispeech_normaliser_undoes_case_and_punctuation():
    norm = get_normalizer("librispeech")
    texts = librispeech_texts()
    assert (
        norm.normalize("Nor is Mister Quilter\u2019s manner less interesting than his matter.")
        == (texts["1272-128104-0001"])
    )
    assert norm.normalize('"Stuff it into you," his belly counselled him!') == texts["1089-134686-0001"]
    assert norm.normalize("well-known 'tis 1,000 -- A/B") == "WELL KNOWN TIS 1000 A B"
    assert norm.units(texts["1089-134691-0000"]) == ["HE", "COULD", "WAIT", "NO", "LONGER"]


def test_whisper_english_normaliser_expands_what_pocketsphinx_abbreviates():
    norm = get_normalizer("whisper_en")
    texts = librispeech_texts()
    ref = norm.normalize(texts["1272-128104-0000"])
    assert ref == "mister quilter is the apostle of the middle classes and we are glad to welcome his gospel"
    # pocketsphinx writes "mr" and contractions; Whisper's normaliser maps both sides to one form
    assert (
        norm.normalize(
            "Mr. Quilter is the apostle of the middle classes and we're glad to welcome his gospel"
        )
        == ref
    )
    assert norm.normalize("um, he could wait no longer") == "he could wait no longer"


def test_chinese_transcripts_are_unchanged_and_characters_are_units():
    norm = get_normalizer("chinese")
    texts = aishell_texts()
    assert len(texts) == 9
    for text in texts.values():
        assert norm.normalize(text) == text
        assert norm.units(text) == list(text)
    assert norm.metric == "CER"


def test_chinese_normaliser_undoes_segmentation_punctuation_traditional_and_full_width():
    norm = get_normalizer("chinese")
    texts = aishell_texts()
    to_traditional = opencc.OpenCC("s2t")
    original = texts["BAC009S0764W0121"]  # 甚至出现交易几乎停滞的情况
    # the release's own word-segmented form, as FireRedASR ships it
    assert norm.normalize("甚至 出现 交易 几乎 停滞 的 情况") == original
    assert norm.normalize("「" + to_traditional.convert(original) + "」。") == original
    for text in texts.values():
        assert norm.normalize(to_traditional.convert(text) + "，！？") == text
    assert norm.normalize("总估值已过１２亿元，ＣＥＯ说：ok") == "总估值已过十二亿元CEO说OK"


def test_chinese_numerals_are_written_as_aishell_writes_them(tmp_path):
    """Whisper or Paraformer write digits where AISHELL-1 writes characters; both sides read alike."""
    from speech_lpo.score import score_asr

    norm = get_normalizer("chinese")
    assert norm.normalize("2015年") == norm.normalize("二零一五年") == "二零一五年"
    assert norm.normalize("有123个人，占50%，共3.5亿") == "有一百二十三个人占百分之五十共三点五亿"
    texts = aishell_texts()
    hyps = {
        "BAC009S0002W0124": "自6月底呼和浩特市率先宣布取消限购后",
        "BAC009S0764W0122": "1、2线城市虽然也处于调整中",
    }
    for uttid, hyp in hyps.items():
        assert norm.normalize(hyp) == texts[uttid]
    (tmp_path / "ref").write_text("".join(f"{k} {texts[k]}\n" for k in hyps), encoding="utf-8")
    (tmp_path / "hyp").write_text("".join(f"{k} {v}\n" for k, v in hyps.items()), encoding="utf-8")
    summ = score_asr(tmp_path / "ref", tmp_path / "hyp", norm, tmp_path / "out", "digits")
    assert summ["errors"] == 0 and summ["ref_units"] == sum(len(texts[k]) for k in hyps)


def seedtts_eval_wer(hypo: str, truth: str, lang: str) -> float:
    """seed-tts-eval's run_wer.py (BytedanceSpeech/seed-tts-eval): zhconv on the Mandarin hypothesis, then
    its process_one, line for line, with jiwer's word measures (its compute_measures is process_words now)."""
    import string

    import jiwer
    import zhconv
    from zhon.hanzi import punctuation

    if lang == "zh":
        hypo = zhconv.convert(hypo, "zh-cn")
    for x in punctuation + string.punctuation:
        if x == "'":
            continue
        truth = truth.replace(x, "")
        hypo = hypo.replace(x, "")
    truth = truth.replace("  ", " ")
    hypo = hypo.replace("  ", " ")
    if lang == "zh":
        truth = " ".join([x for x in truth])
        hypo = " ".join([x for x in hypo])
    else:
        truth = truth.lower()
        hypo = hypo.lower()
    return jiwer.process_words(truth, hypo).wer


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_seedtts_normalisers_score_as_seed_tts_eval_does(lang):
    """The seedtts_* normaliser and character/word units give seed-tts-eval's per-utterance WER/CER on real
    transcripts against hypotheses in the forms ASRs write (case, punctuation, contractions, hyphens,
    Whisper's digits; traditional characters, full-width punctuation)."""
    import jiwer
    import zhconv

    norm = get_normalizer(f"seedtts_{lang}")
    if lang == "en":
        refs = librispeech_texts()
        hyps = {
            "1272-128104-0001": "Nor is Mr. Quilter's manner less interesting than his matter.",
            "1089-134686-0001": '"Stuff it into you," his belly counselled him!',
            "1089-134691-0000": "He couldn't wait - no longer...",
            "8266-258262-0000": "When it was the 673rd night, she pursued: it had reached me, O King",
        }
        # what Whisper's normaliser would forgive counts here, as there
        assert norm.units("Smith's twenty-five") == ["smith's", "twentyfive"]
    else:
        refs = aishell_texts()
        to_traditional = opencc.OpenCC("s2t")
        hyps = {k: to_traditional.convert(v)[:-1] + "，好。" for k, v in list(refs.items())[:4]}
        assert norm.normalize("「測試」， A b") == zhconv.convert("測試", "zh-cn") + "Ab"
    for k, hyp in hyps.items():
        ref_units, hyp_units = norm.units(refs[k]), norm.units(hyp)
        ours = jiwer.process_words(" ".join(ref_units), " ".join(hyp_units)).wer
        assert ours == pytest.approx(seedtts_eval_wer(hyp, refs[k], lang)), k
    assert any(seedtts_eval_wer(h, refs[k], lang) > 0 for k, h in hyps.items())


def test_unknown_normaliser_is_named():
    with pytest.raises(ValueError, match="unknown normaliser 'klingon'"):
        get_normalizer("klingon")
