"""Every plot a user sees has labelled axes with units and labelled colour bars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
IMAGE = re.compile(r"\.imshow\(|\.pcolormesh\(")
LINE = re.compile(r"\.plot\(")


def _plot_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [
        (i, "".join(c["source"]))
        for i, c in enumerate(cells)
        if c["cell_type"] == "code"
        and (IMAGE.search("".join(c["source"])) or LINE.search("".join(c["source"])))
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_images_have_labelled_colour_bars(path):
    for i, src in _plot_cells(path):
        if not IMAGE.search(src):
            continue
        assert "colorbar(" in src, f"{path.name} cell {i}: an image without a colour bar"
        bars = re.findall(r"colorbar\((.*)", src)
        assert all("label" in b for b in bars) or "set_label" in src, (
            f"{path.name} cell {i}: a colour bar without a label"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_plots_have_labelled_axes(path):
    for i, src in _plot_cells(path):
        wcs_axes = "projection=" in src  # WCSAxes label themselves from the WCS
        lightkurve = ".plot(marker" in src or "lc.plot(" in src  # lightkurve labels its axes
        if wcs_axes or lightkurve:
            continue
        labelled = ("xlabel" in src and "ylabel" in src) or ("set(" in src and "xlabel=" in src)
        assert labelled, f"{path.name} cell {i}: a plot without x and y labels"


def test_dre_mosaic_figure_is_labelled():
    from cloudlab.dre.io import mosaic_figure

    image = np.random.default_rng(1).normal(size=(32, 128))
    fig = mosaic_figure(image)
    ax = fig.axes[0]
    assert "pixel" in ax.get_xlabel() and "pixel" in ax.get_ylabel()
    colour_bar = fig.axes[1]
    assert "counts" in colour_bar.get_ylabel()
