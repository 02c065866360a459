"""Ratings store: one SQLite file in WAL mode (DESIGN.md, Real components and defaults).

One row per (rater, item, dimension) in ``ratings``; a rating changed later is updated in place (its
``revisions`` count goes up), never duplicated. Every call that writes is one ``BEGIN IMMEDIATE``
transaction that either validates and commits everything or writes nothing, so a submission the
panel acknowledged is on disk even if the server is killed the next moment.

A rater is identified by a token: an invitation made with ``mos invite``, or a UUID the server
issues when the test is open. The browser that entered with a token owns it. Another browser that
presents the invitation code itself (link or typed) takes it over, and the first browser's page
ends; a browser that only remembers an old token is refused. ``release`` frees a token for anyone.

The server owns the page: each rater has a cursor, the item the server last showed them. Play, pause,
end and submit name the item they act on, and anything but the cursor's item is refused with nothing
stored, so a script cannot open, unlock or rate items out of the randomised order.

The listening gate: every player of an item (the sample, and the reference or CMOS's other sample when
there is one) must be heard through. The panel reports each player's play, pause and end events; a rater
has at most one open play span, and the store measures it on its own clock. A player is heard through
only when one span, from a play to the end, lasted the audio's length (``- LISTEN_TOLERANCE_S``): spans
are never summed, so seeking, pausing and resuming, or playing faster than 1x unlock nothing.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from speech_lpo.mos.definition import Definition
from speech_lpo.mos.order import assign_items

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    token TEXT PRIMARY KEY,
    kind TEXT NOT NULL,              -- 'invitation' or 'uuid'
    created REAL NOT NULL,
    expires REAL,                    -- unix time; NULL: never
    browser TEXT,                    -- the browser that owns the token, set on first entry
    rater_index INTEGER,             -- order of first entry; rotates the system balance
    items TEXT,                      -- JSON list of item ids in the order this rater hears them
    qualified INTEGER,               -- qualification: NULL not taken, 1 passed, 0 failed
    trained INTEGER NOT NULL DEFAULT 0,  -- training examples heard
    comment TEXT,
    flips TEXT,                      -- CMOS: JSON list of the items heard with the system as A
    cursor TEXT,                     -- the item on screen, the only one play/end/submit may act on
    revise INTEGER NOT NULL DEFAULT 0,   -- the cursor is a rated item the rater went back to
    span_item TEXT,                  -- the open play span: item, player, start on the store's clock
    span_player TEXT,
    span_since REAL,                 -- NULL once paused: then span_s holds the seconds it lasted
    span_s REAL,
    worker TEXT                      -- open tests: the crowd platform's worker id, from the URL
);
CREATE TABLE IF NOT EXISTS plays (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    shown REAL NOT NULL,
    first_play REAL,
    plays INTEGER NOT NULL DEFAULT 0,  -- playbacks started, all players
    heard INTEGER NOT NULL DEFAULT 0,  -- heard-through plays of the item's least heard player
    heard_s REAL NOT NULL DEFAULT 0,   -- seconds between play and pause/end events, all spans summed
    PRIMARY KEY (rater, item)
);
CREATE TABLE IF NOT EXISTS listens (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    player TEXT NOT NULL,              -- 'sample' (CMOS: B) or 'reference' (CMOS: A)
    plays INTEGER NOT NULL DEFAULT 0,
    through INTEGER NOT NULL DEFAULT 0,  -- plays heard from their start to the end in one span
    PRIMARY KEY (rater, item, player)
);
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    dimension TEXT NOT NULL,
    score REAL NOT NULL,
    plays INTEGER NOT NULL,          -- plays of the item when this score was (last) submitted
    heard INTEGER NOT NULL,          -- ... and how many of them reached the end, heard through
    heard_s REAL NOT NULL DEFAULT 0, -- ... and the seconds heard in all
    shown REAL NOT NULL,
    first_submitted REAL NOT NULL,
    updated REAL NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    flipped INTEGER NOT NULL DEFAULT 0,  -- CMOS: the system was A (the answer was negated to store it)
    PRIMARY KEY (rater, item, dimension)
);
"""
RATING_COLUMNS = [
    "rater",
    "item",
    "dimension",
    "score",
    "plays",
    "heard",
    "heard_s",
    "shown",
    "first_submitted",
    "updated",
    "revisions",
    "flipped",
]


