"""Locating and running the external astromatic tools (SExtractor, PSFEx)."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from cloudlab.errors import ExternalToolError, InputError

__all__ = [
    "NNW_CANDIDATES",
    "PSFEX_NAMES",
    "SEXTRACTOR_NAMES",
    "ToolError",
    "config_file",
    "find_nnw",
    "find_tool",
    "option_args",
    "run_tool",
    "strip_escapes",
]

#: Binary names, tried in order (Debian ships ``source-extractor``, others ``sex``).
SEXTRACTOR_NAMES = ("source-extractor", "sex", "sextractor")
PSFEX_NAMES = ("psfex",)
#: Where distributions install SExtractor's star/galaxy neural network.
NNW_CANDIDATES = (
    "/usr/share/source-extractor/default.nnw",
    "/usr/share/sextractor/default.nnw",
    "/usr/local/share/source-extractor/default.nnw",
    "/usr/local/share/sextractor/default.nnw",
)


ToolError = ExternalToolError  # the name cloudlab.dre has always exported

#: Terminal control sequences (CSI ``ESC [ ... letter``, other ``ESC x``) the astromatic tools
#: print to redraw their progress lines, e.g. ``\x1b[1M>``.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def strip_escapes(text: str) -> str:
    """Remove terminal escape sequences and control characters (keeping newlines and tabs)."""
    return _ESCAPES.sub("", text)


def find_tool(names: tuple[str, ...], package: str) -> str:
    """Return the path of the first of ``names`` found on ``PATH``.

    Raises
    ------
    ToolError
        Naming the Debian package to install when none is found.
    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolError(
        f"none of {', '.join(names)} is on PATH; install the Debian/Ubuntu package "
        f"'{package}' (apt-get install {package})"
    )


def find_nnw() -> str:
    """Return the path of SExtractor's ``default.nnw`` (needed for ``CLASS_STAR``)."""
    binary = Path(find_tool(SEXTRACTOR_NAMES, "source-extractor")).resolve()
    prefix = binary.parent.parent / "share"
    candidates = [
        prefix / "source-extractor" / "default.nnw",
        prefix / "sextractor" / "default.nnw",
    ]
    for path in [*candidates, *map(Path, NNW_CANDIDATES)]:
        if path.is_file():
            return str(path)
    raise ToolError(
        "SExtractor's default.nnw (star/galaxy network for CLASS_STAR) was not found; "
        "reinstall the 'source-extractor' package or pass options={'STARNNW_NAME': path}"
    )


def config_file(name: str) -> str:
    """Return the path of a shipped DRE configuration file (``default.sex`` …).

    Raises
    ------
    InputError
        For a name cloudlab does not ship (the message lists those it does).
    """
    folder = resources.files("cloudlab") / "data" / "dre"
    path = folder / name
    if not path.is_file():
        shipped = sorted(p.name for p in folder.iterdir() if p.is_file())
        raise InputError(f"cloudlab ships no DRE configuration file {name!r}; it has {shipped}")
    return str(path)


def run_tool(tool: str, args: list[str], cwd: str) -> str:
    """Run an external tool and return its standard error (the tools log there).

    Raises
    ------
    ToolError
        When the tool exits with a non-zero status; the message quotes the tool's error lines.
    """
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = strip_escapes(proc.stderr + "\n" + proc.stdout)
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines[-5:]
        raise ToolError(
            f"{tool} failed (exit status {proc.returncode}): "
            + " | ".join(errors)
            + "; check the input file and the options passed to it"
        )
    return strip_escapes(proc.stderr)


def option_args(options: dict[str, object] | None) -> list[str]:
    """Turn ``{"DETECT_THRESH": 3}`` into ``["-DETECT_THRESH", "3"]``."""
    args: list[str] = []
    for key, value in (options or {}).items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        args += [f"-{key.upper()}", str(value)]
    return args
