"""`speech-lpo <stage>`: one subcommand per pipeline stage (DESIGN.md, What flows through it).

Each stage module has a docstring (its first line is the help text), ``add_arguments(parser)`` and
``main(args)``. Only the chosen stage's module is imported, so ``speech-lpo score`` does not pay for
importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# stage name -> module; keep in pipeline order (it is the order `speech-lpo --help` shows)
STAGES: dict[str, str] = {
    "synth-corpus": "speech_lpo.synth_corpus",
    "prepare": "speech_lpo.prepare",
    "tokenize": "speech_lpo.tokenize_audio",
    "build-model": "speech_lpo.build_model",
    "sft": "speech_lpo.sft",
    "generate": "speech_lpo.generate",
    "make-pairs": "speech_lpo.make_pairs",
    "ref-logps": "speech_lpo.ref_logps",
    "train": "speech_lpo.train",
    "select-lr": "speech_lpo.select_lr",
    "decode": "speech_lpo.decode",
    "synthesize": "speech_lpo.synthesize",
    "score": "speech_lpo.score_command",
    "mos": "speech_lpo.mos.cli",
    "plot": "speech_lpo.plot",
    "demo": "speech_lpo.demo",
}


def _add_spelling_aliases(parser: argparse.ArgumentParser) -> None:
    """Accept ``--foo_bar`` and ``--foo-bar`` alike, as HfArgumentParser does: recipes use Kaldi's
    underscores, and Trainer options are spelled with underscores everywhere else."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_spelling_aliases(sub)
        for opt in list(action.option_strings):
            if not opt.startswith("--"):
                continue
            name = opt[2:]
            alt = "--" + (name.replace("_", "-") if "_" in name else name.replace("-", "_"))
            if alt != opt and alt not in parser._option_string_actions:
                action.option_strings.append(alt)
                parser._option_string_actions[alt] = action


def _apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Use a YAML file's values as the parser's defaults, so command-line options still win."""
    import yaml

    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"{path}: unknown options {unknown}")
    parser.set_defaults(**values)
    for action in parser._actions:  # a required option given by the file is no longer required
        if action.dest in values:
            action.required = False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="speech-lpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", metavar="stage", required=True)
    chosen = argv[0] if argv and argv[0] in STAGES else None
    for name, module_name in STAGES.items():
        if name != chosen:
            sub.add_parser(name)  # listed in --help; its options are only built when it is chosen
            continue
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(
            name,
            description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(func=module.main)
        leaf = _chosen_subcommand(stage_parser, argv[1:])
        leaf.add_argument("--config", help="YAML file of option values; options given here override it")
        for p in {stage_parser, leaf}:
            _add_spelling_aliases(p)
        if "--config" in argv:
            _apply_config(leaf, argv[argv.index("--config") + 1])
    return parser.parse_args(argv)


def _chosen_subcommand(parser: argparse.ArgumentParser, rest: list[str]) -> argparse.ArgumentParser:
    """The parser that reads the options: the stage's own, or that of its sub-command named in ``rest``
    (``score asr``, ``mos serve``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and rest and rest[0] in action.choices:
            return _chosen_subcommand(action.choices[rest[0]], rest[1:])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)


if __name__ == "__main__":
    main()
