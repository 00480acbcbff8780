"""cloudlab's one failure model: an error base, a small hierarchy, the per-item status convention.

Every error the library raises is a :class:`CloudlabError` (most are also the builtin a caller
would expect: an :class:`InputError` is a ``ValueError``, an :class:`HDUNotFoundError` a
``KeyError``, a :class:`StorageError` an ``OSError``), and its message names the file, row,
target or parameter at fault and says what to do.

Per-item failures (a target off silicon, a light curve too sparse, a galaxy cut with NaNs) are not
errors: results carry a ``status`` variable along the item dimension (``"ok"`` or a short failure
code) and a ``reason`` variable with a sentence; functions that can either stop or go on take
``on_error="raise" | "skip"``.
"""

from __future__ import annotations

__all__ = [
    "ON_ERROR",
    "REASON",
    "STATUS",
    "STATUS_OK",
    "CloudlabError",
    "ExternalToolError",
    "FITSFormatError",
    "HDUNotFoundError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "OverwriteError",
    "StorageError",
    "check_on_error",
]

STATUS = "status"
"""Name of the per-item status variable in every result (``"ok"`` or a failure code)."""
REASON = "reason"
"""Name of the per-item reason variable (empty where the status is ``"ok"``)."""
STATUS_OK = "ok"
ON_ERROR = ("raise", "skip")


class CloudlabError(Exception):
    """Base of every error cloudlab raises."""


class InputError(CloudlabError, ValueError):
    """A parameter, file content or table row that cloudlab cannot use; the message says which."""


class FITSFormatError(InputError):
    """A FITS file that is malformed, truncated or of a kind cloudlab does not read."""


class HDUNotFoundError(FITSFormatError, KeyError):
    """The requested HDU (by index, EXTNAME or (EXTNAME, EXTVER)) is not in the file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StorageError(CloudlabError, OSError):
    """Reading or writing through fsspec failed (after retries) or a product cannot be written."""


class NotFoundError(StorageError, FileNotFoundError):
    """A file, object or match for a pattern that should exist does not."""


class OverwriteError(StorageError, FileExistsError):
    """A product already exists at the destination and overwriting was not asked for."""


class ExternalToolError(CloudlabError, RuntimeError):
    """An external program (SExtractor, PSFEx, ...) is missing or failed."""


class MissingDependencyError(CloudlabError, ImportError):
    """An optional Python package a feature needs is not installed; the message says which extra."""


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` argument.

    Parameters
    ----------
    on_error : str
        ``"raise"`` (stop at the first failed item) or ``"skip"`` (record a status and go on).

    Returns
    -------
    str
        ``on_error`` unchanged.

    Raises
    ------
    InputError
        For any other value.
    """
    if on_error not in ON_ERROR:
        raise InputError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    return on_error
