"""Plotly figures. They take arrays and times, never models.

Spectrogram panels are drawn in dB relative to the clip's loudest mel bin (0 dB at the top of the
colour bar), with each mel band placed at its centre frequency in Hz, so the axis reads like Praat's.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from serdemo.vtlp import F_HI_HZ, warp_frequency

FIGURE_HEIGHT = 680
PALETTE = "Viridis"
# a short toolbar (zoom, pan, reset, save as PNG) that fits beside the figure's title on a phone
MODEBAR = dict(remove=["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"], bgcolor="rgba(255,255,255,0.8)")
MAX_COLUMNS = 2000  # time columns drawn per panel (see decimate)
DIVERGING = "RdBu_r"  # warped - original: red where VTLP adds energy, blue where it removes it
DB_PER_NEPER = 10.0 / math.log(10.0)  # natural-log power -> dB
VTLP_VIEWS = ("difference", "warped")  # what the VTLP panel shows
SPEC_HOVER = "%{x:.2f} s · %{y:.0f} Hz · %{z:.1f} dB<extra></extra>"
DIFF_HOVER = "%{x:.2f} s · %{y:.0f} Hz · Δ %{z:.1f} dB<extra></extra>"


def to_db(logmel: np.ndarray, reference: float | None = None) -> np.ndarray:
    """Natural-log mel power -> dB below ``reference`` (the clip's peak when None)."""
    logmel = np.asarray(logmel, dtype=np.float32)
    ref = float(np.max(logmel)) if reference is None else reference
    return (logmel - ref) * DB_PER_NEPER


def warp_breakpoint_hz(alpha: float, f_hi_hz: float = F_HI_HZ) -> float:
    """Where the piecewise-linear warp bends, on the warped frequency axis (Hz)."""
    return f_hi_hz * min(alpha, 1.0)


def _colorbar(fig: go.Figure, row: int, title: str) -> dict:
    """A thin colour bar beside subplot ``row`` (spanning that row only)."""
    axis = fig.layout["yaxis" if row == 1 else f"yaxis{row}"]
    lo, hi = axis.domain
    return dict(title=dict(text=title, side="right"), thickness=10, len=hi - lo, y=(lo + hi) / 2,
                yanchor="middle", x=1.0, xpad=4, outlinewidth=0)


def analysis_figure(frame_times_s: np.ndarray, logmel: np.ndarray, logmel_warped: np.ndarray | None,
                    attention_times_s: np.ndarray, attention: np.ndarray, alpha: float,
                    title: str = "", speech_segments_s: list[tuple[float, float]] | None = None,
                    band_hz: np.ndarray | None = None, view: str = "difference",
                    f_hi_hz: float = F_HI_HZ) -> go.Figure:
    """Three panels on one time axis (seconds): log-mel, the VTLP panel, attention weights.

    ``logmel``/``logmel_warped``: ``(n_mels, frames)`` natural-log mel power at ``frame_times_s``;
    ``band_hz (n_mels,)``: each band's centre frequency (None: band numbers). ``view``: the VTLP panel
    shows the ``"difference"`` warped − original (diverging scale, dB) or the ``"warped"`` spectrogram.
    ``attention``: ``(frames',)`` at ``attention_times_s``. ``speech_segments_s``: where speech was
    detected; the rest of the clip's original timeline is shaded grey in every panel.
    """
    if view not in VTLP_VIEWS:
        raise ValueError(f"view must be one of {VTLP_VIEWS}, not {view!r}")
    rows = 3 if logmel_warped is not None else 2
    ref = float(np.max(logmel))
    frame_times_s, logmel, logmel_warped = decimate(frame_times_s, logmel, logmel_warped)
    original = to_db(logmel, ref)
    titles = ["log-mel spectrogram"]
    if logmel_warped is not None:
        titles.append(f"VTLP alpha = {alpha:.2f}: warped − original" if view == "difference"
                      else f"after VTLP, alpha = {alpha:.2f}")
    titles.append("attention weight")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles,
                        row_heights=[0.37, 0.37, 0.26] if rows == 3 else [0.6, 0.4])
    y = np.asarray(band_hz, dtype=float) if band_hz is not None else np.arange(logmel.shape[0])
    unit = "Hz" if band_hz is not None else "band"
    hover = SPEC_HOVER if band_hz is not None else "%{x:.2f} s · band %{y} · %{z:.1f} dB<extra></extra>"
    zmin = max(float(original.min()), -80.0)
    fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=original, colorscale=PALETTE, zmin=zmin, zmax=0.0,
                             colorbar=_colorbar(fig, 1, "dB re peak"), name="log-mel", hovertemplate=hover),
                  row=1, col=1)
    if logmel_warped is not None:
        warped = to_db(logmel_warped, ref)
        if view == "difference":
            diff = warped - original
            span = float(np.percentile(np.abs(diff), 99)) or 1.0
            fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=diff, colorscale=DIVERGING, zmid=0.0,
                                     zmin=-span, zmax=span, colorbar=_colorbar(fig, 2, "Δ dB"),
                                     name="warped − original",
                                     hovertemplate=DIFF_HOVER if band_hz is not None else hover), row=2, col=1)
        else:
            fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=warped, colorscale=PALETTE, zmin=zmin, zmax=0.0,
                                     showscale=False, name=f"VTLP alpha = {alpha:.2f}", hovertemplate=hover),
                          row=2, col=1)
        if band_hz is not None:
            knee = warp_breakpoint_hz(alpha, f_hi_hz)
            fig.add_hline(y=knee, line=dict(color="white" if view == "warped" else "black", dash="dash", width=1),
                          row=2, col=1)
            fig.add_annotation(x=1, xref="x2 domain", xanchor="right", y=knee, yref="y2", yanchor="bottom",
                               text=f"warp breakpoint {knee / 1000:.2f} kHz", showarrow=False,
                               font=dict(size=11, color="black"), bgcolor="rgba(255,255,255,0.8)")
    fig.add_trace(go.Scatter(x=attention_times_s, y=attention, mode="lines", line=dict(width=2, color="#d62728"),
                             fill="tozeroy", name="attention",
                             hovertemplate="%{x:.2f} s · weight %{y:.3f}<extra></extra>"),
                  row=rows, col=1)
    end = float(max(frame_times_s[-1] if len(frame_times_s) else 0, attention_times_s[-1] if len(attention_times_s) else 0))
    for r in range(1, rows + 1):
        fig.update_xaxes(range=[0, end], row=r, col=1)
        fig.update_yaxes(title_text=f"frequency ({unit})" if r < rows else "weight", row=r, col=1)
    if speech_segments_s is not None:  # one shapes list, set once (add_vrect per shape is slow)
        grey = non_speech(speech_segments_s, end)
        shapes = list(fig.layout.shapes) + [
            dict(type="rect", xref=f"x{'' if r == 1 else r}", yref=f"y{'' if r == 1 else r} domain", x0=a, x1=b,
                 y0=0, y1=1, fillcolor="grey", opacity=0.35, line_width=0, layer="above")
            for r in range(1, rows + 1) for a, b in grey]
        fig.update_layout(shapes=shapes)
    fig.update_xaxes(title_text="time (s) · grey: no speech detected", row=rows, col=1)
    # the title sits under the toolbar's row (which shows on hover at the top right), so neither covers the other
    fig.update_layout(height=FIGURE_HEIGHT, margin=dict(l=60, r=10, t=88, b=50), showlegend=False, modebar=MODEBAR,
                      title=dict(text=title, x=0.01, xanchor="left", y=1 - 36 / FIGURE_HEIGHT, yanchor="top",
                                 font=dict(size=16)))
    return fig


