"""Checkpoint cards as text: the one renderer of a card's summary, held-out metrics and a retrain comparison.

Plain Python (no Gradio, no torch), so the app, ``training/report.py`` and
retraining can all use it. Data first, then formats of the same data:

    rows = metric_rows(card)            # [MetricRow(evaluation, group, ua, wa, macro_f1, n), ...]
    metrics_markdown(card)              # those rows as a Markdown table (+ the test speakers)
    card_summary_markdown(name, card)   # model, data, classes, speakers held out, recipe, licence
    headline(card)                      # "UA 0.51 · WA 0.50 (8 spk)": the model pickers' figure
    comparison_rows(result)             # training.compare's JSON -> [ComparisonRow(...)]
    comparison_html(result)             # ... as a table; comparison_markdown(result) the same in Markdown
"""

from __future__ import annotations

import html
from dataclasses import dataclass

EVALUATIONS = (  # card metrics key -> what the figure is, in the card view
    ("test", "test speakers (never trained on)"),
    ("dev", "dev speakers (picked the epoch)"),
    ("cv", "cross-validated, pooled folds"),
    ("loco", "leave-one-corpus-out, pooled"),
)


ADAPTED_DRAWS = (  # a nested block's adapted figures: K unlabelled clips of each test voice
    ("10", "10 random clips of each voice"),
    ("all", "all of each voice's clips"),
    ("skew10", "10 clips of each voice, 80 % of one emotion"),
)
REFERENCE_ROWS = (  # a cv/loco block's reference entries -> their distinct names in the tables
    ("probe", "encoder probe (reference)"),
    ("reference", "classic functionals (reference)"),
)
METRIC_NOTES = (
    "**UA** (unweighted accuracy): the mean of the per-class recalls, so every emotion counts the same; "
    "chance is 1 / number of classes.",
    "**WA** (weighted accuracy): the share of all clips labelled right, so frequent emotions count more.",
    "**macro-F1**: the mean over classes of F1 (the balance of precision and recall), each class counting the same.",
)


@dataclass(frozen=True)
class MetricRow:
    """One held-out score of a card: ``evaluation`` (what was held out, how), ``group`` ("overall" or a corpus)."""

    evaluation: str
    group: str
    ua: float
    wa: float
    macro_f1: float | None
    n: int | None


@dataclass(frozen=True)
class ComparisonRow:
    """The previous and the new model on the same held-out clips of one set."""

    set: str
    n: int | None
    previous_ua: float
    new_ua: float
    previous_wa: float
    new_wa: float

    @property
    def delta_ua(self) -> float:
        return self.new_ua - self.previous_ua

    @property
    def delta_wa(self) -> float:
        return self.new_wa - self.previous_wa


def closed_form(card: dict) -> bool:
    """Whether the card's model was fitted in one solve on per-clip statistics (no epochs: its dev speakers chose
    the regularisation), as its ``model.fit`` says."""
    return _dict(card.get("model")).get("fit") == "closed-form"


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def headline(card: dict) -> str:
    """The picker's figure, the same kind for every model: UA / WA on the card's own test speakers
    (``metrics.test.overall``). Cross-validation and leave-one-corpus-out stay in the card view."""
    try:
        overall = _dict(_dict(card.get("metrics")).get("test")).get("overall")
        if not overall:
            return "no test-speaker metrics"
        speakers = (_dict(card.get("metrics")).get("test_speakers")
                    or _dict(_dict(card.get("training")).get("speakers")).get("test"))
        held_out = f" ({len(speakers)} spk)" if speakers else ""
        return f"UA {overall['ua']:.2f} · WA {overall['wa']:.2f}{held_out}"
    except (AttributeError, KeyError, TypeError, ValueError):
        return "metrics unreadable"


def _screen_fixed(hp: dict) -> bool:
    """A probe recipe whose regularisation grid has one value: the dev-only screen chose it, not the dev fold."""
    grid = hp.get("c_grid")
    return isinstance(grid, list) and len(grid) == 1


def _probe_dev_role(hp: dict) -> str:
    """What a probe's dev speakers did: chose its regularisation, or (fixed by the screen) only scored it
    and set the temperature."""
    if _screen_fixed(hp):
        return "scored it and set its temperature"
    return f"chose {'the shrinkage' if hp.get('classifier') == 'lda' else 'C'}"


