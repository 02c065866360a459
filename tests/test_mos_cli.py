"""`speech-lpo mos` commands at their edges: the YAML's own example, `package` run outside the repo,
bad invite counts, `--release`, where the admin token is documented, one-line refusals in the log and
the audio copies removed when the server stops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from gradio_client import Client

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import Store
from tests.test_mos_kit import REPO, UTTERANCES, find_flac, free_port, make_test, start_server, stop_server
from tests.test_mos_package import fake_synthesis


def mos(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "speech_lpo.cli", "mos", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_custom_dimension_example_is_valid(tmp_path: Path) -> None:
    """The commented example in eval/mos_tts.yaml, uncommented, is a definition the loader takes."""
    lines = (REPO / "eval" / "mos_tts.yaml").read_text(encoding="utf-8").splitlines()
    (example,) = [line.lstrip("# ") for line in lines if line.startswith("#") and "dimensions: [" in line]
    dimensions = yaml.safe_load(example)["dimensions"]
    defn = load_definition(make_test(tmp_path, dimensions=dimensions))
    assert [(d.name, d.label) for d in defn.dimensions] == [
        ("naturalness", "Naturalness"),
        ("overall", "Overall quality"),
    ]


def test_the_commented_options_are_valid_yaml() -> None:
    """The commented keys at the end of eval/mos_tts.yaml parse as YAML once uncommented."""
    lines = (REPO / "eval" / "mos_tts.yaml").read_text(encoding="utf-8").splitlines()
    block = [line[4:] for line in lines if line.startswith("#   ")]
    start = next(i for i, line in enumerate(block) if line.startswith("qualification:"))
    options = yaml.safe_load("\n".join(block[start:]))
    assert options["qualification"][0]["question"] == "Which number did you hear?"
    assert options["trapping_questions"] == [{"id": "poor", "audio": "traps/poor.wav", "answer": 2}]
    assert options["comment"] is True


def test_package_outside_the_repo(tmp_path: Path) -> None:
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"id": u, "audio": str(find_flac(u))}) + "\n" for u in UTTERANCES))
    synth = {s: fake_synthesis(tmp_path / "synth", s, UTTERANCES) for s in ("sft", "lpo")}
    systems = [f"{k}={v}" for k, v in synth.items()]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = mos(
        "package", "--systems", *systems, "--manifest", manifest, "--out", "mos", "-n", "2", cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    assert load_definition(elsewhere / "mos" / "mos_tts.yaml").systems == ["sft", "lpo"]
    failed = mos(
        "package", "--systems", *systems, "--manifest", manifest, "--out", "mos2", "--template", "no.yaml"
    )
    assert failed.returncode != 0 and "template no.yaml: cannot read" in failed.stderr
    assert not (REPO / "mos2").exists()  # refused before any audio was copied


def test_invite_counts_release_and_help(tmp_path: Path) -> None:
    definition = make_test(tmp_path)
    db = tmp_path / "ratings.sqlite"
    common = ("--definition", definition, "--db", db)
    for args, error in [
        (("-n", "0"), "-n must be 1 or more, got 0"),
        (("-n", "-2"), "-n must be 1 or more, got -2"),
        (("--days", "-1"), "--days must be 0 (never expires) or more, got -1"),
        (("--release", "no-such-code"), "no invitation 'no-such-code'"),
    ]:
        done = mos("invite", *common, *args)
        assert done.returncode != 0 and error in done.stderr, (args, done.stderr)
    store = Store(db, load_definition(definition))
    assert store.progress() == []
    done = mos("invite", *common, "-n", "2")
    tokens = [line.split("token=")[1] for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(tokens) == 2
    store.enter(tokens[0], "laptop")
    done = mos("invite", *common, "--release", tokens[0])
    assert done.returncode == 0 and "released" in done.stdout
    store.enter(tokens[0], "phone")  # a released token lets another browser in
    assert "admin?token=" in mos("serve", "--help").stdout
    assert "admin_token" in mos("--help").stdout


def test_refusals_log_one_line_and_copies_go_at_stop(tmp_path: Path) -> None:
    definition = make_test(tmp_path)
    db = tmp_path / "ratings.sqlite"
    (token,) = Store(db, load_definition(definition)).invite(1, expires=None)
    temp = tmp_path / "tmp"
    temp.mkdir()
    port, log = free_port(), tmp_path / "server.log"
    server = start_server(definition, db, port, log, env={"TMPDIR": str(temp)})
    try:
        client = Client(f"http://127.0.0.1:{port}/", download_files=False, verbose=False)
        out = client.predict("", {"token": token, "browser": "b"}, api_name="/enter")
        kept, page = out[0], out[1]
        for _ in range(3):
            out = client.predict(kept, page, *[4.0] * 4, api_name="/submit")
            assert "Listen to the reference recording and the sample" in out[2]
        client.predict(kept, {"at": 10**6}, api_name="/play_sample")
        out = client.predict(kept, page, "9" * 200_000, *[4.0] * 3, api_name="/submit")
        assert out[2] == f"**fidelity: score '{'9' * 39}... is not a number.**"
        (cache,) = temp.glob("speech_lpo_mos_*")
        assert len(list(cache.rglob("*.wav"))) >= 2  # the sample and its reference
    finally:
        stop_server(server)
    assert not list(temp.glob("speech_lpo_mos_*"))  # the copies are gone with the server
    lines = log.read_text().splitlines()
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 5 and "Traceback" not in log.read_text()
    assert "refused play: No such sample" in refusals[-2]
    assert "refused submit: fidelity: score '9999" in refusals[-1]
    assert max(map(len, lines)) < 1000  # a huge bad value is not echoed whole
