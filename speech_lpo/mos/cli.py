"""MOS listening test: serve the rating panel, invite raters, export ratings, report MOS with 95% intervals.

A test is a YAML definition (eval/mos_tts.yaml shows every key and the commands in order: invite,
serve, report); ratings go to one SQLite file given with --db.

The admin page (progress, CSV export, releasing an invitation from its browser) is at
/admin?token=ADMIN_TOKEN: `serve` prints that link when it starts; the token is made once per database
and kept in it (also: `sqlite3 DB "SELECT value FROM meta WHERE key = 'admin_token'"`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from speech_lpo.mos.definition import DefinitionError, load_definition
from speech_lpo.mos.store import Refused, Store

TEMPLATE = Path(__file__).resolve().parents[2] / "eval" / "mos_tts.yaml"  # the repo's, from any directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mos_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.add_argument("--definition", type=Path, required=True, help="test definition YAML (eval/*.yaml)")
        p.add_argument("--db", type=Path, required=True, help="SQLite ratings file (made if missing)")
        return p

    p = command(
        "serve",
        "run the rating panel and the admin page; prints the admin link "
        "(/admin?token=..., the token is kept in the database)",
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines in")
    p.add_argument("--port", type=int, default=7860)
    p = command("invite", "make invitation codes and print one link per rater, or release one")
    p.add_argument("-n", type=int, default=1, help="how many invitations (1 or more)")
    p.add_argument("--days", type=float, default=30.0, help="days until they expire (0: never; not negative)")
    p.add_argument(
        "--release",
        metavar="CODE",
        help="free this invitation from the browser that holds it, so the rater can go on in another one",
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:7860/", help="the panel's public address, for the links"
    )
    p = command(
        "report",
        "screen raters (each exclusion named); MOS table (Markdown) with 0.95 bootstrap intervals over "
        "raters and utterances, system differences, CMOS tests against 0, bar chart, JSON summary, "
        "per-clip votes",
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p = command("export", "all ratings as CSV, with order position, A/B flip, worker id and verdict")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("anchor", help="write a degraded anchor (3.5 kHz low-pass + noise at 5 dB SNR)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p = sub.add_parser(
        "trap", help="write a trapping question: a real test sample, then a voice asking for one answer"
    )
    p.add_argument("output", type=Path)
    p.add_argument("--carrier", type=Path, required=True, help="a sample of the test the message follows")
    p.add_argument("--answer", required=True, help='the answer the voice asks for, e.g. "2 Poor"')
    p = sub.add_parser(
        "headphone-check",
        help="write an antiphase headphone check (three tones) and print its qualification question",
    )
    p.add_argument("output", type=Path)
    p.add_argument(
        "--quiet", type=int, choices=[1, 2, 3], required=True, help="the tone 6 dB down: the answer"
    )
    p.add_argument("--antiphase", type=int, choices=[1, 2, 3], required=True, help="the tone in antiphase")
    p.add_argument("--sample-rate", type=int, default=16000)
    p = sub.add_parser("package", help="a listening test from `speech-lpo synthesize` outputs")
    p.add_argument("--systems", nargs="+", required=True, metavar="NAME=SYNTH_DIR")
    p.add_argument("--manifest", type=Path, required=True, help="test manifest: the reference recordings")
    p.add_argument("--template", type=Path, default=TEMPLATE, help="test definition to adapt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-n", type=int, default=8, help="utterances in the test, drawn at random")
    p.add_argument("--seed", type=int, default=0, help="seeds the draw of utterances")


def main(args: argparse.Namespace) -> None:
    if args.mos_command == "anchor":
        import soundfile as sf

        from speech_lpo.mos.anchor import degrade

        audio, sr = sf.read(args.input, dtype="float32", always_2d=False)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        sf.write(args.output, degrade(audio, sr), sr)
        return
    if args.mos_command == "trap":
        import soundfile as sf

        from speech_lpo.mos.trap import spliced_trap

        carrier, sr = sf.read(args.carrier, dtype="float32", always_2d=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        sf.write(args.output, spliced_trap(carrier.mean(axis=1), sr, args.answer), sr)
        return
    if args.mos_command == "headphone-check":
        import soundfile as sf
        import yaml

        from speech_lpo.mos.headphones import CHOICES, antiphase_trial

        try:
            audio = antiphase_trial(args.quiet - 1, args.antiphase - 1, args.sample_rate)
        except ValueError as e:
            sys.exit(f"error: {e}")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        sf.write(args.output, audio, args.sample_rate)
        question = {
            "audio": str(args.output),
            "question": "Which of the three tones was the quietest?",
            "choices": CHOICES,
            "answer": CHOICES[args.quiet - 1],
        }
        print("# add under the definition (audio relative to its root):")
        print(yaml.safe_dump({"qualification": [question]}, sort_keys=False), end="")
        return
    if args.mos_command == "package":
        from speech_lpo.mos.package import build_package

        systems = dict(s.split("=", 1) for s in args.systems)
        try:
            definition, utts, failed = build_package(
                {k: Path(v) for k, v in systems.items()},
                args.manifest,
                args.template,
                args.out,
                args.n,
                args.seed,
            )
        except (DefinitionError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(
            f"{len(utts)} utterances x {len(systems)} systems, levelled to -26 dBov; {len(failed)} failed "
            f"syntheses served as silence{': ' + ', '.join(failed) if failed else ''}; serve with: "
            f"speech-lpo mos serve --definition {definition} --db {args.out / 'ratings.sqlite'}"
        )
        return
    try:
        defn = load_definition(args.definition)
        store = Store(args.db, defn)
    except (DefinitionError, Refused) as e:
        sys.exit(f"error: {e}")
    if args.mos_command == "serve":
        from speech_lpo.mos.app import serve  # gradio is slow to import; only serve needs it

        serve(store, defn, args.host, args.port)
    elif args.mos_command == "invite":
        if args.release:
            if not store.release(args.release):
                sys.exit(f"error: no invitation {args.release!r} in {args.db}")
            print(f"released {args.release}: the next browser that enters with it takes it")
            return
        if args.n < 1:
            sys.exit(f"error: -n must be 1 or more, got {args.n}")
        if args.days < 0:
            sys.exit(f"error: --days must be 0 (never expires) or more, got {args.days:g}")
        expires = time.time() + args.days * 86400 if args.days > 0 else None
        for token in store.invite(args.n, expires):
            print(f"{args.url.rstrip('/')}/?token={token}")
    elif args.mos_command == "report":
        from speech_lpo.mos.report import write_report

        table, _ = write_report(defn, store.ratings(), args.out_dir)
        print(table, end="")
        print(f"wrote {args.out_dir}/mos_table.md, mos_bars.png, mos_summary.json")
    elif args.mos_command == "export":
        tmp = args.out.with_name(args.out.name + ".tmp")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(store.ratings_csv(), encoding="utf-8")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
