"""The annotation store: SQLite (WAL) plus content-addressed 16 kHz audio under one data folder.

Layout of ``SERDEMO_DATA`` (default ``./data``)::

    store.sqlite3            clips + append-only label history
    audio/ab/abcdef....wav   one file per distinct clip, named by the SHA-256 of its samples

Every label is a new row (who, when, the model's prediction, its confidence, the checkpoint); the
current label of a clip is its latest row. Writes are transactions, audio is written to a temporary
file and renamed, so a crash mid-write leaves neither a partial row nor a partial file.

Annotator names are bounded (:func:`annotator_name`). The exports (every annotator's label per clip,
provenance) live in :mod:`serdemo.export`; agreement in :mod:`serdemo.agreement`, which reads only the
labels saved since its last call (:meth:`Store.labels_since`).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serdemo.audio import SAMPLE_RATE
from serdemo.fsutil import atomic_write

SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    sha256      TEXT PRIMARY KEY,
    path        TEXT NOT NULL,          -- relative to the data folder
    duration_s  REAL NOT NULL,
    source_name TEXT,
    speaker     TEXT,
    created_utc TEXT NOT NULL,
    predicted   TEXT,                   -- the latest analysis of this clip
    confidence  REAL,
    checkpoint  TEXT
);
CREATE TABLE IF NOT EXISTS labels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    clip        TEXT NOT NULL REFERENCES clips(sha256),
    label       TEXT NOT NULL,
    annotator   TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    predicted   TEXT,
    confidence  REAL,
    checkpoint  TEXT
);
CREATE INDEX IF NOT EXISTS labels_clip ON labels(clip, id);
CREATE TABLE IF NOT EXISTS annotators (  -- one row per person: names with the same name_key are one annotator
    key         TEXT PRIMARY KEY,       -- name_key(name)
    name        TEXT NOT NULL           -- the spelling seen first, under which their labels are filed
);
"""
# columns added after the first release; an older database gains them when opened (ALTER TABLE)
ADDED_COLUMNS = (
    ("clips", "source_clip", "TEXT"),  # a segment of a longer recording: that recording's content hash
    ("clips", "offset_s", "REAL"),  # and where in it the segment starts
)


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message says why."""


@dataclass
class LabelEvent:
    id: int
    clip: str
    label: str
    annotator: str
    created_utc: str
    predicted: str | None
    confidence: float | None
    checkpoint: str | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def clip_hash(wave: np.ndarray) -> str:
    """SHA-256 of the 16-bit PCM samples that get stored (so the same audio hashes the same)."""
    return hashlib.sha256(to_pcm16(wave).tobytes()).hexdigest()


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(wave, -1.0, 32767 / 32768) * 32768).round().astype("<i2")


def as_stored(wave: np.ndarray) -> np.ndarray:
    """The waveform exactly as the store keeps it (16-bit PCM), back as float32."""
    return to_pcm16(wave).astype(np.float32) / 32768


MAX_ANNOTATOR_CHARS = 64  # a name is shown in every table row and kappa column: keep it short
MAX_LABEL_CHARS = 40
NAME_PUNCTUATION = frozenset(" .-_@'")  # besides letters, digits and combining marks


def annotator_name(name: str | None) -> str:
    """The annotator name as the store keeps it, or a :class:`StoreError` that says what to change.

    Unicode NFKC (``ａｌｉｃｅ`` is ``alice``, a decomposed accent composed), surrounding and repeated whitespace
    removed; 1..``MAX_ANNOTATOR_CHARS`` characters of
    letters, digits, combining marks, spaces and ``. - _ @ '`` (no control, format or other symbols), in one
    alphabet where it uses Latin, Cyrillic or Greek letters (:func:`name_key`). Names with the same
    :func:`name_key` are one annotator: the store files a label under the spelling it saw first.
    """
    if name is not None and not isinstance(name, str):
        raise StoreError("the annotator name must be text")
    if name is not None and len(name) > 16 * MAX_ANNOTATOR_CHARS:  # before NFKC, which can grow a text
        raise StoreError(f"the annotator name is {len(name):,} characters long: use at most {MAX_ANNOTATOR_CHARS}")
    name = " ".join(unicodedata.normalize("NFKC", name or "").split())
    if not name:
        raise StoreError("enter your name (annotator) before saving a label")
    if len(name) > MAX_ANNOTATOR_CHARS:
        raise StoreError(f"the annotator name is {len(name)} characters long: use at most {MAX_ANNOTATOR_CHARS}")
    bad = sorted({c for c in name if c not in NAME_PUNCTUATION and unicodedata.category(c)[0] not in "LMN"})
    if bad:
        shown = ", ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad[:5])
        raise StoreError(f"the annotator name may hold only letters, digits, spaces and . - _ @ ' (not {shown})")
    if not name_key(name, "annotator name"):
        raise StoreError("enter your name (annotator) before saving a label")
    return name


# Cyrillic and Greek letters that look like Latin ones (Unicode's confusables, the common ones): a name
# written wholly in them is read as the Latin name it shows; a name that mixes alphabets is refused.
LOOKALIKES = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеѕіјорсхуһԁԛԝӏҮ"  # Cyrillic
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαικνρυχ",  # Greek
    "ABESIJKMHOPCTXYaesijopcxyhdqwlY"
    "ABEZHIKMNOPTYXoaikvpux")
SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")  # alphabets whose letters are confused with each other


def name_key(name: str | None, what: str = "name") -> str:
    """What identifies a person's name (an annotator, a voice): Unicode NFKC (full-width ``ａｌｉｃｅ`` is
    ``alice``), case folded, inner whitespace collapsed, stripped, a leading ``@`` dropped (``@alice`` is
    ``alice``); a name written wholly in Cyrillic or Greek letters that look like Latin ones reads as that
    Latin name (``аӏісе`` is ``alice``). A name mixing Latin, Cyrillic and Greek letters (``аlice`` with a
    Cyrillic ``а``) is refused (:class:`StoreError`): it could pass for another. "" for no name."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise StoreError(f"the {what} must be text")
    text = " ".join(unicodedata.normalize("NFKC", name).split()).lstrip("@").strip()
    scripts = {script for script in (_script(c) for c in text if c.isalpha()) if script in SCRIPTS}
    if len(scripts) > 1:
        names = " and ".join(sorted(s.title() for s in scripts))
        raise StoreError(f"the {what} mixes {names} letters, which look alike: type it in one alphabet")
    if scripts and scripts != {"LATIN"}:
        mapped = text.translate(LOOKALIKES)
        if all(_script(c) == "LATIN" for c in mapped if c.isalpha()):
            text = mapped
    return text.casefold()


