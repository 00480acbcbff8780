"""Import TensorFlow once, its C++ start-up lines silenced when the user asked for quiet.

TensorFlow 2.21 prints its oneDNN notice through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read,
so the variable alone no longer keeps the start-up quiet.  When it is set to 1 or more (the
CLI sets 2 unless ``--debug``), the import runs with the process's standard error sent to
``/dev/null``; Python errors of the import are raised as usual.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from types import ModuleType

from cloudlab.errors import MissingDependencyError

__all__ = ["load_tensorflow"]


@contextmanager
def _stderr_discarded():
    """File descriptor 2 (where C++ libraries write) goes to ``/dev/null`` inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def _quiet() -> bool:
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return level.isdigit() and int(level) >= 1


def load_tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly when ``TF_CPP_MIN_LOG_LEVEL`` ≥ 1.

    Call it before ``import keras`` (keras imports TensorFlow, its backend).

    Returns
    -------
    module
        ``tensorflow``.

    Raises
    ------
    MissingDependencyError
        TensorFlow is not installed.
    """
    try:
        if "tensorflow" not in sys.modules and _quiet():
            with _stderr_discarded():
                import tensorflow
        else:
            import tensorflow
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            "AstroNet's models and TFRecords need TensorFlow: pip install 'cloudlab[astronet]'"
        ) from err
    return tensorflow
