"""Figure scaffolding shared by the analysis modules (headless: matplotlib.figure.Figure, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

PNG_DPI = 150


def save(fig: Figure, out_dir: Path, stem: str, written: list[Path], formats=("png",), dpi=PNG_DPI) -> None:
    """`stem`.<format> in out_dir for each format, cropped to the drawing; each path appended to written."""
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        written.append(path)


def steps_axis(ax, label: bool = True) -> None:
    """Thousands separators; the label only where asked (a panel above another with the same x has none)."""
    if label:
        ax.set_xlabel("training steps")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.grid(alpha=0.3)


def min_max_band(
    ax, steps, values: np.ndarray, color: str, label: str, lw: float, alpha: float = 0.2
) -> None:
    """The mean over runs of `values` (runs x steps) as a line, their min-max range shaded (with two runs
    or more)."""
    ax.plot(steps, values.mean(0), color=color, lw=lw, label=label)
    if len(values) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=alpha, lw=0)
