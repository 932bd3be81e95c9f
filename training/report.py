"""``python -m training.report checkpoints/default ...``: README's results table, from the cards.

Each card carries its recipe's cross-validation (``metrics.cv``: k-fold over the pooled corpora;
``metrics.loco``: leave one corpus out), each with the functionals + logistic-regression reference
row fitted on the same folds. This prints them as markdown: per corpus UA / WA of the model, then
of the reference, and the model's margin over the reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serdemo.checkpoint import read_card


def rows(card: dict, key: str) -> list[str]:
    block = card.get("metrics", {}).get(key)
    if not block:
        return []
    ref = block.get("reference", {}).get("pooled", {})
    spread = block.get("fold_spread", {})
    out = []
    for group, s in block["pooled"].items():
        r = ref.get(group)
        sd = spread.get(group, {}).get("ua", {})
        cell = f"{s['ua']:.3f} / {s['wa']:.3f}"
        if sd:
            cell += f" (folds {sd['mean']:.3f} ± {sd['std']:.3f})"
        ref_cell = f"{r['ua']:.3f} / {r['wa']:.3f}" if r else "—"
        margin = f"{s['ua'] - r['ua']:+.3f}" if r else "—"
        out.append(f"| {card.get('name', '?')} | {block['scheme']} | {group} | {cell} | {s['macro_f1']:.3f} "
                   f"| {ref_cell} | {margin} |")
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args(argv)
    lines = ["| checkpoint | protocol | corpus | UA / WA (pooled; fold mean ± std of UA) | macro-F1 "
             "| reference UA / WA | UA margin |", "|---|---|---|---|---|---|---|"]
    for path in args.checkpoints:
        card = read_card(Path(path))
        got = rows(card, "cv") + rows(card, "loco")
        lines += got or [f"| {card.get('name', path)} | not cross-validated | | | | | |"]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
