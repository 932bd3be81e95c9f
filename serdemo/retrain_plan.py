"""Before a retraining run: which stored labels it would train on and why the others would not
(:func:`retrain_plan`, by :mod:`serdemo.store_rules`' rule, the one ``training.data`` applies once the run has
read its data), and a store report in a sentence (:func:`report_sentence`). Split from :mod:`serdemo.retrain`
(which re-exports every name); never imports ``training``.
"""

from __future__ import annotations

import os
from pathlib import Path

from serdemo.store_rules import WHY_MEANS, WHY_UNREADABLE, why_left_out

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # corpus files, as training.corpora finds them
ROOT = Path(__file__).resolve().parents[1]  # the runs' working folder: relative corpus folders are relative to it


def corpus_folders(specs) -> dict[str, Path]:
    """``KIND=PATH`` corpus specs -> ``{kind: folder}``; a relative folder is relative to the runs' working
    folder (:data:`ROOT`). The retraining manifest (``manifest=``) is not a corpus here."""
    folders = {}
    for spec in specs or []:
        kind, _, path = str(spec).partition("=")
        if kind and path and kind != "manifest":
            folders[kind] = Path(path) if Path(path).is_absolute() else ROOT / path
    return folders


_corpus_index: dict[str, dict[str, str]] = {}  # corpus folder -> {file stem: path}
_corpus_hashes: dict[tuple, str | None] = {}  # (path, size, mtime) -> content hash as the store computes it


def corpus_copy_hash(folder: Path, source_name: str) -> str | None:
    """The content hash (:func:`serdemo.store.clip_hash` of its 16 kHz samples, as ``training.splits`` hashes
    corpus clips) of the file in corpus ``folder`` named like ``source_name`` (any audio suffix); None when the
    corpus has no such file or it cannot be read. Folders are indexed once, files hashed once per version."""
    import math

    from serdemo.audio import AudioError, load_audio
    from serdemo.store import clip_hash

    key = str(folder)
    if key not in _corpus_index:
        index: dict[str, str] = {}
        for parent, _dirs, files in os.walk(folder):
            for name in sorted(files):
                stem, suffix = os.path.splitext(name)
                if suffix.lower() in AUDIO_SUFFIXES:
                    index.setdefault(stem, os.path.join(parent, name))
        _corpus_index[key] = index
    path = _corpus_index[key].get(Path(source_name).stem)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    version = (path, st.st_size, st.st_mtime_ns)
    if version not in _corpus_hashes:
        try:
            _corpus_hashes[version] = clip_hash(load_audio(path, max_duration_s=math.inf))
        except (AudioError, OSError, ValueError):
            _corpus_hashes[version] = None
    return _corpus_hashes[version]


def retrain_plan(rows, card: dict, corpora) -> dict:
    """Which stored labels fine-tuning ``card``'s checkpoint on ``corpora`` (``KIND=PATH``) would train on, and
    why the others would not, before any run. ``rows``: :func:`serdemo.export.export_rows` of the store (what
    the run's manifest holds). The reasons are those of the store report the run writes once it has read its
    data (``training.data``), in its order (:func:`serdemo.store_rules.why_left_out`, the one rule): the label
    is not in the model's label set; the stored audio cannot be read; the clip is cut from a recording of a speaker the base model holds out (its card's dev and test
    speakers: the run's split when it uses the same corpora); the clip is a copy of the corpus file it is named
    after. A renamed copy of a corpus clip is found by the run only.

    Returns ``{"stored", "training", "left_out": {why: n}, "clips": [{"clip", "source", "label", "why"}],
    "same_split": whether the run's corpora are the base model's}``.
    """
    from serdemo.labels import get_label_set

    label_set = card.get("label_set") if isinstance(card.get("label_set"), dict) else {}
    try:
        mapping = get_label_set(label_set.get("name", ""))
    except KeyError:
        mapping = None
    classes = (card.get("heads") or {}).get("emotion") or []
    speakers = (card.get("training") or {}).get("speakers") or {}
    held = set(speakers.get("dev") or []) | set(speakers.get("test") or [])
    folders = corpus_folders(corpora)
    base = corpus_folders(((card.get("training") or {}).get("config") or {}).get("corpora"))
    clips, left = [], {}
    for r in rows:
        o = r.origin
        try:
            mapped = mapping.map(r.label) is not None if mapping is not None else r.label in classes
        except KeyError:
            mapped = False
        source_speaker = o.speaker if o.corpus and o.speaker.startswith(f"{o.corpus}:") else None
        why = why_left_out(label_set.get("name") or "model", mapped, Path(r.path).is_file(),
                           o.corpus in folders and source_speaker in held,
                           copy=lambda: (o.corpus in folders  # noqa: B023  (asked at once, in this iteration)
                                         and corpus_copy_hash(folders[o.corpus], o.source_name) == r.clip))
        if why:
            left[why] = left.get(why, 0) + 1
        clips.append({"clip": r.clip, "source": o.source_name, "label": r.label, "why": why})
    return {"stored": len(clips), "training": sum(not c["why"] for c in clips), "left_out": left, "clips": clips,
            "same_split": set(folders) == set(base)}


def report_sentence(report: dict) -> str:
    """A store report (the run's, or :func:`retrain_plan`'s) in a sentence: how many stored labels train, and
    for each reason how many do not and what it means."""
    stored, training = int(report.get("stored") or 0), int(report.get("training") or 0)
    left = {str(k): int(v) for k, v in (report.get("left_out") or {}).items() if v}
    text = f"**{training} of {stored}** stored label{'s' if stored != 1 else ''} train"
    if left:
        text += f"; {stored - training} do{'es' if stored - training == 1 else ''} not: " + "; ".join(
            _counted(n, why) + (f" ({WHY_MEANS[why]})" if why in WHY_MEANS else "") for why, n in left.items())
    return text + "."


def _counted(n: int, why: str) -> str:
    """``2 are cut from ...``, ``1 has a label not in ...``, ``1 whose audio could not be read``."""
    if why.startswith("label "):
        return f"{n} {'has' if n == 1 else 'have'} a {why}"
    if why == WHY_UNREADABLE:
        return f"{n} whose {why}"
    return f"{n} {'is' if n == 1 else 'are'} {why}"

