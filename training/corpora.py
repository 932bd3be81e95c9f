"""One adapter per corpus: each reads the corpus's own layout and file names.

Every adapter returns a :class:`CorpusScan`: the utterances it understood (canonical emotion,
speaker, gender where known, corpus, acted/natural) and, for every file it could not understand,
the file and the reason. Nothing is dropped or relabelled silently.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Callable

from serdemo import labels as L
from serdemo.corpus_names import (EMODB, EMODB_FEMALE, EMODB_MALE, EMODB_NAME, EMOVO,  # noqa: F401  (names kept here)
                                  EMOVO_NAME, NEMO_NAME, RAVDESS, RAVDESS_NAME)
from training.corpora_more import scan_cremad, scan_iemocap, scan_savee, scan_tess
from training.corpus_types import (
    AUDIO_EXTS,
    CorpusError,
    CorpusScan,
    Utterance,
    audio_files,
    require_dir,
)

log = logging.getLogger(__name__)
__all__ = ["AUDIO_EXTS", "CorpusError", "CorpusScan", "Utterance", "audio_files", "require_dir", "scan_cremad",
           "scan_iemocap", "scan_savee", "scan_tess"]
# ---------------------------------------------------------------- EMO-DB
# the file-name rules (pattern, speaker, gender) are serdemo.corpus_names', shared with the app's exports


def scan_emodb(root) -> CorpusScan:
    """EMO-DB: ``wav/SSaTTEv.wav`` (speaker, text, emotion letter, take)."""
    root = require_dir(root, "emodb")
    scan = CorpusScan("emodb", str(root))
    for path in audio_files(root):
        m = EMODB.match(path.stem)
        if not m:
            scan.problems.append((str(path), "name does not follow SSaTTEv (e.g. 03a01Fa.wav)"))
            continue
        emo = L.EMODB.get(m["emo"])
        if emo is None:
            scan.problems.append((str(path), f"unknown emotion letter {m['emo']!r}"))
            continue
        spk = m["spk"]
        gender = EMODB.gender(m)
        if gender is None:
            scan.problems.append((str(path), f"speaker {spk} is not one of EMO-DB's ten; gender unknown"))
        scan.utterances.append(Utterance(str(path), emo, EMODB.speaker(m), "emodb", gender))
    return scan


# ---------------------------------------------------------------- RAVDESS
def scan_ravdess(root, include_song: bool = False) -> CorpusScan:
    """RAVDESS: ``Actor_AA/MM-VV-EE-II-SS-RR-AA.wav|flac``; odd actors male, even female.

    Song recordings (vocal channel 02) are excluded unless ``include_song``; video-only files
    (modality 02) carry no audio and are excluded.
    """
    root = require_dir(root, "ravdess")
    scan = CorpusScan("ravdess", str(root))
    for path in audio_files(root):
        m = RAVDESS.match(path.stem)
        if not m:
            scan.problems.append((str(path), "name does not follow MM-VV-EE-II-SS-RR-AA"))
            continue
        if not RAVDESS.audio(m):
            scan.excluded.append((str(path), "video-only modality"))
            continue
        if m["ch"] == "02" and not include_song:
            scan.excluded.append((str(path), "song, not speech"))
            continue
        emo = L.RAVDESS.get(m["emo"])
        if emo is None:
            scan.problems.append((str(path), f"unknown emotion code {m['emo']!r}"))
            continue
        actor = int(m["actor"])
        folder = re.match(r"Actor_(\d+)$", path.parent.name)
        if folder and int(folder[1]) != actor:
            scan.problems.append((str(path), f"actor {actor} in the name but folder {path.parent.name}"))
            continue
        scan.utterances.append(Utterance(str(path), emo, RAVDESS.speaker(m), "ravdess", RAVDESS.gender(m)))
    return scan


# ---------------------------------------------------------------- nEMO
NEMO_COLUMNS = ("file_id", "emotion", "speaker_id", "gender")
NEMO_GENDERS = {"female": "female", "f": "female", "male": "male", "m": "male"}


def _nemo_table(root: Path) -> Path:
    tsv = root / "data.tsv"
    if tsv.is_file():
        return tsv
    found = sorted(root.rglob("data.tsv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CorpusError(f"nemo: no data.tsv under {root}; nEMO's emotions, speakers and genders are read from "
                          f"it (tab-separated: file_id, emotion, raw_text, normalized_text, speaker_id, gender, age)")
    raise CorpusError(f"nemo: several data.tsv under {root} ({', '.join(map(str, found))}); point at one copy")


def scan_nemo(root) -> CorpusScan:
    """nEMO: ``samples/SSS_emotion_N.wav|flac`` described by ``data.tsv`` (Christop, LREC-COLING 2024).

    ``data.tsv`` is authoritative for emotion, speaker and gender. Clips are matched to its rows by
    file stem, so a copy converted to another format (its ``file_id`` names the original ``.wav``)
    still matches; ``speaker_id`` is stripped of the padding the original carries. A row whose
    ``file_id`` follows ``SSS_emotion_N`` must agree with that name. Without ``data.tsv`` the
    corpus cannot be read (no genders), and a :class:`CorpusError` says so.
    """
    root = require_dir(root, "nemo")
    tsv = _nemo_table(root)
    scan = CorpusScan("nemo", str(root))
    rows: dict[str, tuple[str, dict]] = {}  # stem -> (where, row)
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in NEMO_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise CorpusError(f"{tsv}: needs tab-separated columns {list(NEMO_COLUMNS)}; missing {missing}")
        for i, row in enumerate(reader, start=2):
            where = f"{tsv}:{i}"
            stem = Path((row.get("file_id") or "").strip()).stem
            if not stem:
                scan.problems.append((where, "row has no file_id"))
            elif stem in rows:
                scan.problems.append((where, f"{row['file_id'].strip()} is listed again (first at {rows[stem][0]})"))
            else:
                rows[stem] = (where, row)
    seen: dict[str, Path] = {}
    for path in audio_files(root):
        if path.stem in seen:
            scan.excluded.append((str(path), f"same clip as {seen[path.stem]} in another format"))
            continue
        seen[path.stem] = path
        if path.stem not in rows:
            scan.problems.append((str(path), f"not listed in {tsv.name} (no row with file_id {path.stem}.*)"))
            continue
        _, row = rows[path.stem]
        native = (row.get("emotion") or "").strip().lower()
        spk = (row.get("speaker_id") or "").strip()
        emo = L.NEMO.get(native)
        if emo is None:
            scan.problems.append((str(path), f"unknown emotion {native!r} in {tsv.name}"))
            continue
        if not spk:
            scan.problems.append((str(path), f"no speaker_id in {tsv.name}: speaker-independent splits need one"))
            continue
        m = NEMO_NAME.match(path.stem)
        if m and (m["spk"], m["emo"]) != (spk, native):
            scan.problems.append((str(path), f"{tsv.name} says speaker {spk}, {native} but the name says "
                                             f"speaker {m['spk']}, {m['emo']}"))
            continue
        sex = (row.get("gender") or "").strip().lower()
        gender = NEMO_GENDERS.get(sex)
        if gender is None:
            scan.problems.append((str(path), f"gender {sex!r} in {tsv.name} is not female/male; gender unknown"))
        scan.utterances.append(Utterance(str(path), emo, f"nemo:{spk}", "nemo", gender))
    for stem, (where, row) in rows.items():
        if stem not in seen:
            scan.problems.append((where, f"lists {row['file_id'].strip()} but no audio file with stem {stem} "
                                         f"({'/'.join(AUDIO_EXTS)}) is under {root}"))
    return scan


# ---------------------------------------------------------------- EMOVO
def scan_emovo(root) -> CorpusScan:
    """EMOVO (Italian; Costantini et al., LREC 2014): ``SS/EEE-SS-TT.wav|flac``, e.g. ``f1/dis-f1-b1.wav``
    (speaker f1-f3 female, m1-m3 male; emotion code; sentence). The speaker folder, when there is one, must
    agree with the name."""
    root = require_dir(root, "emovo")
    scan = CorpusScan("emovo", str(root))
    for path in audio_files(root):
        m = EMOVO.match(path.stem)
        if not m:
            scan.problems.append((str(path), "name does not follow EEE-SS-TT (e.g. dis-f1-b1)"))
            continue
        emo = L.EMOVO.get(m["emo"])
        if emo is None:
            scan.problems.append((str(path), f"unknown emotion code {m['emo']!r}"))
            continue
        spk = m["spk"]
        folder = path.parent.name.lower()
        if re.fullmatch(r"[fm]\d", folder) and folder != spk:
            scan.problems.append((str(path), f"speaker {spk} in the name but folder {path.parent.name}"))
            continue
        scan.utterances.append(Utterance(str(path), emo, EMOVO.speaker(m), "emovo", EMOVO.gender(m)))
    return scan


# ---------------------------------------------------------------- generic layouts
ALIASES = {"anger": "angry", "happiness": "happy", "joy": "happy", "sadness": "sad", "fearful": "fear",
           "surprised": "surprise", "disgusted": "disgust", "bored": "boredom"}


def canonical_label(name: str) -> str | None:
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in L.CANONICAL else None


def scan_folders(root, corpus: str = "folders", naturalness: str = "acted") -> CorpusScan:
    """``root/<label>/*.wav`` or ``root/<label>/<speaker>/*.wav``.

    Without speaker folders every file counts as its own speaker, which cannot guarantee speaker
    independence; the scan says so in ``excluded``-free ``problems`` only when labels are unknown.
    """
    root = require_dir(root, corpus)
    scan = CorpusScan(corpus, str(root))
    for path in audio_files(root):
        rel = path.relative_to(root).parts
        if len(rel) not in (2, 3):
            scan.problems.append((str(path), "expected <label>/<file> or <label>/<speaker>/<file>"))
            continue
        emo = canonical_label(rel[0])
        if emo is None:
            scan.problems.append((str(path), f"folder {rel[0]!r} is not an emotion label ({', '.join(L.CANONICAL)})"))
            continue
        speaker = rel[1] if len(rel) == 3 else f"file-{path.stem}"
        scan.utterances.append(Utterance(str(path), emo, f"{corpus}:{speaker}", corpus, None, naturalness))
    return scan


def scan_manifest(csv_path, corpus: str | None = None) -> CorpusScan:
    """CSV with columns ``path,emotion,speaker`` and optional ``gender,corpus,naturalness``.

    Relative paths are resolved against the CSV's folder.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CorpusError(f"manifest {csv_path} does not exist")
    name = corpus or csv_path.stem
    scan = CorpusScan(name, str(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"path", "emotion", "speaker"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise CorpusError(f"{csv_path}: needs columns {sorted(need)}, has {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            where = f"{csv_path}:{i}"
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            emo = canonical_label(row["emotion"] or "")
            gender = (row.get("gender") or "").strip().lower() or None
            # the app's export leaves naturalness empty when it is not known (a stored clip of unknown origin)
            nat = (row.get("naturalness") or "").strip().lower() or ("unknown" if "speaker_known" in row else "acted")
            if emo is None:
                scan.problems.append((where, f"unknown emotion {row['emotion']!r}"))
            elif not (row["speaker"] or "").strip():
                scan.problems.append((where, "no speaker: speaker-independent splits need one"))
            elif not path.is_file():
                scan.problems.append((where, f"audio file {path} is missing"))
            elif gender not in (None, "female", "male"):
                scan.problems.append((where, f"gender {gender!r} is not female/male"))
            elif nat not in L.NATURALNESS and nat != "unknown":
                scan.problems.append((where, f"naturalness {nat!r} is not acted/natural"))
            else:
                c = (row.get("corpus") or "").strip() or name
                spk = row["speaker"].strip()
                known = (row.get("speaker_known") or "yes").strip().lower() != "no"
                source = (row.get("source_corpus") or "").strip()
                # a clip cut from a corpus recording keeps that corpus speaker's name, so a split can keep
                # it out of training when that speaker is held out
                source_speaker = spk if known and source and spk.startswith(f"{source}:") else None
                scan.utterances.append(Utterance(str(path), emo, f"{c}:{spk}", c, gender, nat, source_speaker))
    return scan


ADAPTERS: dict[str, Callable[..., CorpusScan]] = {
    "emodb": scan_emodb, "ravdess": scan_ravdess, "nemo": scan_nemo, "emovo": scan_emovo, "cremad": scan_cremad, "tess": scan_tess,
    "savee": scan_savee, "iemocap": scan_iemocap, "folders": scan_folders, "manifest": scan_manifest,
}


def scan(kind: str, root, **kwargs) -> CorpusScan:
    """Run the adapter ``kind`` on ``root`` and log what it could not understand."""
    if kind not in ADAPTERS:
        raise CorpusError(f"unknown corpus kind {kind!r}; known: {sorted(ADAPTERS)}")
    result = ADAPTERS[kind](root, **kwargs)
    if result.problems:
        log.warning(result.report())
    return result


def parse_spec(spec: str) -> tuple[str, str]:
    """``"emodb=../shared/data/emodb"`` -> ``("emodb", path)``."""
    if "=" not in spec:
        raise CorpusError(f"corpus {spec!r}: write KIND=PATH, e.g. emodb=../shared/data/emodb")
    kind, path = spec.split("=", 1)
    return kind.strip(), path.strip()


def scan_store(root) -> CorpusScan:
    """The app's annotation store (``SERDEMO_DATA``): each labelled clip with its decided label (the
    annotators' majority, :func:`serdemo.export.export_rows`), its speaker and naturalness as far as its
    source name tells (a corpus file: that corpus's speaker, acted; otherwise one shared ``store:unknown``
    speaker and naturalness unknown, never one speaker per clip)."""
    from serdemo.export import export_rows
    from serdemo.store import Store

    root = require_dir(root, "store")
    if not (Path(root) / "store.sqlite3").is_file():
        raise CorpusError(f"store: {root} holds no store.sqlite3")
    scan = CorpusScan("store", str(root))
    for row in export_rows(Store(root)):
        emo = canonical_label(row.label)
        if emo is None:
            scan.problems.append((str(row.path), f"label {row.label!r} is not an emotion label"))
            continue
        o = row.origin
        speaker = o.speaker or "unknown"
        source_speaker = o.speaker if o.corpus and o.speaker.startswith(f"{o.corpus}:") else None
        scan.utterances.append(Utterance(str(row.path), emo, f"store:{speaker}", "store", o.gender or None,
                                         o.naturalness, source_speaker))
    return scan


ADAPTERS["store"] = scan_store


# ---------------------------------------------------------------- licences
# What a model trained on each corpus inherits; a model card states it (``licence_for``). Every text
# names its corpus, since a card joins several.
LICENCES: dict[str, str] = {
    "emodb": "CC0-1.0 (EMO-DB as republished by audEERING)",
    "ravdess": "CC BY-NC-SA 4.0 (inherited from RAVDESS, Livingstone & Russo 2018): "
               "non-commercial use, attribution and share-alike",
    "nemo": "CC BY-NC-SA 4.0 (inherited from nEMO): non-commercial use, attribution and share-alike; "
            "cite Christop, \"nEMO: Dataset of Emotional Speech in Polish\", LREC-COLING 2024",
    "emovo": "EMOVO (Costantini et al., LREC 2014): no licence stated by the copy used; research use with "
             "attribution, treated as non-commercial: cite Costantini et al., \"EMOVO Corpus: an Italian Emotional "
             "Speech Database\", LREC 2014",
    "cremad": "ODbL 1.0 for the database, DbCL 1.0 for its contents (CREMA-D, Cao et al. 2014): "
              "attribution and share-alike",
    "tess": "TESS (Dupuis & Pichora-Fuller, University of Toronto): see the corpus's own licence",
    "savee": "SAVEE (Haq & Jackson, University of Surrey): see the corpus's own licence",
    "iemocap": "IEMOCAP (Busso et al. 2008), under USC SAIL's release agreement: see the corpus's own licence",
    "folders": "a user-supplied folder corpus: see the corpus's own licence",
    "manifest": "a user-supplied manifest corpus: see the corpus's own licence",
    "store": "recordings from the app's annotation store: usable as far as the people who recorded them agreed",
}
NO_TRAINING_DATA = "see training data"


def _restricts(licence: str) -> bool:
    return "-NC" in licence or "non-commercial" in licence.lower()


def licence_for(corpora: list[str]) -> str:
    """The licences of ``corpora`` (names such as ``Utterance.corpus``, or ``KIND=PATH`` specs), joined by " + ".

    Each corpus counts once; the non-commercial ones come first, since their terms bind the model;
    otherwise the given order is kept. A corpus without an entry in :data:`LICENCES` is named with
    "see the corpus's own licence".
    """
    names = list(dict.fromkeys(c.split("=", 1)[0].strip() for c in corpora if c.strip()))
    texts = [LICENCES.get(n, f"{n}: see the corpus's own licence") for n in names]
    texts.sort(key=lambda t: not _restricts(t))  # stable: non-commercial first, order kept within each group
    return " + ".join(texts) if texts else NO_TRAINING_DATA
