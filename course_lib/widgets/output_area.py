"""How every demo puts its picture into its ``ipywidgets.Output``: by setting the area's content.

A demo's sliders redraw a matplotlib figure into an Output. Capturing ``display(fig)`` in
``with output:`` sends the picture through the kernel's messages while the cell runs, and a
headless runner (nbclient) can then wait until its timeout (jupyter/nbclient#312);
``output.append_display_data(fig)`` asks IPython's formatter, which gives only text for a figure
when the inline backend is not active (``MPLBACKEND=Agg``, ``%matplotlib widget``). So the figure
is encoded as a PNG here and becomes the Output's only record through its ``outputs`` trait, the
state that ipywidgets 7 (Colab) and 8 both keep and show.
"""
from __future__ import annotations

import base64
import io

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["figure_record", "show_figure"]


def figure_record(fig: Figure, text: str | None = None) -> dict:
    """``fig`` as a notebook output record: its PNG (tight bounding box) and ``text`` (default: its repr)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(png.getvalue()).decode("ascii"),
                     "text/plain": repr(fig) if text is None else text}}


def show_figure(output, fig: Figure, text: str | None = None) -> None:
    """Make ``fig`` the only content of ``output`` (an ``ipywidgets.Output``) and close it: shown once, there."""
    output.outputs = (figure_record(fig, text),)
    plt.close(fig)
