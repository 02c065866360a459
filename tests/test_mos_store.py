"""Ratings store on a real SQLite file: bad input refused with nothing written, updates not duplicated,
orders balanced; the same refusals through the running panel's API."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import soundfile as sf
import yaml
from gradio_client import Client

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import AlreadyRated, Refused, Store, Unanswered
from tests.test_mos_kit import Clock, free_port, listen, make_test, start_server, stop_server

MESSAGE = 2  # index of the message among the panel's API outputs (BrowserState, page JSON, message, ...)
GOOD = {"fidelity": 4.0, "stability": 3.5, "naturalness": 4.5, "emotional_expressiveness": 2.0}


def dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return list(con.iterdump())


def order_of(store: Store, token: str) -> list[str]:
    with sqlite3.connect(store.path) as con:
        return json.loads(con.execute("SELECT items FROM raters WHERE token = ?", (token,)).fetchone()[0])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    defn = load_definition(make_test(tmp_path, items_per_rater=3))
    return Store(tmp_path / "ratings.sqlite", defn, clock=Clock())


def entered(store: Store, browser: str = "browser-a") -> tuple[str, str]:
    """A rater who entered and heard the first sample to its end: (token, item)."""
    (token,) = store.invite(1, expires=None)
    store.enter(token, browser)
    item, *_ = store.next_item(token, browser)
    listen(store, token, browser, item)
    return token, item


def test_wal_and_update_not_duplicate(store: Store) -> None:
    token, item = entered(store)
    store.submit(token, "browser-a", item, GOOD)
    second, *_ = store.next_item(token, "browser-a")
    time.sleep(0.01)
    with pytest.raises(AlreadyRated, match="rated already, in another tab"):  # a tab left on it
        store.submit(token, "browser-a", item, {**GOOD, "naturalness": 1.0})
    assert store.previous(token, "browser-a", second)[0] == item  # went back on purpose
    store.submit(token, "browser-a", item, {**GOOD, "naturalness": 1.0})
    rows = {r["dimension"]: r for r in store.ratings()}
    assert len(store.ratings()) == 4
    assert rows["naturalness"]["score"] == 1.0 and rows["fidelity"]["score"] == 4.0
    assert all(
        r["revisions"] == 1 and (r["plays"], r["heard"]) == (2, 1) and r["updated"] > r["first_submitted"]
        for r in rows.values()
    )
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.next_item(token, "browser-a")[1] == 1  # one sample done


def test_previous_gives_back_stored_answers(store: Store) -> None:
    token, first = entered(store)
    assert store.previous(token, "browser-a", first) is None  # nothing before the first sample
    store.submit(token, "browser-a", first, GOOD)
    second, *_ = store.next_item(token, "browser-a")
    assert store.previous(token, "browser-a", second) == (first, GOOD, 0)
    with pytest.raises(Refused, match="in use in another browser, so this page has ended"):
        store.previous(token, "browser-b", second)


def test_bad_submissions_are_refused_and_write_nothing(store: Store) -> None:
    token, item = entered(store)
    other, other_item = entered(store, "browser-b")
    foreign = next(i for i in store.defn.items if i not in order_of(store, token))
    (expired,) = store.invite(1, expires=time.time() - 60)
    before = dump(store.path)
    cases = [
        (
            (token, "browser-a", item, {**GOOD, "fidelity": 5.5}),
            "fidelity: score 5.5 is outside the scale 0 to 5",
        ),
        ((token, "browser-a", item, {**GOOD, "fidelity": -1}), "outside the scale"),
        ((token, "browser-a", item, {**GOOD, "fidelity": 3.3}), "not on the scale's steps of 0.5"),
        ((token, "browser-a", item, {**GOOD, "fidelity": "4"}), "is not a number"),
        ((token, "browser-a", item, {**GOOD, "loudness": 3.0}), "Unknown dimension 'loudness'"),
        ((token, "browser-a", item, {"fidelity": 3.0}), "missing: stability, naturalness"),
        ((token, "browser-a", "utt9@lpo", GOOD), "Unknown item 'utt9@lpo'"),
        ((token, "browser-a", foreign, GOOD), "not one of this rater's items"),
        ((token, "browser-a", order_of(store, token)[1], GOOD), "not the sample on your screen"),
        ((other, "browser-a", other_item, GOOD), "in use in another browser"),
        (("no-such-token", "browser-a", item, GOOD), "Unknown invitation code"),
        ((expired, "browser-x", item, GOOD), "This invitation expired on"),
    ]
    for args, message in cases:
        with pytest.raises(Refused, match=message):
            store.submit(*args)
    with pytest.raises(Refused, match="An invitation code is required"):
        store.enter(None, "browser-c")
    with pytest.raises(Refused, match="This invitation expired"):
        store.enter(expired, "browser-c")
    with pytest.raises(Refused, match="in use in another browser"):  # a remembered token: no takeover
        store.enter(token, "browser-c")
    with pytest.raises(Unanswered) as missing:
        store.submit(token, "browser-a", item, {**GOOD, "stability": None, "naturalness": None})
    assert missing.value.missing == ["stability", "naturalness"]
    assert dump(store.path) == before


def test_invitation_follows_the_rater(store: Store) -> None:
    """The code itself moves a token to another browser and ends the old page; release frees it."""
    token, item = entered(store, "laptop")
    store.enter(token, "phone", takeover=True)
    with pytest.raises(Refused, match="this page has ended. Enter the invitation code"):
        store.submit(token, "laptop", item, GOOD)
    assert store.next_item(token, "phone")[0] == item  # same order, same place
    store.submit(token, "phone", item, GOOD)
    assert store.release(token) and not store.release("no-such-code")
    store.enter(token, "tablet")  # released: a remembered token may enter again
    assert store.next_item(token, "tablet")[1] == 1


def test_rating_needs_a_full_listen(store: Store) -> None:
    """The gate: every player (sample and reference) heard through in one play on the store's clock; an
    end without a play, a skip, a pause and resume, fast playback or a play interrupted by the other
    player unlock nothing, and only the item on screen can be played."""
    (token,) = store.invite(1, expires=None)
    store.enter(token, "b")
    item, *_ = store.next_item(token, "b")
    other = order_of(store, token)[1]
    duration, ref = store.length(token, item, "sample"), store.length(token, item, "reference")
    assert store.players(item) == ["reference", "sample"] and 1.9 < duration <= 2.0 and ref > 1.9
    before = dump(store.path)
    with pytest.raises(Refused, match="Listen to the reference recording and the sample from start to end"):
        store.submit(token, "b", item, GOOD)  # plays = 0
    with pytest.raises(Refused, match="ended without being played"):  # /heard without /play
        store.heard(token, "b", item)
    for call in (store.play, store.heard, store.pause):  # only the item on screen
        with pytest.raises(Refused, match="not the sample on your screen"):
            call(token, "b", other)
    assert dump(store.path) == before
    assert store.play(token, "b", item) == 1
    store.clock.advance(0.06)  # seeked to 97% and played the rest
    assert store.heard(token, "b", item) == (False, False, pytest.approx(0.06))
    store.play(token, "b", item)
    store.clock.advance(0.6 * duration)
    assert store.pause(token, "b", item) == pytest.approx(0.6 * duration)
    store.clock.advance(5)  # time passing while paused is not listening
    store.play(token, "b", item)  # resumed (or seeked back to 40%): spans are not summed
    store.clock.advance(0.6 * duration)
    assert store.heard(token, "b", item)[0] is False
    store.play(token, "b", item)
    store.clock.advance(duration / 2)  # 2x speed: the end comes after half the time
    assert store.heard(token, "b", item)[0] is False
    store.play(token, "b", item, "reference")
    store.clock.advance(0.5)
    store.play(token, "b", item)  # one open span per rater: the reference's is dropped
    store.clock.advance(ref)
    with pytest.raises(Refused, match="ended without being played"):
        store.heard(token, "b", item, "reference")
    assert store.heard(token, "b", item) == (True, False, pytest.approx(ref))
    with pytest.raises(Refused, match="Listen to the reference recording from start to end"):
        store.submit(token, "b", item, GOOD)
    assert store.ratings() == []
    store.play(token, "b", item, "reference")
    store.clock.advance(ref - 0.2)  # within the tolerance for event latency
    assert store.heard(token, "b", item, "reference")[:2] == (True, True)
    store.submit(token, "b", item, GOOD)
    rows = store.ratings()
    assert {(r["plays"], r["heard"]) for r in rows} == {(7, 1)}
    assert all(r["heard_s"] == pytest.approx(0.06 + 1.7 * duration + 2 * ref - 0.2) for r in rows)


def test_orders_are_random_and_balanced(tmp_path: Path) -> None:
    defn = load_definition(make_test(tmp_path, n_utts=4, items_per_rater=8))
    store = Store(tmp_path / "r.sqlite", defn)
    orders = []
    for token in store.invite(12, expires=None):
        store.enter(token, f"browser-{token}")
        orders.append(order_of(store, token))
    totals = Counter()
    for order in orders:
        systems = Counter(defn.items[i].system for i in order if defn.items[i].system)
        assert max(systems.values()) - min(systems.values()) <= 1 and sum(systems.values()) == 8
        assert sorted(i for i in order if i.startswith("check:")) == ["check:anchor", "check:hidden_ref"]
        assert not order[0].startswith("check:")
        utts = Counter(defn.items[i].utterance for i in order if defn.items[i].system)
        assert max(utts.values()) == 2  # 8 samples over 4 utterances: each exactly twice
        totals.update(i for i in order if not i.startswith("check:"))
    assert len({tuple(o) for o in orders}) == len(orders)  # randomised per rater
    # across raters every (utterance, system) is given out equally often: 12 x 8 / 12 items
    assert set(totals.values()) == {8}


def test_latin_square_each_rater_hears_each_sentence_once(tmp_path: Path) -> None:
    """By default a rater gets one sample per utterance (each sentence heard once), systems balanced
    within the rater, and across raters every utterance x system cell given out equally often."""
    definition = make_test(tmp_path, n_utts=3)
    raw = yaml.safe_load(definition.read_text())
    raw.pop("items_per_rater")
    definition.write_text(yaml.safe_dump(raw))
    defn = load_definition(definition)
    store = Store(tmp_path / "r.sqlite", defn)
    cells = Counter()
    for token in store.invite(9, expires=None):
        store.enter(token, f"b-{token}")
        rated = [defn.items[i] for i in order_of(store, token) if defn.items[i].system]
        assert sorted(i.utterance for i in rated) == sorted({i.utterance for i in defn.system_items})
        assert sorted(i.system for i in rated) == sorted(defn.systems)  # 3 sentences, 3 systems: one each
        cells.update(i.id for i in rated)
    assert set(cells) == {i.id for i in defn.system_items} and set(cells.values()) == {3}


def test_open_test_gives_a_uuid(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite", load_definition(make_test(tmp_path, invitations="open")))
    token = store.enter(None, "b")
    assert str(uuid.UUID(token)) == token and store.next_item(token, "b")[2] == 8


def test_database_of_another_test_is_refused(tmp_path: Path) -> None:
    defn = load_definition(make_test(tmp_path))
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES ('test', 'other_test')")
    with pytest.raises(Refused, match="holds ratings of test 'other_test', not 'test_mos'"):
        Store(tmp_path / "r.sqlite", defn)


def test_definition_that_dropped_given_items_is_refused(tmp_path: Path) -> None:
    path = make_test(tmp_path)
    store = Store(tmp_path / "r.sqlite", load_definition(path))
    store.enter(store.invite(1, expires=None)[0], "b")
    raw = yaml.safe_load(path.read_text())
    raw.update(systems=["original", "telephone"], items_per_rater=4)  # "noisy" items were handed out
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Refused, match=r"raters were given items that .* no longer defines: \['.*@noisy'"):
        Store(tmp_path / "r.sqlite", load_definition(path))


def test_served_copies_hide_names_and_stay_in_the_test(tmp_path: Path) -> None:
    from speech_lpo.mos.app import AudioCopies

    defn = load_definition(make_test(tmp_path))
    served = AudioCopies(defn.root, "key")
    hidden = defn.items["check:hidden_ref"]
    assert hidden.audio == hidden.reference
    as_sample, as_reference = served(hidden.audio, "sample"), served(hidden.reference, "reference")
    assert as_sample != as_reference  # the hidden reference does not give itself away by its URL
    assert Path(as_sample).read_bytes() == hidden.audio.read_bytes()
    urls = [served(item.audio, "sample") for item in defn.system_items]
    assert len(set(urls)) == len(urls) and all(Path(u).name == "sample.wav" for u in urls)
    assert not any(s in u for u in urls for s in defn.systems + [tmp_path.name])
    assert AudioCopies(defn.root, "other key")(hidden.audio, "sample") != as_sample  # not guessable
    with pytest.raises(Refused, match="is outside the test directory"):
        served(tmp_path / "mos_test.yaml", "sample")


def test_refusals_through_the_panel(tmp_path: Path) -> None:
    """The served panel: out-of-scale score, unplayed sample, wrong admin token, files outside the test."""
    definition = make_test(tmp_path)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, load_definition(definition))
    (token,) = store.invite(1, expires=None)
    (expired,) = store.invite(1, expires=time.time() - 60)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(definition, db, port, tmp_path / "server.log")
    try:
        client = Client(url, download_files=False, verbose=False)
        fresh = {"token": None, "browser": "b"}
        out = client.predict(expired, fresh, api_name="/enter")
        assert "This invitation expired" in out[MESSAGE]
        out = client.predict("", fresh, api_name="/enter")
        assert "Please enter the invitation code" in out[MESSAGE]
        out = client.predict(token, fresh, api_name="/enter")
        assert "0 of 8 samples rated" in out[MESSAGE + 1]
        kept, page, sample = out[0], out[1], out[MESSAGE + 3]["url"]
        assert all(s not in sample for s in ("original", "telephone", "noisy", "@"))  # names hidden
        duration = store.defn.items[store.order(token, "b")[page["at"]]].duration

        def submit(*scores: float | None) -> str:
            return client.predict(kept, page, *scores, api_name="/submit")[MESSAGE]

        def call(name: str, at: dict = page) -> str:
            out = client.predict(kept, at, api_name=f"/{name}")
            out = out[0] if isinstance(out, tuple) else out  # play's one output comes alone
            return out if isinstance(out, str) else ""  # an unchanged message comes as an update

        unheard = "Listen to the reference recording and the sample from start to end"
        assert unheard in submit(4.0, 4.0, 4.0, 4.0)  # plays = 0
        assert "ended without being played" in call("heard_sample")
        elsewhere = {**page, "at": page["at"] + 1}  # a script naming another item: refused, nothing kept
        assert "not the sample on your screen" in call("play_sample", elsewhere)
        call("play_sample")
        assert "Part of the sample was skipped" in call("heard_sample")
        assert unheard in submit(4.0, 4.0, 4.0, 4.0)
        call("play_sample")
        time.sleep(duration / 2)  # as if played at 2x
        assert "Part of the sample was skipped" in call("heard_sample")
        assert unheard in submit(4.0, 4.0, 4.0, 4.0)
        assert store.ratings() == []
        call("play_sample")
        time.sleep(duration)
        assert call("heard_sample") == "Now play the reference recording from start to end."
        call("play_reference")
        time.sleep(duration)
        assert call("heard_reference") == ""
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT DISTINCT item FROM listens").fetchall() == [(store.shown(token),)]
        assert "fidelity: score 7.0 is outside the scale 0 to 5" in submit(7.0, 4.0, 4.0, 4.0)
        out = client.predict(kept, page, 4.0, None, 4.0, 4.0, api_name="/submit")
        assert "Please answer “Stability”." in out
        other = Client(url, download_files=False, verbose=False)
        out = other.predict("", {"token": token, "browser": "another"}, api_name="/enter")
        assert "in use in another browser" in out[MESSAGE]
        assert store.ratings() == []

        http = httpx.Client(base_url=url, timeout=30)
        assert http.get(sample).status_code == 200
        real_name = next((tmp_path / "audio" / "noisy").glob("*.wav"))
        for path in [definition, real_name, db, Path("/etc/passwd")]:  # only the neutral copies are served
            assert http.get(f"gradio_api/file={path}").status_code == 403
        assert http.get("admin").status_code == 403
        assert http.get("admin/ratings.csv", params={"token": "wrong"}).status_code == 403
        admin = store.secret("admin_token")
        page = http.get("admin", params={"token": admin})
        assert page.status_code == 200 and "0 / 8" in page.text and "2 raters, 0 finished" in page.text
        assert "release" in page.text
        assert http.post("admin/release", params={"token": "wrong"}, data={"rater": token}).status_code == 403
        released = http.post("admin/release", params={"token": admin}, data={"rater": token})
        assert released.status_code == 303  # back to the admin page
        store.enter(token, "another")  # a remembered token may enter again once released
        csv = http.get("admin/ratings.csv", params={"token": admin}).text
        assert csv.splitlines() == [
            "system,utterance,check,position,worker,verdict,rater,item,dimension,score,plays,heard,heard_s,"
            "shown,first_submitted,updated,revisions,flipped"
        ]
    finally:
        stop_server(server)


def test_ratings_are_not_mixed_across_a_changed_definition(tmp_path: Path) -> None:
    """The store keeps a fingerprint of the audio, scale and dimensions; once ratings exist, a definition
    that changed any of them is refused, naming what changed. Before any rating a change is taken."""
    path = make_test(tmp_path)
    db = tmp_path / "r.sqlite"
    store = Store(db, load_definition(path), clock=Clock())
    raw = yaml.safe_load(path.read_text())
    raw["dimensions"] = raw["dimensions"][:2]
    path.write_text(yaml.safe_dump(raw))
    store = Store(db, load_definition(path), clock=Clock())  # nothing rated yet: the new one counts
    token, item = entered(store)
    store.submit(token, "browser-a", item, {d: 4.0 for d in store.defn.dimension_names()})
    wav = store.defn.items[item].audio
    original = wav.read_bytes()
    audio, sr = sf.read(wav)
    sf.write(wav, audio[::-1], sr)  # same length, other audio
    with pytest.raises(Refused, match=rf"changed since ratings were stored in .*: the audio of {item}"):
        Store(db, load_definition(path))
    wav.write_bytes(original)
    scale, raw["scale"] = raw["scale"], "acr"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Refused, match="changed since ratings were stored in .*: the scale"):
        Store(db, load_definition(path))
    raw["scale"], raw["dimensions"] = scale, ["fidelity"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Refused, match="changed since ratings were stored in .*: the dimensions"):
        Store(db, load_definition(path))


def test_open_test_takes_a_worker_id_once(tmp_path: Path) -> None:
    """Open mode records the platform's worker id; the same id from another browser (a private window)
    is refused, and the export carries it with each rating's place in the order, A/B flip and verdict."""
    store = Store(
        tmp_path / "r.sqlite", load_definition(make_test(tmp_path, invitations="open")), clock=Clock()
    )
    token = store.enter(None, "b1", worker="5f1e0c")
    with pytest.raises(Refused, match="This worker id has taken part already"):
        store.enter(None, "private-window", worker="5f1e0c")
    other = store.enter(None, "b3", worker="77aa")
    assert other != token
    item, *_ = store.next_item(token, "b1")
    listen(store, token, "b1", item)
    store.submit(token, "b1", item, GOOD)
    rows = list(csv.DictReader(io.StringIO(store.ratings_csv())))
    assert len(rows) == 4 and {r["worker"] for r in rows} == {"5f1e0c"}
    assert {(r["position"], r["flipped"], r["verdict"]) for r in rows} == {
        ("0", "0", "answered no attention check")
    }
