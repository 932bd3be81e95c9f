"""What every tab of the page shares (Gradio side): the ZeroGPU decorator, user errors, who is
annotating, and the page's keyboard shortcuts and CSS. Imported by ``ui`` and ``timeline_ui``; imports
neither."""

from __future__ import annotations

import json
import logging

import gradio as gr

from serdemo.audio import AudioError

log = logging.getLogger("serdemo.ui")

try:  # ZeroGPU on Hugging Face Spaces: GPU work runs inside spaces.GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

# Keyboard shortcuts act on the visible tab only, on that tab's own clip: keys 1-9 pick a label, "s"
# saves it, "c" confirms the model's prediction. Each key says what it did in a hint at the bottom of
# the page (the save itself answers in the tab's status line); on a tab without shortcuts it says so.
# Keys typed into a text field are left alone.
SHORTCUT_SCOPES = {  # tab elem_id -> its clip id box, label radio, save and confirm buttons
    "tab-analyse": {"clip": "#clip-id", "labels": "#label-choice", "save": "#save-label", "confirm": "#confirm-label"},
    "tab-annotate": {"clip": "#q-clip", "labels": "#q-label-choice", "save": "#q-save", "confirm": "#q-confirm"},
}
SHORTCUTS_JS = """
<script>
(() => {
const SCOPES = %s;
const visible = (el) => !!el && (el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null);
function hint(text) {
  let box = document.getElementById('shortcut-hint');
  if (!box) {
    box = document.createElement('div'); box.id = 'shortcut-hint'; box.setAttribute('role', 'status');
    box.style.cssText = 'position:fixed;bottom:16px;right:16px;z-index:1000;pointer-events:none;padding:8px 12px;'
      + 'border-radius:6px;background:#222;color:#fff;font:14px sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.3)';
    document.body.appendChild(box);
  }
  box.textContent = text; box.style.display = 'block';
  clearTimeout(box._timer); box._timer = setTimeout(() => { box.style.display = 'none'; }, 4000);
}
document.addEventListener('keydown', (e) => {
  const t = e.target;
  const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable || t.tagName === 'SELECT' ||
    (t.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(t.type)));
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !/^([1-9]|s|c)$/.test(e.key)) return;
  const tab = Object.keys(SCOPES).find((id) => visible(document.getElementById(id)));
  if (!tab) { hint('Shortcuts (1-9, s, c) work on the Analyse and Annotate tabs only'); return; }
  const s = SCOPES[tab], box = document.querySelector(`${s.clip} textarea, ${s.clip} input`);
  const clip = box && box.value ? `clip ${box.value.slice(0, 12)}` : 'no clip yet';
  const radios = document.querySelectorAll(`${s.labels} input[type=radio]`);
  const chosen = [...radios].find((r) => r.checked);
  e.preventDefault();
  if (/^[1-9]$/.test(e.key)) {
    if (radios.length < +e.key) { hint(`No label ${e.key} here (${radios.length} labels)`); return; }
    radios[+e.key - 1].click(); hint(`${e.key}: label ${radios[+e.key - 1].value} for ${clip}`);
  } else if (e.key === 's') {
    hint(`s: saving ${chosen ? chosen.value : 'no label'} for ${clip}`); document.querySelector(s.save)?.click();
  } else {
    hint(`c: confirming the model's prediction for ${clip}`); document.querySelector(s.confirm)?.click();
  }
});
})();
</script>
""" % json.dumps(SHORTCUT_SCOPES)


def user_error(problem: Exception | str, source: str | None = None, duration: float | None = 10) -> gr.Error:
    """A problem the user can fix, as a ``gr.Error`` to raise: one log line, no traceback, no path.

    An :class:`AudioError` is worded for ``source`` (the microphone or an upload).
    """
    message = problem.for_source(source) if isinstance(problem, AudioError) else str(problem)
    log.warning("refused: %s", " ".join(message.split()))
    return gr.Error(message, duration=duration, print_exception=False)


def login_name(request: gr.Request | None) -> str | None:
    """Who is logged in: Gradio auth (``SERDEMO_AUTH``) or a Space's Hugging Face login; None otherwise."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return request.username
    try:
        info = request.session.get("oauth_info") or {}
    except (AttributeError, AssertionError, KeyError):  # no session middleware: no Space login
        return None
    return (info.get("userinfo") or {}).get("preferred_username") or None


def resolve_annotator(name: str, request: gr.Request | None) -> str:
    """The login name where the app has one, else the name typed on the page."""
    return (login_name(request) or name or "").strip()


def annotator_field(remembered: str | None, request: gr.Request | None):
    """On load: a logged-in user annotates under the login name (fixed); otherwise the name typed once,
    which this browser remembers across reloads."""
    user = login_name(request)
    if user:
        return gr.update(value=user, interactive=False, info="your login name")
    return gr.update(value=remembered) if remembered else gr.skip()


CSS = """
#clip-id input, #q-clip input { font-family: monospace; text-overflow: ellipsis; }
#queue table td, #agreement-clips table td { white-space: nowrap; }
#model-metrics table { display: block; width: max-content; max-width: 100%; overflow-x: auto; white-space: nowrap; }
#model-metrics td:first-child { white-space: normal; min-width: 10em; }
.comparison th, .comparison td { padding: 4px 10px; text-align: right; }
.comparison th:first-child, .comparison td:first-child { text-align: left; }
.comparison thead th { border-bottom: 2px solid var(--border-color-primary); }
"""