# what the rater calls each player
PLAYER_NAMES = {
    "mos": {"sample": "the sample", "reference": "the reference recording"},
    "smos": {"sample": "the sample", "reference": "the reference recording"},
    "cmos": {"sample": "B", "reference": "A"},
}
# what the server's clock may measure short of a sample's length (event latency), in seconds
LISTEN_TOLERANCE_S = 0.3


class Refused(Exception):
    """A request the store turns down; the message is meant for the rater or the client."""


class Unanswered(Refused):
    """A submission that leaves questions unanswered; ``missing`` names their dimensions."""

    def __init__(self, missing: list[str]):
        super().__init__(f"Please answer every question; missing: {', '.join(missing)}.")
        self.missing = missing


class NotShown(Refused):
    """A request naming an item other than the one the server shows the rater (a script, or a stale tab)."""


class AlreadyRated(Refused):
    """A submission for a sample that is rated already, not sent as a revision (e.g. a second tab)."""


def fingerprint(defn: Definition) -> dict:
    """What a rating means: each item's audio (and reference) by content hash, the scale, the dimensions'
    questions, the test type. Ratings made under one fingerprint are not mixed with another's."""

    def digest(*paths: Path | None) -> str:
        h = hashlib.sha256()
        for p in paths:
            h.update(p.read_bytes() if p else b"-")
        return h.hexdigest()

    scale = defn.scale
    return {
        "audio": {i: digest(item.audio, item.reference) for i, item in sorted(defn.items.items())},
        "scale": [scale.min, scale.max, scale.step, list(scale.labels), scale.min_label, scale.max_label],
        "dimensions": [[d.name, d.label, d.question] for d in defn.dimensions],
        "type": [defn.kind, defn.baseline],
    }


