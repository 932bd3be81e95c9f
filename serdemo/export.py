"""Exports of the annotation store: every annotator's label of every labelled clip, with its provenance.

Two layouts, both ``folder/audio/<sha256>.wav`` (content-hash names: nothing can land outside
``folder``) beside one CSV with one row per labelled clip:

* :func:`export_audiofolder`: ``metadata.csv`` as the ``datasets`` library's ``audiofolder`` builder reads it;
* :func:`export_training_folder` / :func:`write_manifest`: ``manifest.csv`` as
  ``python -m training.fit --corpus manifest=FILE`` reads it (``training.corpora.scan_manifest``).

Per clip: ``label`` is the majority of the annotators' latest labels (``label_rule`` says how it was
decided: ``single``, ``unanimous``, ``majority`` or ``tie: latest``, a tie going to the label saved last),
``agreement`` the share of the clip's annotators who gave it (empty with one annotator),
``annotations`` every annotator's latest label as a JSON object. Provenance: ``source_name`` (the file
the audio came from, without a timeline segment's `` @ 1.23 s``), ``source_clip`` (the content hash of
the recording the clip was cut from, or of the clip itself when it is a whole upload: the hash
``training.splits.content_hash`` gives a corpus file), ``offset_s``, and ``corpus``, ``speaker``,
``gender`` and ``naturalness`` as far as they are known: a file named by a corpus's convention (EMO-DB,
RAVDESS, nEMO, EMOVO: :mod:`serdemo.corpus_names`) is acted speech of that corpus's speaker; anything else
has naturalness ``unknown`` and an empty speaker (never a made-up one). ``README.txt`` in the folder counts
what is unknown.

No Gradio here: the UI calls :func:`export_zip` and shows :meth:`ExportSummary.message`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from serdemo.corpus_names import (EMODB_FEMALE, EMODB_MALE, EMODB_NAME, NEMO_NAME,  # noqa: F401  (re-exported)
                                 RAVDESS_NAME, named_clip)
from serdemo.csvsafe import safe_cell
from serdemo.fsutil import atomic_write
from serdemo.store import LabelEvent, Store, StoreError

KINDS = ("audiofolder", "manifest")
STORE_CORPUS = "store"  # the manifest's corpus column: stored clips (training keeps them out of dev/test)
UNKNOWN_SPEAKER = "unknown"  # the manifest's speaker when none is known (its reader needs one; see speaker_known)

SEGMENT_SUFFIX = re.compile(r"\s+@\s+\d+(?:\.\d+)?\s*s$")  # how the Timeline tab names a stored segment

METADATA_COLUMNS = ("file_name", "label", "label_rule", "agreement", "n_annotators", "annotations",
                    "source_name", "source_clip", "offset_s", "corpus", "speaker", "gender", "naturalness",
                    "duration_s", "predicted", "confidence", "checkpoint", "last_labelled_utc")
# the first six are what training.corpora.scan_manifest reads today
MANIFEST_COLUMNS = ("path", "emotion", "speaker", "gender", "corpus", "naturalness",
                    "speaker_known", "source_corpus", "source_name", "source_clip", "offset_s",
                    "label_rule", "agreement", "n_annotators", "annotations")


@dataclass(frozen=True)
class Origin:
    """Where a clip's audio came from, as far as its name tells; empty strings are unknown."""

    source_name: str
    corpus: str
    speaker: str  # corpus-qualified ("ravdess:12") or as entered; "" when unknown
    gender: str  # "female" / "male" / ""
    naturalness: str  # "acted" / "natural" / "unknown"


def source_file_name(source_name: str | None) -> str:
    """The file name in a stored ``source_name``: no folders, no timeline suffix (``talk.wav @ 1.20 s``)."""
    name = SEGMENT_SUFFIX.sub("", (source_name or "").strip())
    return PureWindowsPath(name).name if "\\" in name else Path(name).name if name else ""