def warp_figure(alpha: float, sample_rate: int = 16000, f_hi_hz: float = F_HI_HZ) -> go.Figure:
    """The VTLP warp f -> f' (kHz), with the identity for reference and the breakpoint marked."""
    f = np.linspace(0, sample_rate / 2, 400)
    g = warp_frequency(f, alpha, sample_rate, f_hi_hz)
    knee_out = warp_breakpoint_hz(alpha, f_hi_hz)
    knee_in = knee_out / alpha
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=f / 1000, y=f / 1000, mode="lines", line=dict(dash="dot", color="grey"), name="identity"))
    fig.add_trace(go.Scatter(x=f / 1000, y=g / 1000, mode="lines", line=dict(color="#1f77b4", width=3),
                             name=f"alpha = {alpha:.2f}"))
    fig.add_trace(go.Scatter(x=[knee_in / 1000], y=[knee_out / 1000], mode="markers+text",
                             marker=dict(size=9, color="black"), text=[f"breakpoint {knee_out / 1000:.2f} kHz"],
                             textposition="top left", name="breakpoint"))
    fig.update_layout(height=260, margin=dict(l=50, r=10, t=40, b=40), title=dict(text="VTLP warp", x=0.01),
                      xaxis_title="f (kHz)", yaxis_title="f' (kHz)", showlegend=False)
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str = "") -> go.Figure:
    """Colours: each true class's row normalised to 1 (recall on the diagonal); numbers: clip counts."""
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=rates, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=cm.astype(int), texttemplate="%{text}",
                               colorbar=dict(title=dict(text="share of row", side="right"), thickness=10),
                               hovertemplate="true %{y}, predicted %{x}: %{text} clip(s), %{z:.0%} of the row"
                                             "<extra></extra>"))
    fig.update_layout(height=520, margin=dict(l=80, r=10, t=128, b=60), modebar=MODEBAR,
                      title=dict(text=f"{title}<br><sup>colour: row-normalised share of the true class"
                                      "<br>numbers: clip counts · rows: true class</sup>", x=0.01, xanchor="left",
                                 y=1 - 54 / 520, yanchor="top", font=dict(size=15)),
                      xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return fig


def decimate(times_s: np.ndarray, *panels: np.ndarray | None, max_columns: int = MAX_COLUMNS):
    """Average neighbouring frames so a panel has at most ``max_columns`` columns (a 60 s clip has 6,000
    frames, more than a screen has pixels); times become each group's mean. Short clips pass unchanged."""
    n = len(times_s)
    k = -(-n // max_columns)
    if k <= 1:
        return (times_s, *panels)
    m = n // k * k
    def pool(x):
        return None if x is None else np.asarray(x)[..., :m].reshape(*np.shape(x)[:-1], m // k, k).mean(-1)
    return (pool(np.asarray(times_s)), *[pool(p) for p in panels])


def non_speech(segments_s: list[tuple[float, float]], end_s: float) -> list[tuple[float, float]]:
    """The complement of speech segments within ``[0, end_s]``."""
    out, t = [], 0.0
    for a, b in sorted(segments_s):
        if a > t:
            out.append((t, float(a)))
        t = max(t, float(b))
    if t < end_s:
        out.append((t, float(end_s)))
    return out
