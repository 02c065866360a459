"""The CLI: every stage is registered and importable; option spellings; YAML configs."""

import pytest

from speech_lpo.cli import STAGES, parse_args


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_builds_its_parser(stage):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([stage, "--help"])
    assert exit_info.value.code == 0


def test_underscores_and_dashes_are_the_same_option():
    a = parse_args(["plot", "--runs", "x", "--output", "o.png", "--window", "3"])
    b = parse_args(["ref-logps", "--groups", "g", "--model", "m", "--output", "o", "--batch-size", "3"])
    c = parse_args(["ref-logps", "--groups", "g", "--model", "m", "--output", "o", "--batch_size", "3"])
    assert a.window == 3 and b.batch_size == c.batch_size == 3


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    conf = tmp_path / "lpo.yaml"
    conf.write_text("loss_type: lpo\nr2: 3.0\nbeta: 0.2\ngroups: g.jsonl\nmodel: m\noutput_dir: out\n")
    args = parse_args(["train", "--config", str(conf), "--r2", "2.0"])
    assert (args.r2, args.beta, args.groups) == (2.0, 0.2, "g.jsonl")


def test_config_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    conf = tmp_path / "bad.yaml"
    conf.write_text("r3: 1.0\n")
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", str(conf)])
    assert "bad.yaml: unknown options ['r3']" in capsys.readouterr().err


def test_config_file_reaches_a_subcommands_options(tmp_path, capsys):
    conf = tmp_path / "serve.yaml"
    conf.write_text("definition: eval/mos_tts.yaml\ndb: ratings.sqlite\nport: 8123\nhost: 0.0.0.0\n")
    args = parse_args(["mos", "serve", "--config", str(conf), "--port", "9000"])
    assert (str(args.definition), str(args.db), args.host, args.port) == (
        "eval/mos_tts.yaml",
        "ratings.sqlite",
        "0.0.0.0",
        9000,
    )
    args = parse_args(["score", "tts", "--synth_dir", "s", "--out_dir", "o"])
    assert (args.synth_dir, args.out_dir) == ("s", "o")  # spelling aliases reach sub-commands too
    conf.write_text("prot: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["mos", "serve", "--config", str(conf)])
    assert "serve.yaml: unknown options ['prot']" in capsys.readouterr().err