def origin_of(source_name: str | None, speaker: str | None = None) -> Origin:
    """Corpus, speaker, gender and naturalness of a clip from its source file name (each corpus's convention,
    :data:`serdemo.corpus_names.NAME_RULES`, the rules ``training/corpora.py``'s adapters read with) and an
    entered ``speaker``.

    nEMO's genders live in its ``data.tsv``, not in the name, so they stay unknown here.
    """
    name = source_file_name(source_name)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    entered = (speaker or "").strip()
    if clip := named_clip(stem):
        return Origin(name, clip.corpus, entered or clip.speaker, clip.gender or "", "acted")
    return Origin(name, "", entered, "", "unknown")


def decide(events: list[LabelEvent]) -> tuple[str, str, float | None]:
    """``(label, rule, agreement)`` of one clip from each annotator's latest label (``events`` in the order
    they were saved): the most frequent label; a tie goes to the tied label saved last."""
    if not events:
        raise ValueError("a clip without labels has no decision")
    counts = Counter(e.label for e in events)
    top = max(counts.values())
    tied = {label for label, n in counts.items() if n == top}
    n = len(events)
    if len(tied) > 1:
        label = next(e.label for e in reversed(events) if e.label in tied)
        rule = "tie: latest"
    else:
        (label,) = tied
        rule = "single" if n == 1 else "unanimous" if len(counts) == 1 else "majority"
    return label, rule, (top / n if n > 1 else None)


@dataclass
class ExportRow:
    """One labelled clip as the exports write it."""

    clip: str
    path: Path  # the audio in the store
    label: str
    rule: str
    agreement: float | None
    annotations: dict[str, str]  # annotator -> latest label, in the order they were saved
    source_clip: str
    offset_s: float | None
    origin: Origin
    info: dict
    last_labelled_utc: str


def export_rows(store: Store) -> list[ExportRow]:
    """Every labelled clip of ``store`` with its decision, every annotator's label and its origin."""
    rows = []
    for info, events in store.labelled_clips():
        label, rule, share = decide(events)
        origin = origin_of(info.get("source_name"), info.get("speaker"))
        rows.append(ExportRow(info["sha256"], store.directory / info["path"], label, rule, share,
                              {e.annotator: e.label for e in events}, info.get("source_clip") or info["sha256"],
                              info.get("offset_s"), origin, info, events[-1].created_utc))
    return rows


@dataclass
class ExportSummary:
    folder: Path
    n_clips: int
    n_labels: int  # annotator labels exported (each annotator's latest per clip)
    n_annotators: int
    unknown_speaker: int
    unknown_naturalness: int
    ties: int
    archive: Path | None = None

    def message(self) -> str:
        """One line for the person who asked for the export."""
        parts = [f"{self.n_clips} clips, {self.n_labels} labels by {self.n_annotators} annotators"]
        if self.unknown_speaker:
            parts.append(f"speaker unknown for {self.unknown_speaker} (left empty: do not split by speaker on them)")
        if self.unknown_naturalness:
            parts.append(f"naturalness unknown for {self.unknown_naturalness}")
        if self.ties:
            parts.append(f"{self.ties} ties decided by the latest label (label_rule)")
        return "; ".join(parts) + "."


def _summary(folder: Path, rows: list[ExportRow]) -> ExportSummary:
    return ExportSummary(folder, len(rows), sum(len(r.annotations) for r in rows),
                         len({a for r in rows for a in r.annotations}),
                         sum(not r.origin.speaker for r in rows), sum(r.origin.naturalness == "unknown" for r in rows),
                         sum(r.rule.startswith("tie") for r in rows))


def _number(value, digits: int = 3) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


GENERATED_COLUMNS = frozenset({"file_name", "path"})  # paths we write ourselves: kept as they are, so they resolve