def _script(ch: str) -> str:
    """The alphabet a letter belongs to, as the first word of its Unicode name (``LATIN``, ``CYRILLIC``, ...)."""
    return unicodedata.name(ch, "").split(" ", 1)[0]


MAX_SOURCE_CHARS = 255  # a file name (a path's last part) as an upload or a recording names it


def _bounded(text: str | None, limit: int) -> str | None:
    """Free text kept for display and provenance: printable, at most ``limit`` characters (cut, not refused:
    the clip itself is what matters)."""
    if text is None:
        return None
    text = "".join(c if c.isprintable() else " " for c in str(text)).strip()
    return text[:limit] or None


def _checked(label: str | None, annotator: str | None) -> tuple[str, str]:
    label = (label or "").strip()
    if not label:
        raise StoreError("choose a label before saving")
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise StoreError(f"a label is at most {MAX_LABEL_CHARS} printable characters")
    return label, annotator_name(annotator)


def _filed_under(con, annotator: str) -> str:
    """The spelling ``annotator``'s labels are filed under: the first one the store saw with its
    :func:`name_key` (``Alice``, then ``ａｌｉｃｅ`` and ``@alice`` are all ``Alice``). Inside a write transaction."""
    key = name_key(annotator, "annotator name")
    con.execute("INSERT OR IGNORE INTO annotators (key, name) VALUES (?, ?)", (key, annotator))
    return con.execute("SELECT name FROM annotators WHERE key=?", (key,)).fetchone()[0]


def _insert_label(con, sha, label, annotator, predicted, confidence, checkpoint) -> int:
    cur = con.execute("INSERT INTO labels (clip,label,annotator,created_utc,predicted,confidence,checkpoint)"
                      " VALUES (?,?,?,?,?,?,?)", (sha, label, annotator, _now(), predicted, confidence, checkpoint))
    return int(cur.lastrowid)


SPACES_STORAGE = Path("/data")  # a Hugging Face Space's persistent storage, when the Space has it


def default_data_dir() -> Path:
    """``SERDEMO_DATA``; else ``/data/serdemo`` on a Space with persistent storage; else ``./data``."""
    if os.environ.get("SERDEMO_DATA"):
        return Path(os.environ["SERDEMO_DATA"])
    if SPACES_STORAGE.is_dir() and os.access(SPACES_STORAGE, os.W_OK):
        return SPACES_STORAGE / "serdemo"
    return Path("data")


