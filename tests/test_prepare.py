"""prepare: real AISHELL-1 / LibriSpeech utterances and the mini corpus -> manifests + Kaldi dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech_lpo.prepare import librispeech_split, prepare, read_manifest
from speech_lpo.synth_corpus import LIBRISPEECH_SUBSETS
from tests.fixtures_corpus import AISHELL_DIR, LIBRISPEECH_DIR, MINI_COUNTS, need

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures

MANIFEST_KEYS = ["id", "audio", "text", "speaker", "duration", "sample_rate", "lang", "split"]


def all_lines(out: Path) -> list[dict]:
    return [x for path in sorted(out.glob("*.jsonl")) for x in read_manifest(path)]


def aishell_truth(root: Path) -> dict[str, dict]:
    """What the corpus files say, read independently of speech_lpo.prepare."""
    transcript = root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    texts = dict(line.split(maxsplit=1) for line in transcript.read_text(encoding="utf-8").splitlines())
    truth = {}
    for wav in (root / "data_aishell" / "wav").rglob("*.wav"):
        info = sf.info(str(wav))
        truth[wav.stem] = {
            "text": texts[wav.stem].replace(" ", "").strip(),
            "speaker": wav.parent.name,
            "split": wav.parent.parent.name,
            "duration": info.frames / info.samplerate,
        }
    return truth


def librispeech_truth(root: Path) -> dict[str, dict]:
    truth = {}
    for trans in (root / "LibriSpeech").rglob("*.trans.txt"):
        subset = trans.relative_to(root / "LibriSpeech").parts[0]
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            info = sf.info(str(trans.parent / f"{uid}.flac"))
            truth[uid] = {
                "text": text,
                "speaker": uid.split("-")[0],
                "split": "train" if subset.startswith("train-") else subset,
                "duration": info.frames / info.samplerate,
            }
    return truth


@pytest.mark.parametrize("corpus", ["aishell", "librispeech"])
def test_real_fixture_manifests_match_corpus_files(corpus, tmp_path):
    root = need(AISHELL_DIR if corpus == "aishell" else LIBRISPEECH_DIR)
    truth = aishell_truth(root) if corpus == "aishell" else librispeech_truth(root)
    report = prepare(corpus, root, tmp_path)
    lines = all_lines(tmp_path)
    assert report["skipped_total"] == 0
    assert sorted(x["id"] for x in lines) == sorted(truth)
    for x in lines:
        assert list(x) == MANIFEST_KEYS
        t = truth[x["id"]]
        assert (x["text"], x["speaker"], x["split"]) == (t["text"], t["speaker"], t["split"])
        assert x["duration"] == pytest.approx(t["duration"], abs=1e-3)
        assert x["sample_rate"] == 16000 and Path(x["audio"]).is_file()
        assert x["lang"] == ("cmn" if corpus == "aishell" else "en")
    if corpus == "aishell":
        assert all(" " not in x["text"] for x in lines)
        counts = {s: report["splits"][s]["kept"] for s in ("train", "dev", "test")}
        assert counts == {"train": 1, "dev": 1, "test": 7}
    else:
        assert all(x["text"] == x["text"].upper() for x in lines)
        assert {x["id"]: x["split"] for x in lines}["8266-258262-0000"] == "train"


@pytest.mark.parametrize("corpus", ["aishell", "librispeech"])
def test_agrees_with_lhotse_recipe(corpus, tmp_path):
    """lhotse's recipe on the same partial corpus gives the same utterances, texts, speakers, durations."""
    root = need(AISHELL_DIR if corpus == "aishell" else LIBRISPEECH_DIR)
    if corpus == "aishell":
        from lhotse.recipes.aishell import prepare_aishell

        theirs = prepare_aishell(root)
    else:
        from lhotse.recipes.librispeech import prepare_librispeech

        theirs = prepare_librispeech(root / "LibriSpeech")
    prepare(corpus, root, tmp_path)
    ours = {x["id"]: x for x in all_lines(tmp_path)}
    seen = 0
    for part, manifests in theirs.items():
        for sup in manifests["supervisions"]:
            x = ours[sup.id]
            assert (x["text"], x["speaker"]) == (sup.text, sup.speaker)
            assert x["duration"] == pytest.approx(sup.duration, abs=1e-3)
            assert x["split"] == (librispeech_split(part) if corpus == "librispeech" else part)
            seen += 1
    assert seen == len(ours)


