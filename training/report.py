"""``python -m training.report checkpoints/default ...``: README's results tables, from the cards.

Each card carries its held-out figures: the test speakers, the dev speakers, and for the default its
recipe's cross-validation (``metrics.cv``: k-fold over the pooled corpora; ``metrics.loco``: leave one
corpus out), each beside the reference rows fitted on the same folds (the encoder probe, the classic
functionals). The rows come from :func:`serdemo.cards.metric_rows`, the renderer the app's Models tab
uses, so README and app show the same numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serdemo.cards import metric_rows
from serdemo.checkpoint import read_card


def table(paths) -> str:
    lines = ["| checkpoint | evaluation | set | UA | WA | macro-F1 | n |", "|---|---|---|---|---|---|---|"]
    for path in paths:
        card = read_card(Path(path))
        name = card.get("name", Path(path).name)
        for r in metric_rows(card):
            f1 = "" if r.macro_f1 is None else f"{r.macro_f1:.3f}"
            lines.append(f"| {name} | {r.evaluation} | {r.group} | {r.ua:.3f} | {r.wa:.3f} | {f1} | "
                         f"{'' if r.n is None else r.n} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args(argv)
    text = table(args.checkpoints)
    print(text)
    return text


if __name__ == "__main__":
    main()
