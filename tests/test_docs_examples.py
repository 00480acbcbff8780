"""The code examples in the docs run as written."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def _first_python_block(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_astronet_quick_start_runs_as_written(tmp_path, monkeypatch):
    code = _first_python_block("astronet.md", "## Quick start")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/astronet.md quick start", "exec"), namespace)
    ds = namespace["ds"]
    assert ds.sizes["tce"] == len(namespace["tces"]) > 0
    assert sorted(p.name[:5] for p in (tmp_path / "records").iterdir()) == ["test-"] + [
        "train"
    ] * 8 + ["val-0"]


ROOT = DOCS.parent
USER_FACING = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
USER_FACING += sorted(ROOT.glob("notebooks/*.ipynb"))


def test_docs_and_notebooks_point_only_inside_the_project():
    """No page or notebook (sources and saved outputs) refers to files outside the project."""
    outside = re.compile(r"\.\./shared|/work/|shared/data|shared/reference")
    hits = [
        f"{path.name}: {match.group(0)}"
        for path in USER_FACING
        for match in outside.finditer(path.read_text())
    ]
    assert hits == []


def test_docs_say_where_each_workflows_real_data_lives():
    index = (DOCS / "index.md").read_text()
    for place in (
        "s3://stpubdata/tess/public/mast/tess-s{sector:04d}-{camera}-{ccd}-cube.fits",  # cutouts
        "s3://stpubdata/tess/public/ffi/",  # BackDrop FFIs
        "s3://stpubdata/kepler/public/lightcurves/",  # AstroNet
        "https://jsoc1.stanford.edu/data/aia/synoptic/",  # timelags
        "## Installing on a hub",
        "CLOUDLAB_EXAMPLE_DATA",
    ):
        assert place in index, place


def _notebook_cells(name: str) -> list[str]:
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", ["tess_tce_cutouts.ipynb", "tce_vetting.ipynb"])
def test_tce_notebook_reads_example_data_or_says_it_falls_back(name, tmp_path, monkeypatch, capsys):
    """The TCE notebooks' catalog cells read the real catalog from ``CLOUDLAB_EXAMPLE_DATA``
    when it is there, and say so when they fall back."""
    cells = _notebook_cells(name)
    setup = cells[0]
    catalog = next(c for c in cells if "CLOUDLAB_EXAMPLE_DATA" in c)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    monkeypatch.delenv("CLOUDLAB_EXAMPLE_DATA", raising=False)
    namespace: dict = {}
    exec(compile(setup + "\n" + catalog, name, "exec"), namespace)
    assert "falling back" in capsys.readouterr().out
    assert len(namespace["targets"]) == 13

    tce = tmp_path / "data" / "tess" / "tce" / "tess2022217141447-s0055-s0055_dvr-tcestats.csv"
    tce.parent.mkdir(parents=True)
    rows = [
        f"{100 + k:011d}-01,{100 + k},{3e6 if k < 4 else 50.0},{1.5 + k},{2800 + k},2.0"
        for k in range(6)
    ]
    header = "tceid,ticid,tce_depth,tce_period,tce_time0bt,tce_duration"
    tce.write_text("\n".join([header, *rows]) + "\n")
    monkeypatch.setenv("CLOUDLAB_EXAMPLE_DATA", str(tmp_path / "data"))
    namespace = {}
    exec(compile(setup + "\n" + catalog, name, "exec"), namespace)
    out = capsys.readouterr().out
    assert "falling back" not in out and "6 TCEs" in out
    assert namespace["targets"].ticid.tolist() == [100, 101, 102, 103]