def metric_rows(card: dict) -> list[MetricRow]:
    """Every held-out evaluation of a card (test, dev, cross-validation, leave-one-corpus-out with its
    reference row), overall and per corpus, in that order. Unreadable entries are left out."""
    metrics = _dict(card.get("metrics"))
    rows: list[MetricRow] = []
    for key, what in EVALUATIONS:
        block = metrics.get(key)
        if not isinstance(block, dict):
            continue
        if key == "dev" and closed_form(card):
            # a probe has no epochs: its dev speakers chose the regularisation, unless the screen fixed it
            what = f"dev speakers ({_probe_dev_role(_dict(_dict(card.get('model')).get('hparams')))})"
        blocks = [(what, block)]
        if key in ("cv", "loco"):
            what = f"{block.get('scheme', what)}: {what}"
            blocks = [(what + (", clip by clip" if block.get("adapted") else ""), _dict(block.get("pooled")))]
            for draw, words in ADAPTED_DRAWS:  # a voice-adapting model's figures with K clips of each voice
                adapted = _dict(_dict(block.get("adapted")).get(draw)).get("pooled")
                if isinstance(adapted, dict):
                    blocks.append((f"{block.get('scheme', key)}: adapted to {words}", adapted))
            for ref_key, short in REFERENCE_ROWS:
                ref = block.get(ref_key)
                if isinstance(ref, dict) and isinstance(ref.get("pooled"), dict):
                    blocks.append((f"{short}, same folds", ref["pooled"]))
        if key == "test":
            for head, sc in _dict(metrics.get("test_aux")).items():
                if isinstance(sc, dict) and "ua" in sc:
                    blocks.append((f"{head} head (auxiliary), test speakers", {"overall": sc}))
        for label, scores in blocks:
            for group, sc in scores.items():
                if not (isinstance(sc, dict) and "ua" in sc):
                    continue
                try:
                    f1 = sc.get("macro_f1")
                    rows.append(MetricRow(label, str(group), float(sc["ua"]), float(sc["wa"]),
                                          None if f1 is None else float(f1),
                                          None if sc.get("n") is None else int(sc["n"])))
                except (KeyError, TypeError, ValueError):
                    continue
    return rows


def metrics_markdown(card: dict) -> str:
    """:func:`metric_rows` as a Markdown table, with the test speakers below it."""
    rows = metric_rows(card)
    if not rows:
        return "_this card holds no held-out metrics_"
    lines = ["| evaluation | set | UA | WA | macro-F1 | n |", "|---|---|---|---|---|---|"]
    for r in rows:
        f1 = "" if r.macro_f1 is None else f"{r.macro_f1:.3f}"
        lines.append(f"| {r.evaluation} | {r.group} | {r.ua:.3f} | {r.wa:.3f} | {f1} | {'' if r.n is None else r.n} |")
    speakers = _dict(card.get("metrics")).get("test_speakers")
    note = f"\n\nTest speakers: {', '.join(map(str, speakers))}." if speakers else ""
    return "\n".join(lines) + note


def speakers_text(names) -> str:
    """``["emodb:03", "emodb:13", "nemo:EB0"]`` -> ``emodb 03, 13; nemo EB0``."""
    by_corpus: dict[str, list[str]] = {}
    for s in names or []:
        corpus, _, spk = str(s).partition(":")
        by_corpus.setdefault(corpus if spk else "", []).append(spk or corpus)
    return "; ".join(f"{c} {', '.join(v)}".strip() for c, v in by_corpus.items()) or "none recorded"