def _write_csv(path: Path, header, rows) -> None:
    """``rows`` under ``header`` as UTF-8 CSV, atomically. Every cell but the paths we generate goes through
    :func:`serdemo.csvsafe.safe_cell`: an upload named ``=HYPERLINK(...).wav`` or a speaker ``@SUM(1+1)`` is
    written as text (``'=...``), never as a formula a spreadsheet would run."""
    keep = [name in GENERATED_COLUMNS for name in header]

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text)
        w.writerow(header)
        w.writerows([cell if kept else safe_cell(cell) for cell, kept in zip(row, keep)] for row in rows)
        text.flush()
        text.detach()  # atomic_write still owns (and fsyncs) the binary file

    atomic_write(path, write)


def _copy_audio(rows: list[ExportRow], folder: Path) -> None:
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for r in rows:
        if not re.fullmatch(r"[0-9a-f]{64}", r.clip):
            raise StoreError(f"clip {r.clip[:12]!r} is not named by its content hash; the store is damaged")
        dest = folder / "audio" / f"{r.clip}.wav"
        if dest.exists():
            continue
        # a copy, never a hard link: editing an exported file must not change the store's audio
        atomic_write(dest, lambda f, src=r.path: f.write(src.read_bytes()))


def _readme(summary: ExportSummary, kind: str) -> str:
    table = "metadata.csv (datasets' audiofolder)" if kind == "audiofolder" else \
        "manifest.csv (python -m training.fit --corpus manifest=manifest.csv)"
    return f"""serdemo export, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}
{table}: one row per labelled clip; audio/<sha256>.wav is the clip as the store keeps it (16 kHz, 16-bit).

{summary.message()}

label          the majority of the annotators' latest labels; label_rule says how it was decided
               (single, unanimous, majority, "tie: latest" = a tie went to the label saved last)
agreement      share of the clip's annotators who gave that label (empty with one annotator)
annotations    every annotator's latest label of the clip, as a JSON object
source_name    the file the audio came from (an upload, or the recording a timeline segment was cut from)
source_clip    SHA-256 of that recording's 16 kHz 16-bit samples (of the clip itself for a whole upload)
offset_s       where in that recording the clip starts (timeline segments)
corpus, speaker, gender, naturalness
               known from a file named by EMO-DB's, RAVDESS's or nEMO's convention (acted speech);
               otherwise empty, and naturalness "unknown". An empty speaker is unknown, not a speaker
               of its own: clips without one cannot be kept out of a test set by speaker.
"""