def _date(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Store:
    def __init__(self, path: str | Path, defn: Definition, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.defn = defn
        self.clock = clock  # seconds; the listening gate measures on it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            for table, column, kind in (
                ("plays", "heard_s", "REAL NOT NULL DEFAULT 0"),
                ("ratings", "heard_s", "REAL NOT NULL DEFAULT 0"),
                ("ratings", "flipped", "INTEGER NOT NULL DEFAULT 0"),
                ("raters", "qualified", "INTEGER"),
                ("raters", "trained", "INTEGER NOT NULL DEFAULT 0"),
                ("raters", "comment", "TEXT"),
                ("raters", "flips", "TEXT"),
                ("raters", "cursor", "TEXT"),
                ("raters", "revise", "INTEGER NOT NULL DEFAULT 0"),
                ("raters", "span_item", "TEXT"),
                ("raters", "span_player", "TEXT"),
                ("raters", "span_since", "REAL"),
                ("raters", "span_s", "REAL"),
                ("raters", "worker", "TEXT"),
            ):
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")  # made before the gate
            db.execute("INSERT OR IGNORE INTO meta VALUES ('test', ?)", (defn.name,))
            (name,) = db.execute("SELECT value FROM meta WHERE key = 'test'").fetchone()
            assigned = {
                i
                for (js,) in db.execute("SELECT items FROM raters WHERE items IS NOT NULL")
                for i in json.loads(js)
            }
            changed = self._check_fingerprint(db, fingerprint(defn))
        finally:
            db.close()
        if name != defn.name:
            raise Refused(f"{self.path} holds ratings of test {name!r}, not {defn.name!r} ({defn.path})")
        gone = sorted(assigned - set(defn.items))
        if gone:
            raise Refused(
                f"{self.path}: raters were given items that {defn.path} no longer defines: {gone[:5]}"
            )
        if changed:
            raise Refused(
                f"{defn.path} changed since ratings were stored in {self.path}: {'; '.join(changed)}. "
                "Ratings of another test are not mixed in: use a new --db for it."
            )

    @staticmethod
    def _check_fingerprint(db: sqlite3.Connection, now: dict) -> list[str]:
        """What changed against the stored fingerprint, when ratings exist (then it is kept); without
        ratings the new one is stored."""
        row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        rated = db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] > 0
        if row is not None and rated:
            before = json.loads(row[0])
            audio = sorted(i for i, h in now["audio"].items() if before["audio"].get(i, h) != h)
            changed = [f"the audio of {', '.join(audio[:5])}"] if audio else []
            return changed + [f"the {k}" for k in ("scale", "dimensions", "type") if before[k] != now[k]]
        db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint', ?)", (json.dumps(now),))
        return []

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (the panel calls from many threads). Connections stay open: closing
        the last one checkpoints and deletes the WAL, which costs more than the transaction."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged rating survives power loss too
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything in it is committed, or nothing."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def secret(self, key: str) -> str:
        """A random value made once per database (admin token, browser-state key)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, secrets.token_urlsafe(18)))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def invite(self, n: int, expires: float | None) -> list[str]:
        tokens = [secrets.token_urlsafe(9) for _ in range(n)]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO raters (token, kind, created, expires) VALUES (?, 'invitation', ?, ?)",
                [(t, time.time(), expires) for t in tokens],
            )
        return tokens

    def _rater(self, db: sqlite3.Connection, token: str, browser: str) -> tuple[int | None, list[str] | None]:
        """Check that ``browser`` may act as rater ``token``; return (rater_index, items)."""
        row = db.execute(
            "SELECT expires, browser, rater_index, items FROM raters WHERE token = ?", (token,)
        ).fetchone()
        if row is None:
            raise Refused("Unknown invitation code. Check the link you were sent.")
        expires, owner, index, items = row
        if expires is not None and expires < time.time():
            raise Refused(f"This invitation expired on {_date(expires)}.")
        if owner is not None and owner != browser:
            raise Refused(
                "This invitation is in use in another browser, so this page has ended. "
                "Enter the invitation code to continue here."
            )
        return index, None if items is None else json.loads(items)

    def enter(
        self, token: str | None, browser: str, takeover: bool = False, worker: str | None = None
    ) -> str:
        """Let a browser in; returns the rater token (a new UUID when the test is open and none is given).

        ``takeover``: the rater presented the code itself (link or typed), so this browser becomes the
        token's owner and the previous browser's page ends; a remembered token does not take over.
        ``worker``: an open test's newcomer's crowd-platform worker id; an id seen before is refused
        (one attempt per person, also from a private window).
        """
        if not browser:
            raise Refused("Missing browser id.")
        with self._tx() as db:
            if token and takeover:
                db.execute("UPDATE raters SET browser = NULL WHERE token = ?", (token,))
            if not token:
                if self.defn.invitations != "open":
                    raise Refused("An invitation code is required to take part in this test.")
                if worker and db.execute("SELECT 1 FROM raters WHERE worker = ?", (worker,)).fetchone():
                    raise Refused("This worker id has taken part already; the test is taken once per person.")
                token = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO raters (token, kind, created, worker) VALUES (?, 'uuid', ?, ?)",
                    (token, time.time(), worker or None),
                )
            index, items = self._rater(db, token, browser)
            if items is None:
                index = db.execute("SELECT COUNT(*) FROM raters WHERE items IS NOT NULL").fetchone()[0]
                taken = Counter(
                    item
                    for (js,) in db.execute("SELECT items FROM raters WHERE items IS NOT NULL")
                    for item in json.loads(js)
                )
                # the order is stored, so it needs no reproducible seed
                items = assign_items(self.defn, secrets.randbits(32), index, taken)
                db.execute(
                    "UPDATE raters SET rater_index = ?, items = ?, flips = ? WHERE token = ?",
                    (index, json.dumps(items), json.dumps(self._balanced_flips(items)), token),
                )
            db.execute("UPDATE raters SET browser = ? WHERE token = ?", (browser, token))
        return token

    def _balanced_flips(self, items: list[str]) -> list[str]:
        """CMOS: which of a rater's items play the system as A. Half of them (a random one more or less
        when odd), at random places: a rater's bias towards one side cancels out of their scores."""
        if self.defn.kind != "cmos":
            return []
        rated = [i for i in items if self.defn.items[i].system is not None]
        rng = secrets.SystemRandom()
        return sorted(rng.sample(rated, len(rated) // 2 + rng.randint(0, len(rated) % 2)))

    def stage(self, token: str, browser: str) -> str:
        """Where rater ``token`` is: "qualify", "disqualified", "training" or "rating"."""
        self._rater(self._connection(), token, browser)
        qualified, trained = (
            self._connection()
            .execute("SELECT qualified, trained FROM raters WHERE token = ?", (token,))
            .fetchone()
        )
        if self.defn.qualification and qualified != 1:
            return "qualify" if qualified is None else "disqualified"
        if self.defn.training and not trained:
            return "training"
        return "rating"

    def qualify(self, token: str, browser: str, answers: list[str | None]) -> bool:
        """Record the qualification: passed only when every answer is right; taken once."""
        questions = self.defn.qualification
        if len(answers) != len(questions):
            raise Refused(f"Expected {len(questions)} answers to the qualification.")
        if any(a is None for a in answers):
            raise Refused("Please answer every question.")
        passed = all(a == q.answer for a, q in zip(answers, questions, strict=True))
        with self._tx() as db:
            self._rater(db, token, browser)
            db.execute(
                "UPDATE raters SET qualified = ? WHERE token = ? AND qualified IS NULL", (int(passed), token)
            )
            return db.execute("SELECT qualified FROM raters WHERE token = ?", (token,)).fetchone()[0] == 1

    def trained(self, token: str, browser: str) -> None:
        """The rater heard the training examples and starts rating."""
        with self._tx() as db:
            self._rater(db, token, browser)
            db.execute("UPDATE raters SET trained = 1 WHERE token = ?", (token,))

    def flipped(self, token: str, item: str) -> bool:
        """CMOS: whether this rater hears ``item``'s system as A and the baseline as B (balanced within each
        rater, see ``_balanced_flips``). Scores are stored as system vs baseline."""
        if self.defn.kind != "cmos":
            return False
        row = self._connection().execute("SELECT flips FROM raters WHERE token = ?", (token,)).fetchone()
        return row is not None and row[0] is not None and item in json.loads(row[0])

    def players(self, item: str) -> list[str]:
        """The players of ``item`` that must be heard through: the sample, and the reference (CMOS: A)."""
        return ["reference", "sample"] if self.defn.items[item].reference is not None else ["sample"]

    def length(self, token: str, item: str, player: str) -> float:
        """Seconds of audio that ``player`` plays for this rater (CMOS swaps A and B when flipped)."""
        entry = self.defn.items[item]
        if self.flipped(token, item):
            player = {"sample": "reference", "reference": "sample"}[player]
        return entry.duration if player == "sample" else entry.reference_duration

    def completion_code(self, token: str) -> str:
        """A code the rater gives the platform to show they finished; the same for the same token."""
        key = self.secret("completion_code_key")
        return hmac.new(key.encode(), token.encode(), hashlib.sha256).hexdigest()[:10].upper()

    def save_comment(self, token: str, browser: str, text: str) -> None:
        if len(text) > 2000:
            raise Refused("Please keep the comment under 2,000 characters.")
        with self._tx() as db:
            self._rater(db, token, browser)
            db.execute("UPDATE raters SET comment = ? WHERE token = ?", (text, token))

    def release(self, token: str) -> bool:
        """Free ``token`` from its browser, so that any browser can enter with it; False if unknown."""
        with self._tx() as db:
            return db.execute("UPDATE raters SET browser = NULL WHERE token = ?", (token,)).rowcount == 1

    def _move(self, db: sqlite3.Connection, token: str, item: str, revise: bool) -> None:
        """Show ``item`` next: the cursor moves and a play span still open is dropped (it heard nothing)."""
        db.execute(
            "UPDATE raters SET cursor = ?, revise = ?, span_item = NULL, span_player = NULL, "
            "span_since = NULL, span_s = NULL WHERE token = ? AND (cursor IS NOT ? OR revise != ?)",
            (item, int(revise), token, item, int(revise)),
        )
        db.execute(
            "INSERT OR IGNORE INTO plays (rater, item, shown) VALUES (?, ?, ?)", (token, item, time.time())
        )

    def _all_heard(self, db: sqlite3.Connection, token: str, item: str) -> bool:
        through = dict(
            db.execute("SELECT player, through FROM listens WHERE rater = ? AND item = ?", (token, item))
        )
        return all(through.get(player, 0) > 0 for player in self.players(item))

    def next_item(self, token: str, browser: str) -> tuple[str | None, int, int, bool, int]:
        """(first unrated item or None when finished, items done, items in total, whether every player of
        it was heard through, its place in the rater's order).

        The item becomes the rater's cursor; records when it was first shown.
        """
        n_dims = len(self.defn.dimensions)
        if self.stage(token, browser) != "rating":
            raise Refused("Pass the qualification and hear the training examples first.")
        with self._tx() as db:
            _, items = self._rater(db, token, browser)
            if items is None:
                raise Refused("Enter the test first.")
            done = {
                item
                for (item,) in db.execute(
                    "SELECT item FROM ratings WHERE rater = ? GROUP BY item HAVING COUNT(*) = ?",
                    (token, n_dims),
                )
            }
            todo = [item for item in items if item not in done]
            if not todo:
                db.execute("UPDATE raters SET cursor = NULL, revise = 0 WHERE token = ?", (token,))
                return None, len(items), len(items), False, len(items)
            self._move(db, token, todo[0], revise=False)
            heard = self._all_heard(db, token, todo[0])
            return todo[0], len(items) - len(todo), len(items), heard, items.index(todo[0])

    def shown(self, token: str) -> str | None:
        """The item on rater ``token``'s screen (the cursor), or None."""
        row = self._connection().execute("SELECT cursor FROM raters WHERE token = ?", (token,)).fetchone()
        return row[0] if row else None

    def order(self, token: str, browser: str) -> list[str]:
        """The item ids of rater ``token`` in the order they are heard."""
        _, items = self._rater(self._connection(), token, browser)
        if items is None:
            raise Refused("Enter the test first.")
        return items

    def _on_screen(self, db: sqlite3.Connection, token: str, browser: str, item: str) -> bool:
        """Refuse unless ``item`` is the one the server shows rater ``token``; returns whether it is
        shown as a revision (the rater went back to it)."""
        if self.stage(token, browser) != "rating":
            raise Refused("Pass the qualification and hear the training examples first.")
        _, items = self._rater(db, token, browser)
        if item not in self.defn.items:
            raise Refused(f"Unknown item {item!r}.")
        if items is None or item not in items:
            raise Refused(f"Item {item!r} is not one of this rater's items.")
        cursor, revise = db.execute("SELECT cursor, revise FROM raters WHERE token = ?", (token,)).fetchone()
        if item != cursor:
            raise NotShown("This is not the sample on your screen now: reload the page.")
        return bool(revise)

    def previous(self, token: str, browser: str, item: str) -> tuple[str, dict[str, float], int] | None:
        """Go back from ``item`` (the one on screen) to the sample before it: (its id, its stored answers,
        its place in the order), so that a rater can change them; None before the first."""
        with self._tx() as db:
            self._on_screen(db, token, browser, item)
            items = self._rater(db, token, browser)[1]
            at = items.index(item)
            if at == 0:
                return None
            self._move(db, token, items[at - 1], revise=True)
            answers = dict(
                db.execute(
                    "SELECT dimension, score FROM ratings WHERE rater = ? AND item = ?",
                    (token, items[at - 1]),
                )
            )
            return items[at - 1], answers, at - 1

    def play(self, token: str, browser: str, item: str, player: str = "sample") -> int:
        """A playback of ``player`` started: opens the rater's one play span (a span still open on the
        other player is dropped: it was not heard through); returns the plays of this player so far."""
        now = self.clock()
        with self._tx() as db:
            self._on_screen(db, token, browser, item)
            if player not in self.players(item):
                raise Refused(f"Item {item!r} has no {player} player.")
            db.execute(
                "UPDATE raters SET span_item = ?, span_player = ?, span_since = ?, span_s = NULL "
                "WHERE token = ?",
                (item, player, now, token),
            )
            db.execute(
                "UPDATE plays SET plays = plays + 1, first_play = COALESCE(first_play, ?) "
                "WHERE rater = ? AND item = ?",
                (time.time(), token, item),
            )
            db.execute(
                "INSERT INTO listens (rater, item, player, plays) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (rater, item, player) DO UPDATE SET plays = plays + 1",
                (token, item, player),
            )
            return db.execute(
                "SELECT plays FROM listens WHERE rater = ? AND item = ? AND player = ?", (token, item, player)
            ).fetchone()[0]

    def _end_span(
        self, db: sqlite3.Connection, token: str, item: str, player: str, paused: bool
    ) -> float | None:
        """End the open span if it is ``player``'s of ``item``: its seconds (added to ``heard_s``), or None
        when it has none. A pause keeps the span's length for an end that follows at once (a player
        pauses as it reaches the end); any other play starts a new span."""
        span_item, span_player, since, span_s = db.execute(
            "SELECT span_item, span_player, span_since, span_s FROM raters WHERE token = ?", (token,)
        ).fetchone()
        if (span_item, span_player) != (item, player):
            return None
        if since is not None:
            seconds = max(0.0, self.clock() - since)
            db.execute(
                "UPDATE plays SET heard_s = heard_s + ? WHERE rater = ? AND item = ?", (seconds, token, item)
            )
        elif span_s is not None and not paused:
            seconds = span_s
        else:
            return None
        if paused:
            db.execute("UPDATE raters SET span_since = NULL, span_s = ? WHERE token = ?", (seconds, token))
        else:
            db.execute(
                "UPDATE raters SET span_item = NULL, span_player = NULL, span_since = NULL, span_s = NULL "
                "WHERE token = ?",
                (token,),
            )
        return seconds

    def pause(self, token: str, browser: str, item: str, player: str = "sample") -> float:
        """A playback of ``player`` paused: its span ends, and a later play starts a new one (spans are
        never summed); returns its seconds (0 when it had none open)."""
        with self._tx() as db:
            self._on_screen(db, token, browser, item)
            return self._end_span(db, token, item, player, paused=True) or 0.0

    def heard(self, token: str, browser: str, item: str, player: str = "sample") -> tuple[bool, bool, float]:
        """A playback of ``player`` reached its end: (whether this span heard it through, whether every
        player of the item is heard through now, the span's seconds).

        An end without a span of this player (never played, or another player started since) is refused.
        """
        with self._tx() as db:
            self._on_screen(db, token, browser, item)
            seconds = self._end_span(db, token, item, player, paused=False)
            if seconds is None:
                raise Refused("The sample ended without being played from its start.")
            through = seconds >= self.length(token, item, player) - LISTEN_TOLERANCE_S
            if through:
                db.execute(
                    "UPDATE listens SET through = through + 1 WHERE rater = ? AND item = ? AND player = ?",
                    (token, item, player),
                )
                least = min(
                    db.execute(
                        "SELECT through FROM listens WHERE rater = ? AND item = ?", (token, item)
                    ).fetchall()
                )[0]
                db.execute(
                    "UPDATE plays SET heard = ? WHERE rater = ? AND item = ?",
                    (least if self._all_heard(db, token, item) else 0, token, item),
                )
            return through, self._all_heard(db, token, item), seconds

    def submit(self, token: str, browser: str, item: str, scores: dict[str, float]) -> None:
        """Store one answer per dimension for ``item``, the one on screen, all or nothing.

        A sample rated already is changed only when the rater went back to it (``previous``); a second
        tab still showing an older sample is refused.
        """
        dims = self.defn.dimension_names()
        unknown = sorted(set(scores) - set(dims))
        if unknown:
            raise Refused(f"Unknown dimension {unknown[0]!r} (this test rates {', '.join(dims)}).")
        missing = [d for d in dims if scores.get(d) is None]
        if missing:
            raise Unanswered(missing)
        for d in dims:
            problem = self.defn.scale.problem(scores[d])
            if problem:
                raise Refused(f"{d}: {problem}.")
        now = time.time()
        with self._tx() as db:
            rated = (
                db.execute(
                    "SELECT COUNT(*) FROM ratings WHERE rater = ? AND item = ?", (token, item)
                ).fetchone()[0]
                > 0
            )
            try:
                revise = self._on_screen(db, token, browser, item)
            except NotShown:
                if rated:
                    raise AlreadyRated(
                        "This sample was rated already, in another tab or window; your answers here were "
                        "not stored. Go back to it with Previous sample to change them."
                    ) from None
                raise
            if rated and not revise:
                raise AlreadyRated("This sample was rated already; go back to it with Previous sample.")
            through = dict(
                db.execute("SELECT player, through FROM listens WHERE rater = ? AND item = ?", (token, item))
            )
            left = [PLAYER_NAMES[self.defn.kind][p] for p in self.players(item) if not through.get(p)]
            if left:
                raise Refused(
                    f"Listen to {' and '.join(left)} from start to end at normal speed before rating."
                )
            shown, plays, heard, heard_s = db.execute(
                "SELECT shown, plays, heard, heard_s FROM plays WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()
            flipped = self.flipped(token, item)
            sign = -1.0 if flipped else 1.0  # stored as system vs baseline
            db.executemany(
                "INSERT INTO ratings (rater, item, dimension, score, plays, heard, heard_s, shown, "
                "first_submitted, updated, flipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rater, item, dimension) DO UPDATE SET score = excluded.score, "
                "plays = excluded.plays, heard = excluded.heard, heard_s = excluded.heard_s, "
                "updated = excluded.updated, revisions = revisions + 1",
                [
                    (token, item, d, sign * scores[d] + 0.0, plays, heard, heard_s, shown, now, now, flipped)
                    for d in dims
                ],
            )

    def ratings(self) -> list[dict]:
        rows = self._connection().execute(
            f"SELECT {', '.join(RATING_COLUMNS)} FROM ratings ORDER BY rater, item, dimension"
        )
        return [dict(zip(RATING_COLUMNS, row, strict=True)) for row in rows]

    def ratings_csv(self) -> str:
        """Every rating with its system, utterance and check kind (from the definition), its place in the
        rater's order, the rater's worker id and the report's verdict on the rater ("kept" or why not)."""
        from speech_lpo.mos.report import screen  # numpy and scipy: only for the export

        rows = self.ratings()
        verdict = screen(self.defn, rows)
        raters = {
            token: (worker or "", json.loads(items) if items else [])
            for token, worker, items in self._connection().execute("SELECT token, worker, items FROM raters")
        }
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["system", "utterance", "check", "position", "worker", "verdict", *RATING_COLUMNS])
        for row in rows:
            item = self.defn.items.get(row["item"])
            labels = (item.system, item.utterance, item.expect) if item else (None, None, None)
            worker, order = raters[row["rater"]]
            position = order.index(row["item"]) if row["item"] in order else ""
            writer.writerow(
                [x or "" for x in labels]
                + [position, worker, verdict[row["rater"]] or "kept"]
                + [row[c] for c in RATING_COLUMNS]
            )
        return out.getvalue()

    def progress(self) -> list[dict]:
        """One entry per rater: kind, items assigned and done, last submission (for the admin page)."""
        n_dims = len(self.defn.dimensions)
        db = self._connection()
        done = dict(
            db.execute(
                "SELECT rater, COUNT(*) FROM (SELECT rater FROM ratings GROUP BY rater, item "
                "HAVING COUNT(*) = ?) GROUP BY rater",
                (n_dims,),
            )
        )
        last = dict(db.execute("SELECT rater, MAX(updated) FROM ratings GROUP BY rater"))
        out = []
        for token, kind, created, expires, items, qualified, comment in db.execute(
            "SELECT token, kind, created, expires, items, qualified, comment FROM raters ORDER BY created"
        ):
            out.append(
                {
                    "rater": token,
                    "kind": kind,
                    "created": _date(created),
                    "expires": _date(expires) if expires else "",
                    "total": len(json.loads(items)) if items else 0,
                    "done": done.get(token, 0),
                    "last": _date(last[token]) if token in last else "",
                    "qualified": {None: "", 1: "yes", 0: "no"}[qualified],
                    "comment": comment or "",
                }
            )
        return out