def card_summary_markdown(name: str, card: dict) -> str:
    """A checkpoint card as a short readable summary: model, data, speakers held out, recipe, licence."""
    t = _dict(card.get("training"))
    cfg = _dict(t.get("config"))
    model = _dict(card.get("model"))
    label_set = _dict(card.get("label_set"))
    lines = [f"### {name}",
             f"**Model**: `{model.get('architecture', '?')}`, "
             f"{_dict(card.get('weights')).get('parameters', 0):,} parameters, heads: "
             f"{', '.join(_dict(card.get('heads')))}; created {card.get('created_utc', '?')}."]
    encoder = _dict(card.get("encoder"))
    if encoder:
        lines.append(f"**Pretrained encoder** (frozen, under the model): {encoder.get('model', '?')}, "
                     f"{encoder.get('license', 'licence not stated')}; weights digest "
                     f"`{str(encoder.get('digest', '?'))[:12]}`.")
    corpora = [c for c in t.get("corpora", []) if isinstance(c, dict)]
    if corpora:
        data = ", ".join(f"{c.get('corpus')} ({c.get('utterances', '?')} clips)" for c in corpora)
        dropped = _dict(t.get("dropped_labels"))
        drop = f"; dropped: {', '.join(f'{k} ({v})' for k, v in dropped.items())}" if dropped else ""
        lines.append(f"**Data**: {data}; {t.get('n_train', '?')} train / {t.get('n_dev', '?')} dev / "
                     f"{t.get('n_test', '?')} test clips{drop}.")
    if label_set:
        lines.append(f"**Classes** ({label_set.get('name', '?')}): {', '.join(label_set.get('classes', []))}"
                     + (f" — {label_set['description']}" if label_set.get("description") else "") + ".")
    speakers = _dict(t.get("speakers"))
    hp = _dict(_dict(card.get("model")).get("hparams"))
    probe = closed_form(card)
    if speakers:
        dev = speakers_text(speakers.get("dev"))
        role = _probe_dev_role(hp) if probe else "picks the epoch"
        dev = (f". Dev speakers, which {role} and then trained in the refit: {dev}" if probe and hp.get("refit")
               else f"; dev ({role}) {dev}")  # a refit trains on dev
        lines.append(f"**Speakers held out** (never trained on): test {speakers_text(speakers.get('test'))}{dev}.")
    if probe:  # no epochs, no augmentation: a regression on encoder statistics
        layers = hp.get("layers") or []
        states = f"{layers[0]}-{layers[-1]}" if layers and list(layers) == list(range(layers[0], layers[-1] + 1)) \
            else ", ".join(map(str, layers)) or "?"
        pooled = {"mean": "the mean", "std": "the standard deviation"}.get(hp.get("pool"), "the mean and standard deviation")
        nap = (f", the {hp['nap']} directions along which the training speakers differ most projected out (NAP)"
               if hp.get("nap") else "")
        balance = "class- and corpus-balanced" if hp.get("balance") == "corpus" else "class-balanced"
        framed = ", each frame layer-normalised first" if hp.get("frame_norm") else ""
        classifier = (f"linear discriminant analysis (equal class priors) with shrinkage {hp.get('shrinkage', '?')}"
                      if hp.get("classifier") == "lda" else f"{balance} logistic regression with C {hp.get('C', '?')}")
        lines.append(f"**Recipe**: linear probe, no gradient steps: {pooled} over speech of "
                     f"encoder states {states} ({hp.get('n_layers', '?')} blocks run){framed}, standardised{nap}, "
                     f"{classifier} {'fixed by the dev-only screen' if _screen_fixed(hp) else 'chosen on dev UA'}"
                     + (", then refitted on the training and dev speakers together" if hp.get("refit") else "")
                     + f"; split {cfg.get('split', '?')} fold {cfg.get('fold', '?')} of {cfg.get('n_folds', '?')}, "
                       f"seed {cfg.get('seed', '?')}; no augmentation.")
    elif cfg:
        aug = [a for a, on in (("VTLP " + "–".join(str(cfg.get(k)) for k in ("vtlp_low", "vtlp_high")), cfg.get("vtlp")),
                               ("SpecAugment", cfg.get("specaug")), ("mixup", cfg.get("mixup"))) if on]
        aug += list(cfg.get("augment") or [])
        feats = _dict(cfg.get("features"))
        members = t.get("ensemble") if isinstance(t.get("ensemble"), list) else None
        best = (f"an ensemble of {len(members)} seeds, best epochs "
                + ", ".join(str(m.get("best_epoch", "?")) for m in members if isinstance(m, dict))) if members \
            else f"best: {_dict(card.get('metrics')).get('best_epoch', '?')}"
        tuned = hp.get("tune_layers") or 0
        encoder = "" if not card.get("encoder") else (
            f"the encoder's top {tuned} of {hp.get('n_layers', '?')} blocks fine-tuned at "
            f"{cfg.get('encoder_lr', '?')} x lr, " if tuned else f"encoder frozen ({hp.get('n_layers', '?')} blocks run), ")
        lines.append(f"**Recipe**: {cfg.get('epochs', '?')} epochs ({best}), {encoder}"
                     f"batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, {cfg.get('norm', '?')} normalisation, "
                     f"split {cfg.get('split', '?')} fold {cfg.get('fold', '?')} of {cfg.get('n_folds', '?')}, "
                     f"seed {cfg.get('seed', '?')}; augmentation: {', '.join(aug) or 'none'}"
                     + (f"; features: {', '.join(k for k, v in feats.items() if v is True)}" if feats else "") + ".")
    if card.get("license"):
        lines.append(f"**Licence**: {card['license']}")
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------ retrain comparison
def comparison_rows(result: dict) -> list[ComparisonRow]:
    """A ``training.compare`` result -> one row per set both models were scored on (new model's order)."""
    scores = _dict(result.get("scores"))
    old, new = _dict(scores.get("previous")), _dict(scores.get("new"))
    rows = []
    for k, n in new.items():
        o = old.get(k)
        if not (isinstance(o, dict) and isinstance(n, dict)):
            continue
        try:
            rows.append(ComparisonRow(str(k), None if n.get("n") is None else int(n["n"]), float(o["ua"]),
                                      float(n["ua"]), float(o["wa"]), float(n["wa"])))
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def comparison_caption(result: dict) -> str:
    speakers = [str(s) for s in result.get("speakers", []) or []]
    return (f"Both models scored on the same {result.get('n', 0)} clips of {len(speakers)} speakers "
            f"that neither trained on ({', '.join(speakers) or 'none'})")


