"""``speech-lpo score``: ``asr`` (WER/CER reports), ``tts`` (automatic TTS metrics), ``transcribe`` (an
outside ASR's hypotheses, e.g. the bundled Whisper tiny.en, for ``asr``), ``table`` (RESULTS.md).

The command sits on top of its three modules so that they import one way only: ``results`` and
``tts_metrics`` use ``score`` (and ``stats``); ``score`` uses neither.
"""

from __future__ import annotations

import argparse

from speech_lpo import results, score, tts_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = score.add_arguments(parser)
    tts_metrics.add_arguments(sub.add_parser("tts", help=tts_metrics.__doc__.splitlines()[0]))
    tts_metrics.add_transcribe_arguments(
        sub.add_parser("transcribe", help="an outside ASR's transcripts of a manifest's audio, as Kaldi text")
    )
    results.add_arguments(sub.add_parser("table", help=results.__doc__.splitlines()[0]))


def main(args: argparse.Namespace) -> None:
    args.run(args)
