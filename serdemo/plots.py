"""Plotly figures. They take arrays and times, never models."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from serdemo.vtlp import F_HI_HZ, warp_frequency

FIGURE_HEIGHT = 620
PALETTE = "Viridis"


def analysis_figure(frame_times_s: np.ndarray, logmel: np.ndarray, logmel_warped: np.ndarray | None,
                    attention_times_s: np.ndarray, attention: np.ndarray, alpha: float,
                    title: str = "", speech_segments_s: list[tuple[float, float]] | None = None) -> go.Figure:
    """Three panels on one time axis (seconds): log-mel, VTLP-warped log-mel, attention weights.

    ``logmel``/``logmel_warped``: ``(n_mels, frames)`` at ``frame_times_s``; ``attention``: ``(frames',)``
    at ``attention_times_s``. ``speech_segments_s``: where speech was detected; the rest of the
    clip's original timeline is shaded grey in every panel.
    """
    rows = 3 if logmel_warped is not None else 2
    titles = ["log-mel spectrogram"]
    if logmel_warped is not None:
        titles.append(f"after VTLP, alpha = {alpha:.2f}")
    titles.append("attention weight over time")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles,
                        row_heights=[0.37, 0.37, 0.26][-rows:] if rows == 3 else [0.6, 0.4])
    zmin, zmax = float(np.min(logmel)), float(np.max(logmel))
    bands = np.arange(logmel.shape[0])
    fig.add_trace(go.Heatmap(x=frame_times_s, y=bands, z=logmel, colorscale=PALETTE, zmin=zmin, zmax=zmax,
                             showscale=False, name="log-mel", hovertemplate="t=%{x:.2f}s band %{y}<extra></extra>"),
                  row=1, col=1)
    if logmel_warped is not None:
        fig.add_trace(go.Heatmap(x=frame_times_s, y=bands, z=logmel_warped, colorscale=PALETTE, zmin=zmin,
                                 zmax=zmax, showscale=False, name="VTLP log-mel",
                                 hovertemplate="t=%{x:.2f}s band %{y}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=attention_times_s, y=attention, mode="lines", line=dict(width=2, color="#d62728"),
                             fill="tozeroy", name="attention", hovertemplate="t=%{x:.2f}s weight %{y:.3f}<extra></extra>"),
                  row=rows, col=1)
    end = float(max(frame_times_s[-1] if len(frame_times_s) else 0, attention_times_s[-1] if len(attention_times_s) else 0))
    for r in range(1, rows + 1):
        fig.update_xaxes(range=[0, end], row=r, col=1)
        fig.update_yaxes(title_text="mel band" if r < rows else "weight", row=r, col=1)
    if speech_segments_s is not None:
        for a, b in non_speech(speech_segments_s, end):
            fig.add_vrect(x0=a, x1=b, fillcolor="grey", opacity=0.35, line_width=0, layer="above",
                          row="all", col=1)
    fig.update_xaxes(title_text="time (s)", row=rows, col=1)
    fig.update_layout(height=FIGURE_HEIGHT, margin=dict(l=60, r=20, t=60, b=50), showlegend=False,
                      title=dict(text=title, x=0.01))
    return fig


def warp_figure(alpha: float, sample_rate: int = 16000, f_hi_hz: float = F_HI_HZ) -> go.Figure:
    """The VTLP warp f -> f' (kHz), with the identity for reference."""
    f = np.linspace(0, sample_rate / 2, 400)
    g = warp_frequency(f, alpha, sample_rate, f_hi_hz)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=f / 1000, y=f / 1000, mode="lines", line=dict(dash="dot", color="grey"), name="identity"))
    fig.add_trace(go.Scatter(x=f / 1000, y=g / 1000, mode="lines", line=dict(color="#1f77b4", width=3),
                             name=f"alpha = {alpha:.2f}"))
    fig.update_layout(height=260, margin=dict(l=50, r=10, t=40, b=40), title=dict(text="VTLP warp", x=0.01),
                      xaxis_title="f (kHz)", yaxis_title="f' (kHz)", legend=dict(x=0.02, y=0.98))
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str = "") -> go.Figure:
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=rates, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=cm.astype(int), texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(height=420, margin=dict(l=80, r=10, t=50, b=60), title=dict(text=title, x=0.01),
                      xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return fig


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
