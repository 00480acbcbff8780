"""Array backend dispatch: the same kernels run on numpy (CPU) and CuPy (GPU) arrays."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

import dask
import dask.array as da
import numpy as np

from cloudlab.errors import ExternalToolError

__all__ = [
    "GPU_RESOURCES",
    "array_module",
    "asnumpy",
    "gpu_available",
    "gpu_resources",
    "gpu_tasks",
    "to_cpu",
    "to_gpu",
]

GPU_RESOURCES = {"GPU": 1}


def gpu_resources() -> dict[str, int]:
    """Resources that every GPU task asks for (``{"GPU": 1}``)."""
    return dict(GPU_RESOURCES)


@contextmanager
def gpu_tasks() -> Iterator[None]:
    """Annotate the graph built inside the block so its tasks run on GPU workers only."""
    with dask.annotate(resources=gpu_resources()):
        yield


def array_module(x: object) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) that owns ``x``.

    Parameters
    ----------
    x : array-like
        A numpy or CuPy array (or a dask array whose chunks are one of them).

    Returns
    -------
    module
        ``cupy`` when ``x`` lives on a GPU, ``numpy`` otherwise.
    """
    meta = getattr(x, "_meta", x)
    if type(meta).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


@cache
def gpu_available() -> bool:
    """Whether CuPy is installed and at least one CUDA device answers.

    Returns
    -------
    bool
        False on machines without CuPy, without a driver or without a GPU.
    """
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available()) and cupy.cuda.runtime.getDeviceCount() > 0
    except RuntimeError:
        return False


def _require_cupy() -> ModuleType:
    if not gpu_available():
        raise ExternalToolError(
            "No usable GPU: install cloudlab[gpu] (CuPy) on a machine with a CUDA device, "
            "or leave gpu=False."
        )
    import cupy

    return cupy


def to_gpu(x: da.Array) -> da.Array:
    """Move the chunks of a dask array to the GPU (lazily, chunk by chunk).

    Parameters
    ----------
    x : dask.array.Array
        A dask array with numpy chunks.

    Returns
    -------
    dask.array.Array
        The same array with CuPy chunks.
    """
    cupy = _require_cupy()
    return x.map_blocks(cupy.asarray, dtype=x.dtype, meta=cupy.empty((0,) * x.ndim, x.dtype))


def to_cpu(x: da.Array) -> da.Array:
    """Bring the chunks of a dask array back to host memory as numpy arrays.

    Parameters
    ----------
    x : dask.array.Array
        A dask array with numpy or CuPy chunks.

    Returns
    -------
    dask.array.Array
        The same array with numpy chunks.
    """
    return x.map_blocks(asnumpy, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def asnumpy(x: object) -> np.ndarray:
    """Return ``x`` as a numpy array, copying from the GPU when needed."""
    if array_module(x) is np:
        return np.asarray(x)
    return x.get()  # type: ignore[attr-defined]
