"""Small PNG plots for asset metadata (matplotlib, headless), and their markdown form."""

from __future__ import annotations

import base64
import io

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must come before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """The PNG inline as markdown (a base64 data URI), for `dg.MetadataValue.md`."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def grouped_bars(
    values: dict[str, dict[str, float]], title: str, ylabel: str, ylim: float | None = 1.0
) -> bytes:
    """Bars grouped by the outer key (e.g. evaluation set), one colour per inner key (e.g.
    retrieval mode or metric); returns a PNG."""
    plt = _pyplot()
    groups = list(values)
    series = list(dict.fromkeys(name for inner in values.values() for name in inner))
    width = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 + 1.6 * len(groups)), 3.2))
    for offset, name in enumerate(series):
        positions = [g + (offset - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [values[group].get(name) or 0.0 for group in groups]
        bars = axes.bar(positions, heights, width, label=name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    if ylim is not None:
        axes.set_ylim(0, ylim * 1.3)  # room for the legend above the highest bars
    axes.legend(fontsize=7, loc="upper center", ncol=len(series), frameon=False)
    return _png(figure)


def daily_answers_and_rating(series: pd.DataFrame, title: str) -> bytes:
    """Answers per day as bars and the thumbs-up rate as a line on a second axis, from
    `feedback_metrics.daily_series`; returns a PNG."""
    plt = _pyplot()
    figure, answers_axis = plt.subplots(figsize=(7.0, 3.0))
    labels = [day.strftime("%m-%d") for day in series.index]
    answers_axis.bar(labels, series["answers"], color="#8fb3d9", label="answers")
    answers_axis.set_ylabel("answers per day")
    answers_axis.yaxis.get_major_locator().set_params(integer=True)
    answers_axis.tick_params(axis="x", labelrotation=90, labelsize=7)
    rate_axis = answers_axis.twinx()
    rate_axis.plot(labels, series["thumbs_up_rate"], color="#2e7d32", marker="o", markersize=3)
    rate_axis.set_ylim(0, 1.05)
    rate_axis.set_ylabel("thumbs-up rate", color="#2e7d32")
    answers_axis.set_title(title, fontsize=10)
    return _png(figure)
