"""The workbench's checkpoint catalogue: the checkpoint folders scanned (a broken checkpoint skipped, weights
checked against their card once per file version), the pickers' choices and order, the loaded models (one
load per checkpoint), and the Models tab's view of a card. :class:`Catalogue` is a part of
:class:`serdemo.workbench.Workbench`, which re-exports every name here.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from serdemo.cards import (METRIC_NOTES, calibration_text, card_summary_markdown, expectation_line, headline,
                           metrics_markdown, model_sentence)
from serdemo.checkpoint import CheckpointError, list_checkpoints, read_card, sha256_file, weights_path
from serdemo.inference import Predictor
from serdemo.plots import confusion_figure, reliability_figure
from serdemo.uikit import echo, text_arg

log = logging.getLogger("serdemo.ui")  # the workbench's log, as before the split


PICKER_INFO = ("Order: the default first, then by dev UA (never by the test figures). UA · WA: each model on its "
               "own test speakers (never trained on); more on the Models tab")


@dataclass
class ModelView:
    summary: str  # Markdown: data, speakers held out, recipe, licence
    metrics: str  # Markdown table: every held-out evaluation, per corpus, reference rows
    confusion: go.Figure | None
    sentence: str = ""  # one line: unseen speakers, unseen corpus/language, chance
    reliability: go.Figure | None = None  # the card's reliability bins
    calibration: str = ""  # temperature and ECE in a sentence


class Catalogue:
    """The checkpoint catalogue and the loaded predictors.

    Part of :class:`serdemo.workbench.Workbench` (a mixin: the state it reads, ``settings``, ``store``, ``_lock`` ...,
    is the workbench's, made in its ``__init__``).
    """

    # ------------------------------------------------------------ checkpoints
    def reload(self) -> dict[str, Path]:
        """Rescan the checkpoint folders; a broken checkpoint is skipped with one warning (once per problem)."""
        found, cards, broken = {}, {}, {}
        for path in list_checkpoints(*self.settings.checkpoint_dirs):
            try:
                card = read_card(path)
                self._check_weights(path, card)
            except CheckpointError as exc:
                broken[path] = str(exc)
                continue
            if path.name not in found:
                found[path.name], cards[path.name] = path, card
        for path, problem in broken.items():
            if self.broken.get(path) != problem:
                log.warning("skipping %s", problem)
        with self._lock:
            self.catalogue, self.cards, self.broken = found, cards, broken
            self._predictors = {k: v for k, v in self._predictors.items() if k in found}
        return found

    def _check_weights(self, path: Path, card: dict) -> None:
        """The weights file is there with the size and SHA-256 its card states (hashed once per file version),
        so a checkpoint with broken weights is never offered; raises :class:`CheckpointError`."""
        weights = weights_path(path, card)
        try:
            st = weights.stat()
        except OSError:
            raise CheckpointError(f"checkpoint '{path.name}': its weights file is missing") from None
        key = (str(weights), st.st_size, st.st_mtime_ns)
        if key not in self._verified:
            if st.st_size != card["weights"].get("bytes", st.st_size) or \
                    sha256_file(weights) != card["weights"]["sha256"]:
                raise CheckpointError(f"checkpoint '{path.name}': its weights do not match its card (damaged or "
                                      "replaced); save the checkpoint again")
            self._verified.add(key)

    def choices(self) -> list[tuple[str, str]]:
        with self._lock:  # one catalogue: a reload swaps names and cards together
            catalogue, cards = self.catalogue, self.cards
        default = self.settings.default_model

        def dev_ua(name):
            try:
                return float(cards[name]["metrics"]["dev"]["overall"]["ua"])
            except (KeyError, TypeError, ValueError):
                return -1.0
        # the default first, then by dev UA (what recipes are chosen on), never by the test figures
        order = sorted(catalogue, key=lambda n: (n != default, -dev_ua(n), n))
        return [(f"{name} · {headline(cards[name])}", name) for name in order]

    def default_choice(self) -> str | None:
        catalogue = self.catalogue
        if self.settings.default_model in catalogue:
            return self.settings.default_model
        return next(iter(catalogue), None)

    def predictor(self, name: str | None) -> Predictor:
        """The loaded model of checkpoint ``name`` (loaded once). Loading (its hash check included) holds only
        that checkpoint's own lock: the catalogue, the pickers and the other models are not kept waiting."""
        name = name or self.default_choice()
        if name not in self.catalogue:
            self.reload()
        with self._lock:
            path, loaded = self.catalogue.get(name), self._predictors.get(name)
            if loaded is not None:
                return loaded
            if path is None:
                raise CheckpointError(f"no checkpoint named '{echo(name)}'; press 'Reload checkpoints' or pick another")
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per checkpoint, however many requests ask at once
            with self._lock:
                if name in self._predictors:
                    return self._predictors[name]
            pred = Predictor.from_checkpoint(path, self.settings.device)
            with self._lock:
                if self.catalogue.get(name) == path:  # a reload meanwhile may have dropped or replaced it
                    self._predictors[name] = pred
            return pred

    def expectation(self, model_name: str | None) -> str:
        """What accuracy to expect for a voice the model never heard, read from its card, with chance level."""
        name = model_name or self.default_choice()
        with self._lock:
            card = self.cards.get(name)
        return expectation_line(card) if card else ""

    def model_view(self, name: str | None) -> ModelView:
        """A checkpoint's card as a readable summary, its held-out metrics and its test confusion."""
        name = text_arg(name, "the model name", 256)
        path = self.catalogue.get(name) if name else None  # one read: a reload may swap the catalogue
        if path is None:
            return ModelView("_pick a checkpoint_", "", None)
        try:
            card = read_card(path)
        except CheckpointError as exc:
            gr.Warning(str(exc))
            return ModelView(f"_{html.escape(str(exc))}_", "", None)
        try:
            m = card.get("metrics", {})
            fig = confusion_figure(m["test"]["overall"]["confusion"], m["test"]["overall"]["classes"],
                                   f"{name}: confusion, test speakers")
        except (AttributeError, KeyError, TypeError, ValueError):
            fig = None  # no (readable) held-out confusion in this card
        bins = (card.get("calibration") or {}).get("reliability", {}).get("bins") \
            if isinstance(card.get("calibration"), dict) else None
        reliability = reliability_figure(bins, f"{name}: reliability, test speakers (calibrated)") if bins else None
        notes = "\n".join(f"- {n}" for n in METRIC_NOTES)
        return ModelView(card_summary_markdown(name, card), f"{notes}\n\n{metrics_markdown(card)}", fig,
                         model_sentence(name, card), reliability, calibration_text(card))

    def models_overview(self) -> str:
        """One sentence per model (the pickers' order): unseen speakers, unseen corpus/language, chance."""
        with self._lock:
            cards = dict(self.cards)
        lines = [model_sentence(name, cards[name]) for _, name in self.choices() if name in cards]
        return ("#### What to expect from each model (listed default first, then by dev UA)\n\n"
                + "\n\n".join(lines)) if lines else "_no checkpoints found_"
