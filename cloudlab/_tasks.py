"""Small task functions that run on workers in cluster checks (importable, hence picklable)."""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["slow_plane_sum", "worker_environment_value"]


def worker_environment_value(name: str) -> str | None:
    """The value of environment variable ``name`` on the worker that runs this task."""
    return os.environ.get(name)


def slow_plane_sum(plane: np.ndarray, delay: float) -> np.ndarray:
    """Sum of one plane after ``delay`` seconds (a stand-in for a slow per-file kernel)."""
    time.sleep(delay)
    return np.asarray(plane, dtype="f8").sum(keepdims=True)
