"""The cheap questions beside the voice-adaptation screen, leave-one-corpus-out on the probe's statistics
(`training.voice`'s table, built from the encoder cache on first use).

    .venv/bin/python benchmarks/voice_questions.py            # EMOVO in or out; per-corpus standardisation
    .venv/bin/python benchmarks/voice_questions.py --ood      # + the out-of-domain score's AUROC
    .venv/bin/python benchmarks/voice_questions.py --padding  # + unpadded vs zero-padded to 30 s (15 min)

Prints UA per held-out corpus and the mean; nothing here chooses the shipped recipe (`training.voice
--choose` does), these answer whether a corpus joins, and what normalising over a whole corpus or archive,
or padding each clip to Whisper's window, would give.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.voice import DEFAULT_CORPORA, VARIANTS, Probe, score_task, stats_table, ua  # noqa: E402

V = {v["name"]: v for v in VARIANTS}


def emovo_question(t) -> None:
    print("EMOVO in the training data? (each other corpus held out; trained on the other two, with and without)")
    rows = {}
    for held in ("emodb", "nemo", "ravdess"):
        test = np.flatnonzero(t.corpus == held)
        for name, train in (("without", np.flatnonzero((t.corpus != held) & (t.corpus != "emovo"))),
                            ("with", np.flatnonzero(t.corpus != held))):
            r, _, _ = score_task(t, train, test, V["mean tau3"], kinds=("none", "10", "all", "skew10"))
            rows[(held, name)] = r
            print(f"  {held:8s} {name:8s} " + " ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    for name in ("without", "with"):
        print(f"  mean     {name:8s} " + " ".join(
            f"{k} {np.mean([rows[(h, name)][k] for h in ('emodb', 'nemo', 'ravdess')]):.3f}"
            for k in ("none", "10", "all", "skew10")))


def corpus_question(t) -> None:
    print("Standardised per corpus instead of globally? (leave-one-corpus-out, clip by clip)")
    for label, name in (("global (no adaptation)", "none"), ("per-corpus mean", "mean tau0"),
                        ("per-corpus mean and variance", "meanvar tau3")):
        r = []
        for c in np.unique(t.corpus):
            tr, te = np.flatnonzero(t.corpus != c), np.flatnonzero(t.corpus == c)
            p = Probe(V[name]).fit(t.x[tr], t.y[tr], t.corpus[tr], len(t.classes))  # each corpus as one "voice"
            if name != "none":
                p.rule = type(p.rule)(p.rule.mode, 0.0, False)
            whole = t.x[te]
            r.append(ua(t.y[te], p.logits(t.x[te], None if name == "none" else [whole] * len(te))))
        print(f"  {label:40s} " + " ".join(f"{x:.3f}" for x in r) + f"  mean {np.mean(r):.3f}", flush=True)
    r = []
    for c in np.unique(t.corpus):
        tr, te = np.flatnonzero(t.corpus != c), np.flatnonzero(t.corpus == c)
        p = Probe(V["mean tau3"]).fit(t.x[tr], t.y[tr], t.speaker[tr], len(t.classes))
        whole = t.x[te]
        r.append(ua(t.y[te], p.logits(t.x[te], [whole] * len(te))))
    print(f"  {'voice head, the held-out corpus as one voice':40s} " + " ".join(f"{x:.3f}" for x in r)
          + f"  mean {np.mean(r):.3f}   (corpora: {', '.join(np.unique(t.corpus))})")


def ood_question(t) -> None:
    from sklearn.metrics import roc_auc_score

    from training.probe import fit_ood

    print("Out-of-domain score: AUROC of an unheard corpus against unheard speakers of the others")
    rng = np.random.default_rng(0)
    for c in np.unique(t.corpus):
        pool, far = np.flatnonzero(t.corpus != c), np.flatnonzero(t.corpus == c)
        spk = np.unique(t.speaker[pool])
        held = rng.choice(spk, len(spk) // 4, replace=False)
        near, train = pool[np.isin(t.speaker[pool], held)], pool[~np.isin(t.speaker[pool], held)]
        o = fit_ood(t.x[train], t.speaker[train], 16)

        def score(i):
            z = (t.x[i] - o["centre"]) / o["scale"]
            return ((z ** 2).sum(1) - ((z @ o["basis"].T) ** 2).sum(1)) / (z.shape[1] - 16) / o["threshold"]

        s_near, s_far = score(near), score(far)
        auc = roc_auc_score(np.r_[np.zeros(len(near)), np.ones(len(far))], np.r_[s_near, s_far])
        print(f"  {c:8s} AUROC {auc:.3f}; flagged: unheard speakers {np.mean(s_near > 1):.1%}, "
              f"this corpus {np.mean(s_far > 1):.1%}", flush=True)


def padding_question(limit: int) -> None:
    import torch

    from serdemo.encoding import FrontEnd
    from serdemo.features import FeatureConfig, pad_batch
    from serdemo.labels import get_label_set
    from serdemo import encoders
    from training.data import WaveCache, build_examples, load_corpora
    from training.encoded import EncodedCache, wave_digest
    from training.probe import statistics

    print(f"Zero-padded to Whisper's 30-s window? ({limit} clips per corpus)")
    utts, _ = load_corpora(DEFAULT_CORPORA, limit_per_corpus=limit)
    ex, _ = build_examples(utts, get_label_set("ekman7"), [])
    waves, cache = WaveCache(), EncodedCache()
    fe = FrontEnd(FeatureConfig(), encoders.load())
    x0, x1, y, spk, corp = [], [], [], [], []
    t_plain = t_pad = 0.0
    for e in ex:
        w = waves.get(e.utt.path)
        d = wave_digest(w)
        if cache.lookup(d) is None:
            cache.fill([w], [waves.speech(e.utt.path)], digests=[d])
        states, mask = cache.lookup(d)
        x0.append(statistics([(states, mask)], [2, 3, 4], True)[0])
        with torch.inference_mode():
            t0 = time.time()
            fe(*pad_batch([w]))
            t_plain += time.time() - t0
            padded = np.zeros(16000 * 30, np.float32)
            padded[: len(w)] = w[: len(padded)]
            t0 = time.time()
            enc = fe(*pad_batch([padded]))
            t_pad += time.time() - t0
        n = states.shape[1]
        x1.append(statistics([(enc.states[0, :, :n].to(torch.float16).numpy(), mask[:n])], [2, 3, 4], True)[0])
        y.append(e.targets["emotion"]), spk.append(e.utt.speaker), corp.append(e.utt.corpus)
        cache.memory.clear()
    y, spk, corp = np.array(y), np.array(spk), np.array(corp)
    print(f"  encoder seconds: unpadded {t_plain:.1f}, padded {t_pad:.1f} (x{t_pad / t_plain:.1f})")
    for label, x in (("unpadded", np.array(x0)), ("padded", np.array(x1))):
        r = []
        for c in np.unique(corp):
            tr, te = corp != c, corp == c
            r.append(ua(y[te], Probe(V["none"]).fit(x[tr], y[tr], spk[tr], 7).logits(x[te], None)))
        print(f"  {label:9s} clip by clip " + " ".join(f"{v:.3f}" for v in r) + f"  mean {np.mean(r):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stats", default=str(ROOT / ".cache/voice/stats.npz"))
    ap.add_argument("--ood", action="store_true")
    ap.add_argument("--padding", action="store_true")
    ap.add_argument("--padding-clips", type=int, default=120, help="clips per corpus for the padding question")
    args = ap.parse_args()
    t = stats_table(DEFAULT_CORPORA, out=Path(args.stats))
    emovo_question(t)
    corpus_question(t)
    if args.ood:
        ood_question(t)
    if args.padding:
        padding_question(args.padding_clips)


if __name__ == "__main__":
    main()