COMPARISON_HEADERS = ("set", "clips", "previous UA", "new UA", "Δ UA", "previous WA", "new WA", "Δ WA")


def _cells(r: ComparisonRow) -> list[str]:
    return [r.set, "" if r.n is None else str(r.n), f"{r.previous_ua:.3f}", f"{r.new_ua:.3f}", f"{r.delta_ua:+.3f}",
            f"{r.previous_wa:.3f}", f"{r.new_wa:.3f}", f"{r.delta_wa:+.3f}"]


def comparison_html(result: dict) -> str:
    """:func:`comparison_rows` as a full-width HTML table with its caption (and the comparison's note)."""
    rows = comparison_rows(result)
    caption = html.escape(comparison_caption(result))
    if not rows:
        return f"<p>{caption}: no scores.</p>"
    head = "".join(f"<th>{h}</th>" for h in COMPARISON_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    note = f"<p>Note: {html.escape(str(result['note']))}.</p>" if result.get("note") else ""
    left = _dict(result.get("left_out_speakers"))
    if left:
        note += "<p>Left out: " + html.escape(", ".join(f"{s} ({why})" for s, why in sorted(left.items()))) + ".</p>"
    return (f'<table class="comparison" style="width:100%"><caption style="text-align:left">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}")


def comparison_markdown(result: dict) -> str:
    """:func:`comparison_rows` as a Markdown table under its caption."""
    rows = comparison_rows(result)
    if not rows:
        return f"{comparison_caption(result)}: no scores."
    lines = [comparison_caption(result) + ":", "", "| " + " | ".join(COMPARISON_HEADERS) + " |",
             "|" + "---|" * len(COMPARISON_HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}."]
    left = _dict(result.get("left_out_speakers"))
    if left:
        lines += ["", "Left out: " + ", ".join(f"{s} ({why})" for s, why in sorted(left.items())) + "."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ what to expect
def chance_ua(card: dict) -> float | None:
    """UA of guessing: 1 / number of classes the model picks from."""
    classes = _dict(card.get("label_set")).get("classes") or \
        _dict(_dict(_dict(card.get("metrics")).get("test")).get("overall")).get("classes")
    return 1.0 / len(classes) if classes else None


def unseen_corpus_ua(card: dict, draw: str | None = None) -> float | None:
    """Leave-one-corpus-out UA: the mean over held-out corpora of ``metrics.loco.pooled[corpus].ua`` (clip by
    clip), or with ``draw`` of ``metrics.loco.adapted[draw].pooled`` (a voice-adapting model, K clips)."""
    loco = _dict(_dict(card.get("metrics")).get("loco"))
    pooled = _dict(loco.get("pooled")) if draw is None else _dict(_dict(_dict(loco.get("adapted")).get(draw)).get("pooled"))
    scores = [float(v["ua"]) for k, v in pooled.items() if k != "overall" and isinstance(v, dict) and "ua" in v]
    return sum(scores) / len(scores) if scores else None


def loco_is_nested(card: dict) -> bool:
    return bool(_dict(_dict(card.get("metrics")).get("loco")).get("nested"))


def unseen_speaker_ua(card: dict) -> float | None:
    """UA on the test speakers of the model's own corpora (``metrics.test.overall.ua``)."""
    try:
        return float(_dict(_dict(card.get("metrics")).get("test")).get("overall")["ua"])
    except (KeyError, TypeError, ValueError):
        return None


def adapted_speaker_ua(card: dict) -> float | None:
    """UA on the test speakers with each clip read relative to its speaker's voice over all of that speaker's
    test clips (``metrics.test_adapted.overall.ua``; models that adapt to voices), else None."""
    try:
        return float(_dict(_dict(card.get("metrics")).get("test_adapted")).get("overall")["ua"])
    except (KeyError, TypeError, ValueError):
        return None


def expectation_line(card: dict) -> str:
    """One line beside a result: what accuracy to expect for a voice the model never heard, with chance (and,
    for a model that adapts to voices, what adapting to 10 of the voice's clips gives). The one definition of
    "what to expect" (the Analyse tab, the Models tab's sentence and README read it)."""
    chance = chance_ua(card)
    tail = f", chance {chance:.0%}" if chance else ""
    loco = unseen_corpus_ua(card)
    ten = unseen_corpus_ua(card, "10")
    cal = _dict(card.get("calibration"))
    calibrated = ("Probabilities are calibrated on held-out corpora." if cal.get("corpora")
                  else "Probabilities are calibrated on held-out speakers." if cal else "")
    if loco is not None:
        how = "nested leave-one-corpus-out" if loco_is_nested(card) else "leave-one-corpus-out"
        voice = (f" Adapted to the voice over 10 of its clips (a voice name, a timeline): about {ten:.0%}."
                 if ten is not None else "")
        return (f"For a voice this model never heard, in a corpus or language it never heard, expect about "
                f"{loco:.0%} UA clip by clip ({how}){tail}.{voice} {calibrated}").rstrip()
    test = unseen_speaker_ua(card)
    adapted = adapted_speaker_ua(card)
    voice = (f" Adapted to the voice over many of its clips: about {adapted:.0%} UA on the same speakers."
             if adapted is not None else "")
    if test is not None:
        return (f"For a voice this model never heard expect about {test:.0%} UA at best (new speakers of its "
                f"training corpora; a new corpus or language is lower){tail}.{voice}")
    return f"This model's card holds no held-out figures: treat its guesses with caution{tail}."


def model_sentence(name: str, card: dict) -> str:
    """The Models tab's first line for a model: unseen speakers, unseen corpus/language, chance."""
    test, loco, chance = unseen_speaker_ua(card), unseen_corpus_ua(card), chance_ua(card)
    adapted, ten = adapted_speaker_ua(card), unseen_corpus_ua(card, "10")
    first = f"UA {test:.2f} (test speakers of its corpora)" if test is not None else "not measured"
    if test is not None and adapted is not None:
        first += f", {adapted:.2f} adapted to each one's voice"
    how = "nested leave-one-corpus-out" if loco_is_nested(card) else "leave-one-corpus-out"
    second = f"UA {loco:.2f} ({how})" if loco is not None else "not measured for this model"
    if loco is not None and ten is not None:
        second += f", {ten:.2f} adapted to 10 clips of the voice"
    third = f"{chance:.2f}" if chance else "unknown"
    return (f"**{name}** — on speakers it never heard: {first}; on a language/corpus it never heard: {second}; "
            f"chance {third}.")


def calibration_text(card: dict) -> str:
    """The card's calibration in a sentence (temperature, ECE before and after), or why there is none."""
    cal = _dict(card.get("calibration"))
    if not cal:
        return "_this card records no calibration: its probabilities may over- or under-state confidence_"
    parts = [f"temperature {cal['temperature']:.2f}" if isinstance(cal.get("temperature"), (int, float)) else ""]
    voice = _dict(cal.get("voice"))
    if isinstance(voice.get("temperature"), (int, float)) and voice.get("temperature") != cal.get("temperature"):
        parts.append(f"adapted results {voice['temperature']:.2f}")
    for split, words in (("test", "test speakers"), ("dev", "dev speakers"), ("heldout_corpora", "held-out corpora")):
        b, a = cal.get(f"ece_{split}_before"), cal.get(f"ece_{split}_after")
        if isinstance(b, (int, float)) and isinstance(a, (int, float)):
            parts.append(f"ECE on {words} {b:.3f} → {a:.3f}")
    if isinstance(cal.get("ece_test_adapted"), (int, float)):
        parts.append(f"adapted to each test voice {cal['ece_test_adapted']:.3f}")
    how = ("temperature and per-class biases fitted on held-out corpora" if cal.get("corpora")
           else "temperature scaling on the dev speakers")
    return (f"**Calibration** ({how}): " + "; ".join(p for p in parts if p)
            + ". ECE is the mean gap between confidence and accuracy (0 = a 70 % answer is right 70 % of the time).")