def _prepare(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_audiofolder(store: Store, folder) -> ExportSummary:
    """``folder/metadata.csv`` + ``folder/audio/`` + ``README.txt``, loadable with
    ``datasets.load_dataset("audiofolder", data_dir=folder)``. Raises :class:`StoreError` with nothing labelled."""
    rows = export_rows(store)
    if not rows:
        raise StoreError("nothing to export yet: label some clips first")
    folder = _prepare(folder)
    _copy_audio(rows, folder)
    _write_csv(folder / "metadata.csv", METADATA_COLUMNS, [
        [f"audio/{r.clip}.wav", r.label, r.rule, _number(r.agreement), len(r.annotations),
         json.dumps(r.annotations, ensure_ascii=False), r.origin.source_name, r.source_clip, _number(r.offset_s),
         r.origin.corpus, r.origin.speaker, r.origin.gender, r.origin.naturalness,
         _number(r.info.get("duration_s")), r.info.get("predicted") or "", _number(r.info.get("confidence")),
         r.info.get("checkpoint") or "", r.last_labelled_utc] for r in rows])
    summary = _summary(folder, rows)
    (folder / "README.txt").write_text(_readme(summary, "audiofolder"), encoding="utf-8")
    return summary


def _manifest_rows(rows: list[ExportRow], path_of) -> list[list]:
    out = []
    for r in rows:
        o = r.origin
        out.append([path_of(r), r.label, o.speaker or UNKNOWN_SPEAKER, o.gender, STORE_CORPUS,
                    "" if o.naturalness == "unknown" else o.naturalness,
                    "yes" if o.speaker else "no", o.corpus, o.source_name, r.source_clip, _number(r.offset_s),
                    r.rule, _number(r.agreement), len(r.annotations), json.dumps(r.annotations, ensure_ascii=False)])
    return out


def write_manifest(store: Store, csv_path) -> Path:
    """The training manifest with absolute paths into the store (what the app's retraining reads).

    Columns ``path, emotion, speaker, gender, corpus, naturalness`` are what ``scan_manifest`` reads today:
    ``corpus`` is ``store`` (stored clips train, never test), ``speaker`` is the known speaker or
    ``unknown`` (with ``speaker_known`` = ``no``: one shared name, never one per clip), ``naturalness``
    is empty when unknown. ``source_corpus``, ``source_clip``, ``speaker_known`` etc. are for a reader
    that drops clips of held-out speakers or recordings. An empty store writes the header only.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = export_rows(store)
    _write_csv(csv_path, MANIFEST_COLUMNS, _manifest_rows(rows, lambda r: str(r.path.resolve())))
    return csv_path


def export_training_folder(store: Store, folder) -> ExportSummary:
    """``folder/manifest.csv`` (paths relative to it) + ``folder/audio/`` + ``README.txt``: the training
    manifest with its audio, movable as one folder. Raises :class:`StoreError` with nothing labelled."""
    rows = export_rows(store)
    if not rows:
        raise StoreError("nothing to export yet: label some clips first")
    folder = _prepare(folder)
    _copy_audio(rows, folder)
    _write_csv(folder / "manifest.csv", MANIFEST_COLUMNS, _manifest_rows(rows, lambda r: f"audio/{r.clip}.wav"))
    summary = _summary(folder, rows)
    (folder / "README.txt").write_text(_readme(summary, "manifest"), encoding="utf-8")
    return summary


def write_zip(folder, archive=None) -> Path:
    """Zip ``folder`` under its own name (``name/...`` inside; no absolute or ``..`` entries); returns the zip."""
    folder = Path(folder)
    archive = Path(archive) if archive is not None else folder.with_suffix(".zip")
    members = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for path in members:
                z.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")

    atomic_write(archive, write)
    return archive


def export_zip(store: Store, kind: str = "audiofolder", work_dir=None) -> ExportSummary:
    """A downloadable zip of ``kind`` (``audiofolder`` or ``manifest``) in a new folder under ``work_dir``
    (a fresh temporary folder by default). ``summary.archive`` is the zip and ``summary.folder`` the new
    folder holding only it: the caller deletes that folder once the zip is served. The unzipped copy is
    removed here. Raises :class:`StoreError` (nothing labelled, disk full, ...)."""
    if kind not in KINDS:
        raise StoreError(f"unknown export {kind!r}: choose {' or '.join(KINDS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"serdemo-{'training-manifest' if kind == 'manifest' else 'audiofolder'}-{stamp}"
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX, dir=work_dir))
    try:
        folder = work / name
        summary = (export_training_folder if kind == "manifest" else export_audiofolder)(store, folder)
        summary.archive = write_zip(folder, work / f"{name}.zip")
        shutil.rmtree(folder)
        summary.folder = work
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise StoreError(f"export failed: {exc.strerror or exc.__class__.__name__}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


EXPORT_PREFIX = "serdemo-export-"


def remove_old_exports(work_dir=None, older_than_s: float = 3600.0, now: float | None = None,
                       prefix: str = EXPORT_PREFIX) -> int:
    """Delete the folders :func:`export_zip` made under ``work_dir`` (the temp folder by default) that are
    older than ``older_than_s``; returns how many. Call it before each export so served zips do not pile up.
    ``prefix`` selects other folders of ours (``serdemo-live-`` for live recordings); it must start with
    ``serdemo-`` so nothing else in the temp folder is ever touched."""
    if not prefix.startswith("serdemo-") or any(c in prefix for c in "*?[]/\\"):
        raise ValueError(f"not a serdemo temp-folder prefix: {prefix!r}")
    root = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = 0
    for path in root.glob(f"{prefix}*"):
        try:
            if path.is_dir() and not path.is_symlink() and now - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path)
                removed += 1
        except OSError:
            continue  # another worker removed it first, or it is not ours to remove
    return removed
