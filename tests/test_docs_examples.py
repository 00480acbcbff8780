"""The code examples in the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

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