def test_kaldi_dir_is_consistent(tmp_path):
    root = need(LIBRISPEECH_DIR)
    prepare("librispeech", root, tmp_path)
    for split in ("train", "dev-clean", "test-clean"):
        lines = read_manifest(tmp_path / f"{split}.jsonl")
        kaldi = tmp_path / "kaldi" / split
        table = {
            name: (kaldi / name).read_text().splitlines()
            for name in ("wav.scp", "text", "utt2spk", "spk2utt")
        }
        ids = [row.split(" ", 1)[0] for row in table["wav.scp"]]
        assert ids == sorted(x["id"] for x in lines)  # Kaldi needs sorted keys
        for name in ("text", "utt2spk"):
            assert [row.split(" ", 1)[0] for row in table[name]] == ids
        by_id = {x["id"]: x for x in lines}
        assert all(row.split(" ", 1)[1] == by_id[row.split(" ", 1)[0]]["text"] for row in table["text"])
        utt2spk = dict(row.split() for row in table["utt2spk"])
        spk2utt = {row.split()[0]: row.split()[1:] for row in table["spk2utt"]}
        assert {u for us in spk2utt.values() for u in us} == set(ids)
        assert all(utt2spk[u] == spk for spk, us in spk2utt.items() for u in us)


def test_mini_corpus_prepares_like_the_real_ones(mini_corpus, mini_manifests):
    for corpus, out in mini_manifests.items():
        report = json.loads((out / "report.json").read_text())
        assert report["skipped_total"] == 0
        for split, n in MINI_COUNTS.items():
            if corpus == "librispeech":  # the mini corpus writes train-clean-100, dev-clean, test-clean
                split = librispeech_split(LIBRISPEECH_SUBSETS[split])
            lines = read_manifest(out / f"{split}.jsonl")
            assert len(lines) == n and all(x["split"] == split for x in lines)
            assert all(0.5 < x["duration"] < 6 for x in lines)
        if corpus == "aishell":
            transcript = (
                mini_corpus / "aishell1" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
            )
            texts = dict(line.split(" ", 1) for line in transcript.read_text(encoding="utf-8").splitlines())
            assert all(x["text"] == texts[x["id"]].replace(" ", "") for x in all_lines(out))


def write_flac(path: Path, seconds: float, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(int(seconds * rate)) * 0.05), rate, subtype="PCM_16")


def test_bad_input_is_counted_and_listed(tmp_path):
    """Each kind of bad utterance is a named, counted skip; the good ones are kept."""
    chapter = tmp_path / "corpus" / "LibriSpeech" / "dev-clean" / "77" / "1"
    good = ["77-1-0000", "77-1-0001", "77-1-0003"]
    for uid in good:
        write_flac(chapter / f"{uid}.flac", 1.0)
    write_flac(chapter / "77-1-0002.flac", 0.02)  # too short
    write_flac(chapter / "77-1-0003.flac", 1.0, rate=8000)  # another sample rate: kept, tokenize resamples
    (chapter / "77-1-0004.flac").write_bytes(b"not audio at all")  # unreadable
    (chapter / "77-1-0005.flac").write_bytes(b"")  # empty file
    # zero-length: soundfile writes no FLAC for 0 frames; a WAV header is read by content all the same
    sf.write(chapter / "77-1-0006.flac", np.zeros(0), 16000, format="WAV", subtype="PCM_16")
    write_flac(chapter / "77-1-0007.flac", 1.0)  # no transcript line
    lines = [f"{u} HELLO WORLD" for u in good + ["77-1-0002", "77-1-0004", "77-1-0005", "77-1-0006"]]
    lines.append("77-1-0008 NO AUDIO FOR THIS LINE")
    (chapter / "77-1.trans.txt").write_text("\n".join(lines) + "\n")

    report = prepare("librispeech", tmp_path / "corpus", tmp_path / "out")
    kept = read_manifest(tmp_path / "out" / "dev-clean.jsonl")
    assert [x["id"] for x in kept] == good
    assert [x["sample_rate"] for x in kept] == [16000, 16000, 8000]
    assert report["skipped_total"] == 6
    rows = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1:]
    reasons = {row.split("\t")[1]: row.split("\t")[3] for row in rows}
    assert reasons["77-1-0002"].startswith("too short")
    assert reasons["77-1-0004"].startswith("unreadable audio")
    assert reasons["77-1-0005"] == "empty audio file (0 bytes)"
    assert reasons["77-1-0006"] == "zero-length audio"
    assert reasons["77-1-0007"] == "audio with no transcript line"
    assert reasons["77-1-0008"] == "transcript line with no audio file"
    assert all(row.split("\t")[2].endswith(".flac") or row.split("\t")[2] == "-" for row in rows)


