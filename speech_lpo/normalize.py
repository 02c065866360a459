"""Text normalisers for scoring: one named normaliser applied to reference and hypothesis alike.

Each normaliser also fixes the unit of the error rate (words for English, characters for Chinese), so a
report that names its normaliser says exactly how its numbers were counted.

- ``librispeech``: the LibriSpeech transcript convention: upper case, no punctuation except apostrophes
  inside words (those at word edges are dropped, from both sides alike), hyphens split words, numbers
  left as written.
- ``whisper_en``: Whisper's English normaliser as transformers ships it (lower case, contractions and
  numbers standardised, filler words dropped). Its British-to-American spelling map comes with Whisper
  checkpoints (normalizer.json), not with transformers, so it is applied with an empty map here.
- ``chinese``: full-width to half-width (NFKC), traditional to simplified (OpenCC ``t2s``), Arabic
  numerals written in Chinese characters as AISHELL-1's transcripts write them (cn2an's ``an2cn``:
  "2015年" -> "二零一五年", "123个" -> "一百二十三个", "50%" -> "百分之五十"), punctuation and spaces
  removed, Latin letters upper-cased; characters are the units. A digit string with no reading in
  context (a phone number) is read as a number, which may differ from how it was spoken.
- ``seedtts_en`` / ``seedtts_zh``: seed-tts-eval's ``run_wer.py`` exactly: every character of Python's
  ``string.punctuation`` and zhon's Chinese punctuation deleted (not replaced by a space: "twenty-five" is
  one word, "twentyfive") except the apostrophe; English lower-cased, words as units; Mandarin converted
  to simplified with zhconv (``zh-cn``) and scored in characters, whitespace dropped. seed-tts-eval
  converts only the hypothesis; here reference and hypothesis alike, which leaves its (simplified)
  references as they are.
- ``none``: whitespace split only, for inputs that are already normalised.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial


@dataclass(frozen=True)
class Normalizer:
    name: str
    normalize: Callable[[str], str]
    unit: str  # "word" or "char"

    @property
    def metric(self) -> str:
        return "WER" if self.unit == "word" else "CER"

    def units(self, text: str) -> list[str]:
        """Normalised text as the units the error rate counts."""
        text = self.normalize(text)
        return list(text) if self.unit == "char" else text.split()


def _is_punctuation_or_symbol(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def normalize_librispeech(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).upper().replace("\u2019", "'")
    text = re.sub(r"(\d),(\d)", r"\1\2", text)  # 1,000 is one number
    text = re.sub(r"[-\u2010-\u2015/]", " ", text)  # hyphens and slashes separate words
    text = "".join(" " if _is_punctuation_or_symbol(c) and c != "'" else c for c in text)
    # apostrophes stay inside words (QUILTER'S); at word edges they are quote marks as often as not
    return " ".join(w for w in (w.strip("'") for w in text.split()) if w)


@cache
def _whisper_english():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize_whisper_english(text: str) -> str:
    return _whisper_english()(text).strip()


@cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


@cache
def _an2cn():
    import cn2an

    return partial(cn2an.transform, method="an2cn")


def normalize_chinese(text: str) -> str:
    text = _t2s().convert(unicodedata.normalize("NFKC", text))
    if any(c.isascii() and c.isdigit() for c in text):  # before punctuation goes: "3.5", "50%" read whole
        text = _an2cn()(text)
    return "".join(c for c in text.upper() if not c.isspace() and not _is_punctuation_or_symbol(c))


@cache
def _seedtts_punctuation() -> re.Pattern:
    import string

    from zhon.hanzi import punctuation

    return re.compile("[" + re.escape("".join(set(punctuation + string.punctuation) - {"'"})) + "]")


def normalize_seedtts_en(text: str) -> str:
    return " ".join(_seedtts_punctuation().sub("", text).lower().split())


def normalize_seedtts_zh(text: str) -> str:
    import zhconv

    return "".join(zhconv.convert(_seedtts_punctuation().sub("", text), "zh-cn").split())


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


NORMALIZERS: dict[str, Normalizer] = {
    n.name: n
    for n in (
        Normalizer("librispeech", normalize_librispeech, "word"),
        Normalizer("whisper_en", normalize_whisper_english, "word"),
        Normalizer("chinese", normalize_chinese, "char"),
        Normalizer("seedtts_en", normalize_seedtts_en, "word"),
        Normalizer("seedtts_zh", normalize_seedtts_zh, "char"),
        Normalizer("none", normalize_whitespace, "word"),
    )
}


def get_normalizer(name: str) -> Normalizer:
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normaliser {name!r}; choose one of {sorted(NORMALIZERS)}")
    return NORMALIZERS[name]