class Store:
    def __init__(self, directory: str | os.PathLike | None = None, timeout_s: float = 60.0):
        self.directory = Path(directory) if directory is not None else default_data_dir()
        try:
            (self.directory / "audio").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data folder {self.directory}: {exc}") from None
        self.db_path = self.directory / "store.sqlite3"
        self.timeout_s = timeout_s
        self._local = threading.local()
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns an older database lacks (one transaction, so two processes cannot race; the
        write lock is taken only when a column is missing, so opening a store never waits for a writer)."""
        with self._connect() as con:
            have = {(t, r[1]) for t in {t for t, _, _ in ADDED_COLUMNS} for r in con.execute(f"PRAGMA table_info({t})")}
            unfiled = con.execute("SELECT annotator FROM labels GROUP BY annotator HAVING annotator NOT IN "
                                  "(SELECT name FROM annotators) ORDER BY MIN(id)").fetchall()
        if unfiled:  # labels saved before annotators were keyed: each name's first spelling files the later ones
            with self._write() as con:
                for (name,) in unfiled:
                    try:
                        key = name_key(name)
                    except StoreError:
                        continue
                    con.execute("INSERT OR IGNORE INTO annotators (key, name) VALUES (?, ?)", (key, name))
        if all((t, c) in have for t, c, _ in ADDED_COLUMNS):
            return
        with self._write() as con:
            for table, column, kind in ADDED_COLUMNS:
                have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self):
        """This thread's connection (opened once per thread and process, then reused: closing the last
        connection checkpoints the WAL with an fsync, which made every save cost ~12 ms)."""
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():
            con = sqlite3.connect(self.db_path, timeout=self.timeout_s, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con, self._local.pid = con, os.getpid()
        con.row_factory = None
        yield con

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local.con = None

    @contextmanager
    def _write(self):
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # the connection is reused: never leave it holding the write lock
                    con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ clips
    def add_clip(self, wave: np.ndarray, source_name: str | None = None, speaker: str | None = None,
                 predicted: str | None = None, confidence: float | None = None,
                 checkpoint: str | None = None, source_clip: str | None = None,
                 offset_s: float | None = None) -> str:
        """Store 16 kHz mono float audio once; returns its content hash (idempotent).

        ``predicted``/``confidence``/``checkpoint`` record the latest analysis (they order the queue).
        ``source_clip``/``offset_s``: the clip is a segment of a longer recording (its content hash, as
        :func:`clip_hash` names 16 kHz audio) starting ``offset_s`` seconds into it.
        """
        wave = np.asarray(wave, dtype=np.float32)
        source_name, speaker = _bounded(source_name, MAX_SOURCE_CHARS), _bounded(speaker, MAX_ANNOTATOR_CHARS)
        if wave.ndim != 1 or wave.size == 0:
            raise StoreError("a clip must be non-empty mono audio")
        sha = clip_hash(wave)
        rel = Path("audio") / sha[:2] / f"{sha}.wav"
        path = self.directory / rel
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: sf.write(f, to_pcm16(wave), SAMPLE_RATE, format="WAV", subtype="PCM_16"))
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO clips (sha256, path, duration_s, source_name, speaker, created_utc,"
                        " predicted, confidence, checkpoint, source_clip, offset_s) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (sha, rel.as_posix(), len(wave) / SAMPLE_RATE, source_name, speaker, _now(),
                         predicted, confidence, checkpoint, source_clip, offset_s))
            if predicted is not None:
                con.execute("UPDATE clips SET predicted=?, confidence=?, checkpoint=? WHERE sha256=?",
                            (predicted, confidence, checkpoint, sha))
        return sha

    def clip_info(self, sha: str) -> dict:
        """A stored clip's row (read-only): duration_s, source_name, speaker, created_utc and its latest
        analysis (predicted, confidence, checkpoint)."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM clips WHERE sha256=?", (sha or "",)).fetchone()
        if row is None:
            raise StoreError(f"no clip {(sha or '')[:12]} in the store: analyse it first")
        return dict(row)

    def clip_source(self, sha: str) -> tuple[str | None, float | None]:
        """``(source clip hash, offset_s)`` of a stored segment of a longer recording; (None, None) otherwise."""
        with self._connect() as con:
            row = con.execute("SELECT source_clip, offset_s FROM clips WHERE sha256=?", (sha,)).fetchone()
        if row is None:
            raise StoreError(f"no clip {(sha or '')[:12]} in the store")
        return row[0], row[1]

    def clip_path(self, sha: str) -> Path:
        with self._connect() as con:
            row = con.execute("SELECT path FROM clips WHERE sha256=?", (sha,)).fetchone()
        if row is None:
            raise StoreError(f"no clip {sha[:12]} in the store")
        return self.directory / row[0]

    # ------------------------------------------------------------------ labels
    def label_clip(self, sha: str, label: str | None, annotator: str) -> LabelEvent:
        """Append a label that records the clip's latest analysis (the model's prediction, its
        confidence and the checkpoint, as :meth:`add_clip` stored them), whoever the caller is.

        ``label=None`` confirms the model's prediction. Read and write are one transaction.
        """
        annotator = annotator_name(annotator)  # refused before any lock is taken
        with self._write() as con:
            row = con.execute("SELECT predicted, confidence, checkpoint FROM clips WHERE sha256=?",
                              (sha,)).fetchone()
            if row is None:
                raise StoreError(f"no clip {(sha or '')[:12]} in the store: analyse it first")
            predicted, confidence, checkpoint = row
            if label is None:
                if predicted is None:
                    raise StoreError(f"clip {sha[:12]} has no model prediction to confirm: analyse it first")
                label = predicted
            label, annotator = _checked(label, annotator)
            annotator = _filed_under(con, annotator)
            event_id = _insert_label(con, sha, label, annotator, predicted, confidence, checkpoint)
            return LabelEvent(*con.execute("SELECT * FROM labels WHERE id=?", (event_id,)).fetchone())

    def history(self, sha: str) -> list[LabelEvent]:
        with self._connect() as con:
            rows = con.execute("SELECT * FROM labels WHERE clip=? ORDER BY id", (sha,)).fetchall()
        return [LabelEvent(*r) for r in rows]

    def current_labels(self) -> dict[str, LabelEvent]:
        """clip -> its latest label event."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT l.* FROM labels l JOIN (SELECT clip, MAX(id) AS id FROM labels GROUP BY clip) m"
                " ON l.id = m.id ORDER BY l.id").fetchall()
        return {r[1]: LabelEvent(*r) for r in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """Current labels per label, and label events per annotator."""
        current = self.current_labels()
        per_label: dict[str, int] = {}
        for ev in current.values():
            per_label[ev.label] = per_label.get(ev.label, 0) + 1
        with self._connect() as con:
            per_annotator = dict(con.execute("SELECT annotator, COUNT(*) FROM labels GROUP BY annotator"))
        return {"label": dict(sorted(per_label.items())), "annotator": per_annotator}

    def queue(self, limit: int = 50, unlabelled_only: bool = False) -> list[dict]:
        """Stored clips ordered by the model's confidence in its latest prediction, least first
        (``unlabelled_only``: clips nobody has labelled yet)."""
        where = " WHERE l.id IS NULL" if unlabelled_only else ""
        with self._connect() as con:
            rows = con.execute(
                "SELECT c.sha256, c.path, c.duration_s, c.source_name, l.label, c.predicted, c.confidence,"
                " l.annotator, l.created_utc FROM clips c LEFT JOIN labels l ON l.id ="
                " (SELECT MAX(id) FROM labels WHERE clip = c.sha256)" + where +
                " ORDER BY COALESCE(c.confidence, 0) ASC, c.created_utc ASC LIMIT ?", (limit,)).fetchall()
        keys = ("clip", "path", "duration_s", "source_name", "label", "predicted", "confidence", "annotator", "when")
        return [dict(zip(keys, r)) for r in rows]

    def annotator_labels(self) -> list[LabelEvent]:
        """Each annotator's latest label of each clip (read-only; what agreement is computed on),
        ordered by clip, then annotator."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT l.* FROM labels l JOIN (SELECT clip, annotator, MAX(id) AS id FROM labels"
                " GROUP BY clip, annotator) m ON l.id = m.id ORDER BY l.clip, l.annotator").fetchall()
        return [LabelEvent(*r) for r in rows]

    def last_label_id(self) -> int:
        """The highest label id (0 without labels). Labels are append-only and ids grow in commit order, so
        this changes with every saved label and with nothing else."""
        with self._connect() as con:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM labels").fetchone()[0])

    def labels_since(self, after_id: int) -> list[LabelEvent]:
        """Label events with an id above ``after_id``, in the order they were saved."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM labels WHERE id > ? ORDER BY id", (int(after_id),)).fetchall()
        return [LabelEvent(*r) for r in rows]

    # ------------------------------------------------------------------ export
    def labelled(self) -> list:
        """``(current label event, (sha, relative path, speaker))`` for every labelled clip."""
        current = self.current_labels()
        with self._connect() as con:
            clips = {r[0]: r for r in con.execute("SELECT sha256, path, speaker FROM clips")}
        return [(ev, clips[ev.clip]) for ev in current.values()]

    def labelled_clips(self) -> list[tuple[dict, list[LabelEvent]]]:
        """Every labelled clip: its row (as :meth:`clip_info`) and each annotator's latest label of it
        (ordered by when it was saved), in the order the clips were first labelled."""
        events = self.annotator_labels()
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = {r["sha256"]: dict(r) for r in con.execute(
                "SELECT * FROM clips WHERE sha256 IN (SELECT DISTINCT clip FROM labels)")}
        per_clip: dict[str, list[LabelEvent]] = {}
        for ev in sorted(events, key=lambda e: e.id):
            per_clip.setdefault(ev.clip, []).append(ev)
        first = {clip: min(e.id for e in evs) for clip, evs in per_clip.items()}
        return [(rows[clip], per_clip[clip]) for clip in sorted(per_clip, key=first.get)]