def test_aishell_transcript_without_audio_is_reported(tmp_path):
    root = need(AISHELL_DIR)
    copy = tmp_path / "aishell"
    shutil.copytree(root, copy)
    transcript = copy / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.write_text(
        transcript.read_text(encoding="utf-8") + "BAC009S9999W0001 没有 音频\n", encoding="utf-8"
    )
    report = prepare("aishell", copy, tmp_path / "out")
    assert report["skipped_without_split"] == {"transcript line with no audio file": 1}
    assert sum(r["kept"] for r in report["splits"].values()) == 9


def test_missing_corpus_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare("aishell", tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="aishell_transcript_v0.8.txt"):
        prepare("aishell", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="LibriSpeech subsets"):
        prepare("librispeech", tmp_path / "empty", tmp_path / "out")


def test_malformed_manifest_line_is_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a"}\n{broken\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_manifest(path)


def test_cli_prepares_and_reports(tmp_path, capsys):
    from speech_lpo.cli import main

    root = need(AISHELL_DIR)
    main(["prepare", "--corpus", "aishell", "--corpus-dir", str(root), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "test: kept 7, skipped 0" in printed
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["dev.jsonl", "test.jsonl", "train.jsonl"]


def librispeech_with_test_other(dst: Path) -> Path:
    """The real samples in a layout holding every evaluation set kind: test-clean keeps speaker 1089, the
    other test-clean speakers become test-other (the samples hold no test-other utterance)."""
    src = need(LIBRISPEECH_DIR) / "LibriSpeech"
    root = dst / "LibriSpeech"
    for subset in ("train-clean-100", "dev-clean"):
        shutil.copytree(src / subset, root / subset)
    for speaker in (src / "test-clean").iterdir():
        subset = "test-clean" if speaker.name == "1089" else "test-other"
        shutil.copytree(speaker, root / subset / speaker.name)
    return dst


def test_librispeech_sets_stay_apart(tmp_path):
    corpus = librispeech_with_test_other(tmp_path / "corpus")
    report = prepare("librispeech", corpus, tmp_path / "out")
    expected = {
        split: sorted(p.stem for p in (corpus / "LibriSpeech" / split).rglob("*.flac"))
        for split in ("dev-clean", "test-clean", "test-other")
    }
    assert set(report["splits"]) == {"train", "dev-clean", "test-clean", "test-other"}
    for split, ids in expected.items():
        lines = read_manifest(tmp_path / "out" / f"{split}.jsonl")
        assert [x["id"] for x in lines] == ids and {x["split"] for x in lines} == {split}
        assert (tmp_path / "out" / "kaldi" / split / "text").read_text().count("\n") == len(ids)
    assert len(expected["test-clean"]) == 4 and len(expected["test-other"]) == 3

    # --subsets picks the parts; train is the union of the training parts asked for
    report = prepare("librispeech", corpus, tmp_path / "some", subsets=["train-clean-100", "test-other"])
    assert set(report["splits"]) == {"train", "test-other"}
    assert sorted(p.name for p in (tmp_path / "some").glob("*.jsonl")) == ["test-other.jsonl", "train.jsonl"]


def test_non_finite_audio_is_a_named_skip(tmp_path):
    """Float WAVs holding NaN or Inf pass every header check; prepare reads them and skips them."""
    copy = tmp_path / "aishell"
    shutil.copytree(need(AISHELL_DIR), copy)
    test_dir = copy / "data_aishell" / "wav" / "test"
    for uid, bad in [("BAC009S0764W0121", np.nan), ("BAC009S0764W0122", np.inf)]:
        path = test_dir / "S0764" / f"{uid}.wav"
        wav, sr = sf.read(path, dtype="float32")
        wav[len(wav) // 2] = bad
        sf.write(path, wav, sr, subtype="FLOAT")
    report = prepare("aishell", copy, tmp_path / "out")
    assert report["splits"]["test"] == {"kept": 5, "skipped": {"non-finite samples (NaN or Inf)": 2}}
    rows = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1:]
    assert sorted(row.split("\t")[1] for row in rows) == ["BAC009S0764W0121", "BAC009S0764W0122"]
    assert all(row.split("\t")[2].endswith(".wav") for row in rows)


def test_non_utf8_transcript_line_is_a_named_skip(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(need(LIBRISPEECH_DIR) / "LibriSpeech" / "dev-clean", corpus / "LibriSpeech" / "dev-clean")
    trans = corpus / "LibriSpeech" / "dev-clean" / "1272" / "128104" / "1272-128104.trans.txt"
    lines = trans.read_bytes().splitlines()
    lines[1] = lines[1] + " CAF\xc9".encode("latin-1")  # a Latin-1 byte: not UTF-8
    trans.write_bytes(b"\n".join(lines) + b"\n")
    report = prepare("librispeech", corpus, tmp_path / "out")
    assert report["splits"]["dev-clean"] == {"kept": 1, "skipped": {"transcript line not UTF-8": 1}}
    row = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1].split("\t")
    assert row[1] == "1272-128104-0001" and row[3] == f"transcript line not UTF-8: {trans}:2"


def test_aishell_tab_separated_transcript_is_read(tmp_path):
    copy = tmp_path / "aishell"
    shutil.copytree(need(AISHELL_DIR), copy)
    transcript = copy / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    lines = transcript.read_text(encoding="utf-8").splitlines()
    transcript.write_text("".join(line.replace(" ", "\t", 1) + "\n" for line in lines), encoding="utf-8")
    assert all("\t" in line for line in transcript.read_text(encoding="utf-8").splitlines())
    report = prepare("aishell", copy, tmp_path / "out")
    assert report["skipped_total"] == 0
    truth = aishell_truth(need(AISHELL_DIR))
    texts = {x["id"]: x["text"] for x in all_lines(tmp_path / "out")}
    assert texts == {k: v["text"] for k, v in truth.items()}


def test_unextracted_archives_are_named(tmp_path):
    """The AISHELL-1 release ships wav/<speaker>.tar.gz; left packed, prepare names them."""
    import tarfile

    copy = tmp_path / "aishell"
    shutil.copytree(need(AISHELL_DIR), copy)
    wav = copy / "data_aishell" / "wav"
    for speaker in ("S0002", "S0724"):
        split_dir = next(wav.glob(f"*/{speaker}")).parent
        with tarfile.open(wav / f"{speaker}.tar.gz", "w:gz") as tar:
            tar.add(split_dir / speaker, arcname=f"{split_dir.name}/{speaker}")
        shutil.rmtree(split_dir / speaker)
    with pytest.raises(FileNotFoundError, match=r"2 speaker archives not extracted \(S0002.tar.gz, S0724"):
        prepare("aishell", copy, tmp_path / "out")
    for archive in wav.glob("*.tar.gz"):  # extracted as the message says: prepared as the release
        with tarfile.open(archive) as tar:
            tar.extractall(wav, filter="data")
    assert prepare("aishell", copy, tmp_path / "out")["skipped_total"] == 0

    (tmp_path / "libri").mkdir()
    (tmp_path / "libri" / "test-clean.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="archives not extracted: test-clean.tar.gz"):
        prepare("librispeech", tmp_path / "libri", tmp_path / "out2")


@pytest.mark.parametrize("corpus", ["aishell", "librispeech"])
def test_pref_split_is_a_seeded_set_aside_of_training(mini_corpus, corpus, tmp_path):
    from speech_lpo.cli import main

    layout = mini_corpus / ("aishell1" if corpus == "aishell" else "librispeech")
    argv = ["prepare", "--corpus", corpus, "--corpus-dir", str(layout), "--pref-utts", "6", "--out"]
    main(argv + [str(tmp_path / "a")])
    train, pref = (read_manifest(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "pref"))
    assert len(train) == MINI_COUNTS["train"] - 6 and len(pref) == 6
    assert all(x["split"] == "pref" for x in pref) and all(x["split"] == "train" for x in train)
    truth = (aishell_truth if corpus == "aishell" else librispeech_truth)(layout)
    assert {x["id"] for x in train + pref} == {u for u, t in truth.items() if t["split"] == "train"}
    assert not {x["id"] for x in train} & {x["id"] for x in pref}
    assert (tmp_path / "a" / "kaldi" / "pref" / "text").read_text().count("\n") == 6
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["splits"]["pref"]["kept"] == 6 and report["splits"]["train"]["kept"] == len(train)

    main(argv + [str(tmp_path / "b")])  # seeded: the same set again; another seed, another set
    assert (tmp_path / "b" / "pref.jsonl").read_bytes() == (tmp_path / "a" / "pref.jsonl").read_bytes()
    main(argv + [str(tmp_path / "c"), "--seed", "1"])
    assert {x["id"] for x in read_manifest(tmp_path / "c" / "pref.jsonl")} != {x["id"] for x in pref}

    with pytest.raises(ValueError, match=rf"--pref-utts {MINI_COUNTS['train']}: .* fewer than the 24"):
        prepare(corpus, layout, tmp_path / "d", pref_utts=MINI_COUNTS["train"])
