"""The Retrain tab's actions: the plan before a run, a run started for its owner, cancelled, kept or
discarded, and its progress as the page shows it (a progress bar with each phase's ETA, the status, the two
models' comparison). The process itself is :class:`serdemo.retrain.Retrainer`'s. :class:`RetrainDesk` is a
part of :class:`serdemo.workbench.Workbench`, which re-exports every name here.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from serdemo.cards import comparison_html, comparison_markdown
from serdemo.checkpoint import CheckpointError, read_card
from serdemo.eta import FIRST_GUESS_S, human_duration
from serdemo.export import export_rows, write_manifest
from serdemo.retrain_access import RetrainBusy, RetrainRefused, check_may_retrain
from serdemo.retrain_plan import report_sentence, retrain_plan
from serdemo.store_rules import WHY_SHORT
from serdemo.uikit import requester, require_retrain_login, text_arg, user_error

PLAN_ROWS = 20  # stored labels that would not train, listed by name before a retraining run


@dataclass
class RetrainView:
    bar: str  # HTML progress bar
    status: str  # Markdown
    comparison: str  # HTML table: the previous and the new model on the same held-out clips
    choices: list | None  # the pickers' new choices once a run's checkpoint is kept (None: unchanged)
    seen: str  # the kept run this page's pickers list
    decide: bool = False  # a done run waits to be kept or discarded: show the two buttons


class RetrainDesk:
    """Retraining from the page.

    Part of :class:`serdemo.workbench.Workbench` (a mixin: the state it reads, ``settings``, ``store``, ``_lock`` ...,
    is the workbench's, made in its ``__init__``).
    """


    def _retrain_corpora(self, card: dict) -> tuple[str, ...]:
        """The corpora a fine-tuning run of ``card``'s checkpoint reads: the settings', else the recipe's own."""
        if self.settings.retrain_corpora is not None:
            return tuple(self.settings.retrain_corpora)
        config = card.get("training", {}).get("config")
        return tuple(config.get("corpora", [])) if isinstance(config, dict) else ()

    def retrain_plan(self, model_name: str | None) -> str:
        """Before a run: which stored labels fine-tuning ``model_name`` would train on and why the others would
        not (:func:`serdemo.retrain.retrain_plan`), and how long a run takes, as Markdown."""
        model_name = text_arg(model_name, "the model name", 256)
        base = self.catalogue.get(model_name) if model_name else None
        if base is None:
            return "_pick a checkpoint to see what fine-tuning it would train on_"
        try:
            card = read_card(base)
        except CheckpointError as exc:
            return f"_{html.escape(str(exc))}_"
        rows = export_rows(self.store)
        if not rows:
            return ("**Before you fine-tune:** no stored clip is labelled yet; label some on the Analyse or Annotate "
                    "tab first.")
        plan = retrain_plan(rows, card, self._retrain_corpora(card))
        model = str((card.get("training", {}).get("config") or {}).get("model", "?"))
        lines = [f"**Before you fine-tune `{model_name}`:** {report_sentence(plan)}"]
        skipped = [c for c in plan["clips"] if c["why"]]
        if skipped:
            shown = skipped[:PLAN_ROWS]
            lines += ["", "| source | label | why it does not train | clip |", "|---|---|---|---|"]
            lines += [f"| {_cell(c['source'] or 'recording')} | {c['label']} | "
                      f"{WHY_SHORT.get(c['why'], c['why'].replace('label not in the', 'not in'))} | `{c['clip'][:8]}` |"
                      for c in shown]
            if len(skipped) > len(shown):
                lines.append(f"\n_and {len(skipped) - len(shown)} more_")
        notes = ["held-out speakers as the base model's card lists them" + (
                 "" if plan["same_split"] else " (this run reads other corpora, so its own split may differ)"),
                 "a renamed copy of a corpus clip is found by the run itself"]
        if any(a.startswith("--limit-per-corpus") for a in self.settings.retrain_args):
            notes.append("this server trains on a sample of each corpus (--limit-per-corpus): a copy of a corpus "
                         "clip outside the sample trains")
        guess = FIRST_GUESS_S.get(model, 300.0)
        lines += ["", f"A run of this recipe (`{model}`) takes about **{human_duration(guess)}** on a 2-core CPU: "
                  "reading the corpora, preparing, training, then scoring the previous and the new model on the same "
                  "held-out speakers; each phase shows its own ETA. The run reports what it trains on once it has read "
                  f"its data. ({'; '.join(notes)}.)"]
        return "\n".join(lines)

    def retrain(self, model_name: str | None, user: str | None = None, owner: str = "") -> str:
        """Fine-tune the selected checkpoint on the stored annotations in a background process, for ``owner``
        (:func:`serdemo.uikit.requester`: only they or an admin may cancel, keep or discard the run; their own
        quota counts it). With ``SERDEMO_AUTH`` set only a logged-in ``user`` may start a run."""
        try:
            check_may_retrain(user)
        except RetrainRefused as exc:
            raise user_error(exc) from None
        model_name = text_arg(model_name, "the model name", 256)
        base = self.catalogue.get(model_name) if model_name else None  # one read: a reload may swap the catalogue
        if base is None:
            raise user_error("pick a checkpoint to fine-tune")
        if not self.store.current_labels():
            raise user_error("there are no labelled clips in the store yet: relabel some clips first")
        try:
            card = read_card(base)
        except CheckpointError as exc:
            raise user_error(exc) from None
        corpora = self._retrain_corpora(card)
        manifest = write_manifest(self.store, self.store.directory / "retrain" / "manifest.csv")
        self.retrainer.corpora = list(corpora)
        try:
            out = self.retrainer.start(base, card, manifest, list(self.settings.retrain_args), owner=owner)
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return f"Started fine-tuning **{model_name}** on {len(self.store.current_labels())} stored clips " \
               f"+ {len(corpora)} corpora → `{out.name}`"

    def _comparison(self, st: dict) -> dict | None:
        """A finished run's comparison (``training.compare``'s result) while it waits for a decision, or None."""
        return self.retrainer.comparison_result() if st.get("decision") == "waiting" else None

    def _retrain_markdown(self, st: dict) -> str:
        """The run's state in a line or two (the comparison itself is rendered from its data, apart)."""
        name = st.get("out", "")
        if st["state"] == "idle":
            return "No retraining run yet."
        if st["state"] == "running":
            text = f"Training `{name}` ({human_duration(st['elapsed_s'])} so far)" + (
                f"; dev UA after epoch {st['epoch']}: {st['dev_ua']:.3f}" if st["dev_ua"] is not None else "") + "."
            if st.get("store"):
                text += f"\n\nThe run has read its data: {report_sentence(st['store'])}"
            return text
        if st["state"] == "failed":
            return f"Retraining `{name}` failed: {st.get('reason') or 'the server log has the details'}."
        if st["state"] == "cancelled":
            return f"Retraining `{name}` was cancelled."
        if st.get("decision") == "kept":
            return f"Kept: `{name}` is in the model pickers."
        if st.get("decision") == "discarded":
            return f"Discarded: `{name}` was deleted; `{st.get('base') or 'the previous model'}` stays as it was."
        trained = f"\n\nIt trained on {report_sentence(st['store'])}" if st.get("store") else ""
        return (f"Done: `{name}` is trained. Below, it and `{st.get('base') or 'the previous model'}` are scored on the "
                "same clips of speakers neither trained on. **Keep** it to serve it (it joins the model pickers) or "
                f"**discard** it (its files are deleted); no other run starts until you choose.{trained}")

    # request first: the page wires these with no inputs (Gradio puts the request where its annotation is);
    # an annotator name, where wired, names the requester as it named the run's owner
    def retrain_cancel(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Stop the background run, if one runs: only its owner (who started it) or an admin may. With
        ``SERDEMO_AUTH`` set only a logged-in user may."""
        require_retrain_login(request)
        who = requester(request, text_arg(annotator_name, "the annotator name", 256))
        try:
            cancelled = self.retrainer.cancel(who)
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return "Cancelled: the run was stopped." if cancelled else "No retraining run is in progress."

    def retrain_keep(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Keep the finished run's checkpoint: it joins the model pickers and can be served. Only its owner or
        an admin may (anyone once it has waited an hour). With ``SERDEMO_AUTH`` set only a logged-in user may."""
        name = self._decide(self.retrainer.keep, request, annotator_name)
        self.reload()
        return f"Kept: `{name}` is in the model pickers."

    def retrain_discard(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Delete the finished run's checkpoint. Only its owner or an admin may (anyone once it has waited an
        hour). With ``SERDEMO_AUTH`` set only a logged-in user may."""
        return f"Discarded: `{self._decide(self.retrainer.discard, request, annotator_name)}` was deleted."

    @staticmethod
    def _decide(action, request: gr.Request | None, annotator_name: str | None = None) -> str:
        """Keep or discard (``action``) the done run, for its owner or an admin; its name."""
        require_retrain_login(request)
        who = requester(request, text_arg(annotator_name, "the annotator name", 256))
        try:
            return action(who)
        except RetrainBusy as exc:
            raise user_error(exc) from None

    def retrain_status(self) -> str:
        """Progress of the background run as Markdown; when done, the two models' comparison."""
        st = self.retrainer.status()
        result = self._comparison(st)
        status = self._retrain_markdown(st)
        return f"{status}\n\n{comparison_markdown(result)}" if result is not None else status

    def retrain_view(self, seen: str = "") -> RetrainView:
        """The page's view of the run (polled, and on load, so a reload shows it): the status line, and the
        comparison as a table built from the same data as :meth:`retrain_status`'s Markdown; the keep and
        discard buttons show while a done run waits for the choice."""
        st = self.retrainer.status()
        fresh = st.get("decision") == "kept" and st["out"] != seen
        if fresh and st["out"] not in self.catalogue:  # kept by another page or an API caller
            self.reload()
        result = self._comparison(st)
        table = comparison_html(result) if result is not None else ""
        return RetrainView(retrain_progress_html(st), self._retrain_markdown(st), table,
                           self.choices() if fresh else None, st["out"] if fresh else seen,
                           st.get("decision") == "waiting")

def _cell(text: str) -> str:
    """Text for a Markdown table cell: escaped, no pipes or line breaks, at most 40 characters."""
    text = " ".join(str(text).replace("|", "/").split())
    return html.escape(text if len(text) <= 40 else text[:39] + "…")


def eta_phrase(st: dict) -> str:
    """``ETA 1 min 05 s``; past the estimate, by how much; ``ETA unknown`` without one."""
    if st.get("overdue_s"):
        return f"taking {human_duration(st['overdue_s'])} longer than estimated"
    return f"ETA {human_duration(st.get('eta_s'))}"


def retrain_progress_html(st: dict) -> str:
    """A retraining run (:meth:`Retrainer.status`) as a progress bar: what runs now and its ETA, in every phase."""
    if st.get("state", "idle") == "idle":
        return ""
    step, total, phase = st.get("step", 0), st.get("total_steps", 0), st.get("phase", st["state"])
    activity = st.get("activity") or phase
    if phase == "done":
        value, text = (1, 1), {"kept": "kept: the new model is in the pickers", "discarded": "discarded"}.get(
            st.get("decision"), "done: keep or discard the new model (below)")
    elif phase == "cancelled":
        value, text = (step, total or 1), "cancelled"
    elif phase == "failed":
        value, text = (step, total or 1), "failed (see below)"
    elif phase == "comparing":
        value, text = (1, 1), f"trained; {activity} · {eta_phrase(st)}"
    elif phase == "preparing" or not total:
        value, text = None, f"{activity} · {eta_phrase(st)} (then scoring both models)"
    else:
        loss = f" · loss {st['loss']:.3f}" if st.get("loss") is not None else ""
        value = (step, total)
        text = (f"{step / total:.0%} · step {step}/{total} · epoch {st.get('current_epoch', 0)}/{st.get('of', 0)}"
                f"{loss} · {eta_phrase(st)} (then scoring both models)")
    bar = (f'<progress value="{value[0]}" max="{value[1]}"' if value else "<progress") + \
        ' style="width:100%;height:16px"></progress>'
    name = html.escape(Path(st.get("out", "")).name)
    return (f'<div class="retrain-progress" data-phase="{phase}"><div><b>{name}</b>: {html.escape(text)}</div>'
            f"{bar}</div>")


