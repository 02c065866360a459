"""Ratings store: one SQLite file in WAL mode (DESIGN.md, Real components and defaults).

One row per (rater, item, dimension) in ``ratings``; a rating changed later is updated in place (its
``revisions`` count goes up), never duplicated. Every call that writes is one ``BEGIN IMMEDIATE``
transaction that either validates and commits everything or writes nothing, so a submission the
panel acknowledged is on disk even if the server is killed the next moment.

A rater is identified by a token: an invitation made with ``mos invite``, or a UUID the server
issues when the test is open. The browser that entered with a token owns it. Another browser that
presents the invitation code itself (link or typed) takes it over, and the first browser's page
ends; a browser that only remembers an old token is refused. ``release`` frees a token for anyone.

The listening gate: the panel reports the player's play, pause and end events; the store measures
the time between a play and the next pause or end on its own clock, so seeking forward or playing
faster than 1x leaves less time heard than the sample lasts, and a rating is accepted only after
``heard_s >= duration - LISTEN_TOLERANCE_S`` and an end reached after a play.
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
    comment TEXT
);
CREATE TABLE IF NOT EXISTS plays (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    shown REAL NOT NULL,
    first_play REAL,
    plays INTEGER NOT NULL DEFAULT 0,  -- playbacks started
    heard INTEGER NOT NULL DEFAULT 0,  -- playbacks that reached the end with the whole sample heard
    heard_s REAL NOT NULL DEFAULT 0,   -- seconds between play and pause/end events, summed
    playing_since REAL,                -- time of the play event still open, NULL when paused
    PRIMARY KEY (rater, item)
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
]


# what the server's clock may measure short of a sample's length (event latency), in seconds
LISTEN_TOLERANCE_S = 0.3


class Refused(Exception):
    """A request the store turns down; the message is meant for the rater or the client."""


class Unanswered(Refused):
    """A submission that leaves questions unanswered; ``missing`` names their dimensions."""

    def __init__(self, missing: list[str]):
        super().__init__(f"Please answer every question; missing: {', '.join(missing)}.")
        self.missing = missing


class AlreadyRated(Refused):
    """A submission for a sample that is rated already, not sent as a revision (e.g. a second tab)."""


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
                ("plays", "playing_since", "REAL"),
                ("ratings", "heard_s", "REAL NOT NULL DEFAULT 0"),
                ("raters", "qualified", "INTEGER"),
                ("raters", "trained", "INTEGER NOT NULL DEFAULT 0"),
                ("raters", "comment", "TEXT"),
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
        finally:
            db.close()
        if name != defn.name:
            raise Refused(f"{self.path} holds ratings of test {name!r}, not {defn.name!r} ({defn.path})")
        gone = sorted(assigned - set(defn.items))
        if gone:
            raise Refused(
                f"{self.path}: raters were given items that {defn.path} no longer defines: {gone[:5]}"
            )

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

    def enter(self, token: str | None, browser: str, takeover: bool = False) -> str:
        """Let a browser in; returns the rater token (a new UUID when the test is open and none is given).

        ``takeover``: the rater presented the code itself (link or typed), so this browser becomes the
        token's owner and the previous browser's page ends; a remembered token does not take over.
        """
        if not browser:
            raise Refused("Missing browser id.")
        with self._tx() as db:
            if token and takeover:
                db.execute("UPDATE raters SET browser = NULL WHERE token = ?", (token,))
            if not token:
                if self.defn.invitations != "open":
                    raise Refused("An invitation code is required to take part in this test.")
                token = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO raters (token, kind, created) VALUES (?, 'uuid', ?)", (token, time.time())
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
                "UPDATE raters SET browser = ?, rater_index = ?, items = ? WHERE token = ?",
                (browser, index, json.dumps(items), token),
            )
        return token

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
        """CMOS: whether this rater hears ``item``'s system as A and the baseline as B (random per rater
        and item, fixed by a keyed hash, so it needs no storage). Scores are stored as system vs baseline."""
        if self.defn.kind != "cmos" or self.defn.items[item].system is None:
            return False
        key = self.secret("ab_order_key")
        return hmac.new(key.encode(), f"{token}:{item}".encode(), hashlib.sha256).digest()[0] & 1 == 1

    def _played_length(self, token: str, item: str) -> float:
        """The length of the audio the gated player (the sample, or B) plays for this rater."""
        entry = self.defn.items[item]
        return entry.reference_duration if self.flipped(token, item) else entry.duration

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

    def next_item(self, token: str, browser: str) -> tuple[str | None, int, int, int, int]:
        """(first unrated item or None when finished, items done, items in total, its heard-through
        plays so far, its place in the rater's order).

        Records when the item was first shown.
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
                return None, len(items), len(items), 0, len(items)
            db.execute(
                "INSERT OR IGNORE INTO plays (rater, item, shown) VALUES (?, ?, ?)",
                (token, todo[0], time.time()),
            )
            (heard,) = db.execute(
                "SELECT heard FROM plays WHERE rater = ? AND item = ?", (token, todo[0])
            ).fetchone()
            return todo[0], len(items) - len(todo), len(items), heard, items.index(todo[0])

    def order(self, token: str, browser: str) -> list[str]:
        """The item ids of rater ``token`` in the order they are heard."""
        _, items = self._rater(self._connection(), token, browser)
        if items is None:
            raise Refused("Enter the test first.")
        return items

    def _assigned(self, db: sqlite3.Connection, token: str, browser: str, item: str) -> None:
        if self.stage(token, browser) != "rating":
            raise Refused("Pass the qualification and hear the training examples first.")
        _, items = self._rater(db, token, browser)
        if item not in self.defn.items:
            raise Refused(f"Unknown item {item!r}.")
        if items is None or item not in items:
            raise Refused(f"Item {item!r} is not one of this rater's items.")

    def previous(
        self, token: str, browser: str, item: str | None
    ) -> tuple[str, dict[str, float], int] | None:
        """The rated sample before ``item`` (the last one when ``item`` is None), its stored answers and
        its place in the order, so that a rater can go back and change them; None before the first."""
        with self._tx() as db:
            _, items = self._rater(db, token, browser)
            if items is None:
                raise Refused("Enter the test first.")
            if item is not None and item not in items:
                raise Refused(f"Item {item!r} is not one of this rater's items.")
            at = len(items) if item is None else items.index(item)
            if at == 0:
                return None
            answers = dict(
                db.execute(
                    "SELECT dimension, score FROM ratings WHERE rater = ? AND item = ?",
                    (token, items[at - 1]),
                )
            )
            return items[at - 1], answers, at - 1

    def play(self, token: str, browser: str, item: str) -> int:
        """A playback of ``item`` started: opens a listening span; returns the plays so far."""
        now = self.clock()
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            db.execute(
                "INSERT INTO plays (rater, item, shown, first_play, plays, playing_since) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (rater, item) DO UPDATE SET plays = plays + 1, "
                "first_play = COALESCE(first_play, ?), playing_since = ?",
                (token, item, time.time(), time.time(), now, time.time(), now),
            )
            return db.execute(
                "SELECT plays FROM plays WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()[0]

    def _close_span(self, db: sqlite3.Connection, token: str, item: str) -> tuple[int, float]:
        """Add the open listening span (if any) to ``heard_s``; returns (plays, heard_s)."""
        now = self.clock()
        db.execute(
            "UPDATE plays SET heard_s = heard_s + MAX(0, ? - playing_since), playing_since = NULL "
            "WHERE rater = ? AND item = ? AND playing_since IS NOT NULL",
            (now, token, item),
        )
        row = db.execute(
            "SELECT plays, heard_s FROM plays WHERE rater = ? AND item = ?", (token, item)
        ).fetchone()
        return row or (0, 0.0)

    def pause(self, token: str, browser: str, item: str) -> float:
        """A playback of ``item`` paused: closes the listening span; returns the seconds heard."""
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            return self._close_span(db, token, item)[1]

    def heard(self, token: str, browser: str, item: str) -> tuple[bool, float]:
        """A playback of ``item`` reached its end: (whether the whole sample is heard now, seconds heard).

        An end without a play before it is refused; an end reached after skipping counts nothing.
        """
        length = self._played_length(token, item) if item in self.defn.items else 0.0
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            plays, heard_s = self._close_span(db, token, item)
            if plays == 0:
                raise Refused("The sample ended without being played.")
            through = heard_s >= length - LISTEN_TOLERANCE_S
            if through:
                db.execute("UPDATE plays SET heard = heard + 1 WHERE rater = ? AND item = ?", (token, item))
            return through, heard_s

    def submit(
        self, token: str, browser: str, item: str, scores: dict[str, float], revise: bool = False
    ) -> None:
        """Store one answer per dimension for ``item``, all or nothing.

        A sample rated already is changed only when ``revise`` says the rater went back to it on
        purpose; otherwise (a second tab on an older sample) the submission is refused.
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
        if item in self.defn.items:
            duration = self._played_length(token, item)
            sign = -1.0 if self.flipped(token, item) else 1.0  # stored as system vs baseline
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            row = db.execute(
                "SELECT shown, plays, heard, heard_s FROM plays WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()
            if row is None or row[1] == 0 or row[2] == 0 or row[3] < duration - LISTEN_TOLERANCE_S:
                heard_s = row[3] if row else 0.0
                raise Refused(
                    f"Listen to the whole sample at normal speed before rating it "
                    f"(heard {heard_s:.1f} s of {duration:.1f} s)."
                )
            shown, plays, heard, heard_s = row
            rated = db.execute(
                "SELECT COUNT(*) FROM ratings WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()[0]
            if rated and not revise:
                raise AlreadyRated(
                    "This sample was rated already, in another tab or window; your answers here were not "
                    "stored. Go back to it with Previous sample to change them."
                )
            db.executemany(
                "INSERT INTO ratings (rater, item, dimension, score, plays, heard, heard_s, shown, "
                "first_submitted, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rater, item, dimension) DO UPDATE SET score = excluded.score, "
                "plays = excluded.plays, heard = excluded.heard, heard_s = excluded.heard_s, "
                "updated = excluded.updated, revisions = revisions + 1",
                [
                    (token, item, d, sign * scores[d] + 0.0, plays, heard, heard_s, shown, now, now)
                    for d in dims
                ],
            )

    def ratings(self) -> list[dict]:
        rows = self._connection().execute(
            f"SELECT {', '.join(RATING_COLUMNS)} FROM ratings ORDER BY rater, item, dimension"
        )
        return [dict(zip(RATING_COLUMNS, row, strict=True)) for row in rows]

    def ratings_csv(self) -> str:
        """Every rating with its system, utterance and attention-check kind (from the definition)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["system", "utterance", "check", *RATING_COLUMNS])
        for row in self.ratings():
            item = self.defn.items.get(row["item"])
            labels = (item.system, item.utterance, item.expect) if item else (None, None, None)
            writer.writerow([x or "" for x in labels] + [row[c] for c in RATING_COLUMNS])
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
