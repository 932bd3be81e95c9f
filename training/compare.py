"""``python -m training.compare OLD NEW --json FILE``: two checkpoints scored on the same clips.

After a fine-tuning run the app asks: is the new model better than the one it started from? Both are
scored through the app's own path (:func:`training.evaluate.evaluate_checkpoint`) on one list of
clips: the new run's test clips (its recipe's corpora and ``limit_per_corpus``, its test speakers),
less the speakers the previous model trained on or selected its epoch with, and less the clips one
of the two label sets cannot score. So neither model has heard any speaker it is scored on.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
from pathlib import Path

from serdemo.checkpoint import read_card
from serdemo.labels import get_label_set
from training.data import load_corpora

log = logging.getLogger("training.compare")


def _scorable(card: dict):
    """``emotion -> bool``: can this checkpoint be scored on a clip of that (canonical) emotion?"""
    classes = card["heads"]["emotion"]
    label_set = card.get("label_set")
    if isinstance(label_set, dict) and label_set.get("name"):
        mapping = get_label_set(label_set["name"])
        return lambda emotion: mapping.map(emotion) is not None
    return lambda emotion: emotion in classes


def held_out(old_card: dict, new_card: dict) -> tuple[list[str], dict[str, str]]:
    """The new run's test speakers that the previous model never saw, and why the others are left out."""
    new_test = new_card.get("training", {}).get("speakers", {}).get("test") or []
    seen = old_card.get("training", {}).get("speakers", {})
    left_out = {}
    for part in ("train", "dev"):
        for s in seen.get(part) or []:
            if s in new_test:
                left_out[s] = f"the previous model's {part} speaker"
    return sorted(s for s in new_test if s not in left_out), left_out


COMPARE_S_PER_CLIP = 0.01  # both models, cached encoder states (an uncached clip costs an encoder pass more)


def _announce(new: Path, phase: str, estimate_s: float) -> None:
    """A ``phase`` line in the new run's progress file, so the app's bar says what runs and for how long."""
    from training.progress import FILE, Progress

    path = Path(new) / FILE
    if path.is_file():
        Progress(path, True, append=True).phase(phase, estimate_s)


def compare(old: Path, new: Path) -> dict:
    from training.evaluate import evaluate_checkpoint

    old_card, new_card = read_card(old), read_card(new)
    speakers, left_out = held_out(old_card, new_card)
    config = new_card.get("training", {}).get("config", {})
    utts, _ = load_corpora(config.get("corpora", []), int(config.get("limit_per_corpus") or 0))
    both = (_scorable(old_card), _scorable(new_card))
    clips = [u for u in utts if u.speaker in speakers and all(ok(u.emotion) for ok in both)]
    result = {"previous": Path(old).name, "new": Path(new).name, "speakers": speakers,
              "left_out_speakers": left_out, "n": len(clips)}
    if not old_card.get("training", {}).get("speakers"):
        result["note"] = "the previous model's card lists no training speakers: it may have heard some of these"
    if not clips:
        result["note"] = "no test clips of speakers that neither model trained on"
        return result
    _announce(new, f"scoring both models on {len(clips)} clips of {len(speakers)} held-out speakers",
              COMPARE_S_PER_CLIP * len(clips) + 10)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "held-out.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "emotion", "speaker", "gender", "corpus", "naturalness"])
            for u in clips:
                w.writerow([str(Path(u.path).resolve()), u.emotion, u.speaker.split(":", 1)[-1], u.gender or "",
                            u.corpus, u.naturalness])
        result["scores"] = {"previous": evaluate_checkpoint(old, [f"manifest={manifest}"]),
                            "new": evaluate_checkpoint(new, [f"manifest={manifest}"])}
    return result


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("previous", help="the checkpoint the run started from")
    ap.add_argument("new", help="the run's checkpoint (its card gives the corpora and the test speakers)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    result = compare(Path(args.previous), Path(args.new))
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    log.info("compared on %d clips of %d speakers", result["n"], len(result["speakers"]))
    return result


if __name__ == "__main__":
    main()
