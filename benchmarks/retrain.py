"""Retraining from the app, timed: N new labels -> a new checkpoint compared with the old one.

    python benchmarks/retrain.py [--labels 20] [--base checkpoints/default]

Builds a fresh annotation store with N labelled clips (RAVDESS clips of speakers the base model trained
on, relabelled by one annotator), exports the training manifest as the app does, and starts the app's
own :class:`serdemo.retrain.Retrainer` (``python -m training.fit`` on the base's recipe plus the store,
then ``python -m training.compare`` on held-out speakers). Prints what the app's progress bar would show
each second (phase, step, ETA) and the wall time from the click to the comparison. Run on an idle machine;
the encoder-state cache of the corpora must be filled (``python -m training.encode``), as it is after
the first training run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serdemo.audio import load_audio  # noqa: E402
from serdemo.checkpoint import read_card  # noqa: E402
from serdemo.export import write_manifest  # noqa: E402
from serdemo.retrain import Retrainer  # noqa: E402
from serdemo.store import Store, as_stored  # noqa: E402
from training.corpora import scan_ravdess  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=int, default=20)
    ap.add_argument("--base", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    card = read_card(args.base)
    trained = set(card["training"]["speakers"]["train"])
    work = Path(tempfile.mkdtemp(prefix="serdemo-retrain-bench-"))
    store = Store(work / "data")
    clips = [u for u in scan_ravdess(shared / "ravdess").utterances if u.speaker in trained][: args.labels]
    labels = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
    for i, u in enumerate(clips):  # recordings renamed, as a user's own would be
        sha = store.add_clip(as_stored(load_audio(u.path)), f"my-recording-{i}.wav")
        store.label_clip(sha, labels[i % len(labels)], "bench")
    manifest = write_manifest(store, work / "retrain" / "manifest.csv")
    corpora = [f"{c}={shared / c}" for c in ("emodb", "ravdess", "nemo", "emovo")]  # the default's four
    r = Retrainer(work / "retrain", work / "runs", corpora, cooldown_s=0)
    t0 = time.time()
    r.start(Path(args.base), card, manifest)
    first_eta = None
    while True:
        st = r.status()
        if first_eta is None and st.get("eta_s") is not None:
            first_eta = (time.time() - t0, st["eta_s"])
        print(f"{time.time() - t0:6.1f} s  {st['state']:<8} {st.get('phase', ''):<10} step {st.get('step')}/"
              f"{st.get('total_steps')}  ETA {st.get('eta_s')}", flush=True)
        if st["state"] != "running":
            break
        time.sleep(1.0)
    total = time.time() - t0
    result = r.comparison_result() or {}
    scores = result.get("scores", {})
    print(f"\n{len(clips)} labels -> compared checkpoint in {total:.1f} s (state {st['state']}); first ETA "
          f"{first_eta[1] if first_eta else None} s shown at {first_eta[0] if first_eta else float('nan'):.1f} s")
    if scores:
        print(f"held-out clips {result['n']} of {len(result['speakers'])} speakers: previous UA "
              f"{scores['previous']['overall']['ua']:.3f}, new UA {scores['new']['overall']['ua']:.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest training/comparison process: {peak_mb:.0f} MB ({len(clips)} stored labels)")
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=1)[:800])


if __name__ == "__main__":
    main()
