"""Figure helpers shared by every notebook: one style, one place figures are saved."""
from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import paths  # noqa: E402


def savefig(fig, name: str, pdf: bool = False) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (and .pdf) and return the PNG path.

    Every figure must have a title and labelled axes; we check so a silent unlabelled
    plot cannot slip into the report.
    """
    for ax in fig.axes:
        if not ax.get_visible() or not ax.has_data() or hasattr(ax, "_colorbar"):
            continue
        if not (ax.get_xlabel() and ax.get_ylabel()):
            raise ValueError(f"figure {name!r}: every axis needs x and y labels")
    if not (fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)):
        raise ValueError(f"figure {name!r} has no title")
    out = paths.ensure_writable(paths.FIGURES_DIR) / f"{name}.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    if pdf:
        fig.savefig(out.with_suffix(".pdf"), bbox_inches="tight")
    return out


class Figures(list):
    """The figures a notebook saved, in order (their PNG paths): ``save`` writes one, shows it, and records it,
    so the run report lists exactly what the notebook drew."""

    def save(self, fig, name: str) -> Path:
        path = savefig(fig, name)
        self.append(path)
        plt.show()
        return path
