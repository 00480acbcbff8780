"""Chunk planning: how much one task holds, in one place for every workflow.

A task's size comes from dask's ``array.chunk-size`` (128 MiB by default), capped so that one task
fits a fraction of a worker's memory per thread. :func:`items_per_task` turns a workflow's bytes
per item (a target's cutout, a frame, a galaxy's cuts, a TCE's light curve and views) into items
per task; :func:`plan_spatial_chunks` picks spatial chunks from bytes per pixel. Also: the outputs
of batch tasks as dask arrays in one graph layer, and client-side batches for writers."""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
from dask.highlevelgraph import HighLevelGraph
from dask.utils import parse_bytes

from cloudlab.errors import InputError

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "client_batches",
    "items_per_task",
    "plan_spatial_chunks",
    "task_bytes",
    "task_outputs",
    "worker_memory_limit",
]

#: fraction of a worker's memory (per thread) that one task may use
DEFAULT_MEMORY_FRACTION = 0.5


def worker_memory_limit(client=None) -> int:
    """Memory in bytes available to one task on a worker.

    Parameters
    ----------
    client : distributed.Client, optional
        Cluster to ask. Without one, the current default client is used if there is one,
        else this machine's total memory divided by its cores.

    Returns
    -------
    int
        The smallest ``memory_limit / nthreads`` over the workers (or the local estimate).
    """
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # older distributed: no n_workers argument, lists every worker
            info = client.scheduler_info()
        workers = info["workers"].values()
        limits = [w["memory_limit"] / max(w["nthreads"], 1) for w in workers if w["memory_limit"]]
        if limits:
            return int(min(limits))
    return int(psutil.virtual_memory().total / max(psutil.cpu_count() or 1, 1))


def task_bytes(
    *, memory_limit: int | None = None, fraction: float = DEFAULT_MEMORY_FRACTION
) -> int:
    """Bytes one task may hold: dask's ``array.chunk-size``, capped at a share of a worker's
    memory per thread.

    Parameters
    ----------
    memory_limit : int, optional
        Bytes one task may use on a worker; default :func:`worker_memory_limit`.
    fraction : float
        Share of ``memory_limit`` one task may plan for (headroom for the worker itself).

    Returns
    -------
    int
        ``min(array.chunk-size, fraction * memory_limit)``, at least 1.

    Raises
    ------
    InputError
        If ``fraction`` is not in ``(0, 1]`` or ``memory_limit`` is not positive.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"fraction={fraction}: use a share of worker memory in (0, 1]")
    limit = worker_memory_limit() if memory_limit is None else memory_limit
    if limit <= 0:
        raise InputError(f"memory_limit={limit}: use a positive number of bytes")
    size = parse_bytes(dask.config.get("array.chunk-size"))
    return max(1, int(min(size, fraction * limit)))


def items_per_task(
    bytes_per_item: float,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    memory_limit: int | None = None,
    fraction: float = DEFAULT_MEMORY_FRACTION,
) -> int:
    """How many items (targets, frames, galaxies, TCEs) one task should hold.

    As many items as fit :func:`task_bytes` (dask's ``array.chunk-size``, capped at
    ``fraction`` of a worker's memory per thread), clipped to ``[minimum, maximum]``.

    Parameters
    ----------
    bytes_per_item : float
        Peak memory one item costs a task: its inputs, intermediates and outputs.
    minimum : int
        Fewest items per task (a task holds at least this many even when they exceed the
        budget).
    maximum : int, optional
        Most items per task, e.g. the number of items there are.
    memory_limit : int, optional
        Bytes one task may use on a worker; default :func:`worker_memory_limit`.
    fraction : float
        Share of ``memory_limit`` one task may plan for.

    Returns
    -------
    int
        Items per task, ``>= 1``.

    Raises
    ------
    InputError
        If ``bytes_per_item`` is not positive, or ``minimum`` is below 1.
    """
    if not bytes_per_item > 0:
        raise InputError(f"items_per_task: bytes_per_item={bytes_per_item} must be positive")
    if minimum < 1:
        raise InputError(f"items_per_task: minimum={minimum} must be at least 1")
    n = max(
        minimum, int(task_bytes(memory_limit=memory_limit, fraction=fraction) // bytes_per_item)
    )
    if maximum is not None:
        n = min(n, max(maximum, 1))
    return n


def plan_spatial_chunks(
    spatial_shape: Sequence[int],
    bytes_per_pixel: float,
    *,
    memory_limit: int | None = None,
    fraction: float = DEFAULT_MEMORY_FRACTION,
) -> tuple[int, ...]:
    """Pick spatial chunk sizes so that one task fits in a worker's memory.

    The time axis is always one chunk; this picks near-square spatial chunks whose pixel count
    times ``bytes_per_pixel`` stays under :func:`task_bytes` (dask's ``array.chunk-size``,
    capped at ``fraction * memory_limit``), with at least one pixel per chunk as long as one
    pixel fits ``fraction * memory_limit``. Chunks are spread evenly so that no chunk is much
    smaller than the others.

    Parameters
    ----------
    spatial_shape : sequence of int
        Shape of the spatial axes, e.g. ``(ny, nx)``.
    bytes_per_pixel : float
        Peak memory one task needs per spatial pixel (all its inputs, intermediates and outputs).
    memory_limit : int, optional
        Bytes one task may use; default :func:`worker_memory_limit`.
    fraction : float
        Share of ``memory_limit`` to plan for (headroom for the worker itself).

    Returns
    -------
    tuple of int
        Chunk size along each spatial axis.

    Raises
    ------
    InputError
        If even a single pixel does not fit, or the arguments are not positive.
    """
    if bytes_per_pixel <= 0 or not 0 < fraction <= 1:
        raise InputError(
            f"plan_spatial_chunks: bytes_per_pixel={bytes_per_pixel} and fraction={fraction} "
            "must satisfy bytes_per_pixel > 0 and 0 < fraction <= 1"
        )
    if any(n <= 0 for n in spatial_shape):
        raise InputError(
            f"plan_spatial_chunks: spatial_shape {tuple(spatial_shape)} has an empty axis; "
            "pass the shape of a non-empty image"
        )
    limit = worker_memory_limit() if memory_limit is None else memory_limit
    if fraction * limit < bytes_per_pixel:
        raise InputError(
            f"plan_spatial_chunks: one pixel needs {bytes_per_pixel / 2**20:.1f} MiB but a task "
            f"may use only {fraction * limit / 2**20:.1f} MiB: shorten the time series or give "
            "workers more memory"
        )
    budget = max(1, int(task_bytes(memory_limit=limit, fraction=fraction) // bytes_per_pixel))
    shape = list(spatial_shape)
    if not shape:
        return ()
    chunks = list(shape)
    # halve the longest axis until the chunk fits, then even the chunks out
    while math.prod(chunks) > budget:
        axis = max(range(len(chunks)), key=lambda i: chunks[i])
        chunks[axis] = math.ceil(chunks[axis] / 2)
    return tuple(math.ceil(n / math.ceil(n / c)) for n, c in zip(shape, chunks, strict=True))


def task_outputs(
    graph: HighLevelGraph,
    name: str,
    item: Hashable,
    lengths: Sequence[int],
    inner: tuple[int, ...],
    dtype: Any,
) -> da.Array:
    """One output of a layer of batch tasks as a dask array, in one graph layer.

    Workflows that process items (galaxies, TCEs) in batches make one task per batch, each
    returning a tuple or dict of arrays; this concatenates entry ``item`` of every batch along
    axis 0 without a layer (or a ``from_delayed``) per batch, so the graph's layers stay the
    same in number whatever the input size.

    Parameters
    ----------
    graph : dask.highlevelgraph.HighLevelGraph
        Graph holding layer ``name`` whose keys are ``(name, 0)``, ``(name, 1)``, ... (one per
        batch, in order).
    name : str
        The batch layer.
    item : hashable
        Index or key of the output in each batch's result.
    lengths : sequence of int
        Items per batch.
    inner : tuple of int
        Shape of one item's entry (``()`` for a scalar per item).
    dtype : dtype
        Output dtype.

    Returns
    -------
    dask.array.Array
        Shape ``(sum(lengths), *inner)``, one chunk per batch.
    """
    if not lengths:
        return da.zeros((0, *inner), dtype=dtype)
    out = f"{name}-{item}"
    zeros = (0,) * len(inner)
    layer = {(out, k, *zeros): (operator.getitem, (name, k), item) for k in range(len(lengths))}
    graph = HighLevelGraph({**graph.layers, out: layer}, {**graph.dependencies, out: {name}})
    chunks = (tuple(lengths), *((m,) for m in inner))
    meta = np.empty((0, *inner), dtype=dtype)
    return da.Array(graph, out, chunks, dtype=dtype, meta=meta)


def client_batches(array: Any) -> list[tuple[int, int]]:
    """Ranges of whole chunks (along axis 0) to bring to the client one at a time, each about
    dask's ``array.chunk-size``.

    Writers that must pass results through the client (one HDF5 file, a table) compute one
    range at a time, so the client holds a bounded amount whatever the input size.

    Parameters
    ----------
    array : dask.array.Array or numpy.ndarray
        Items along axis 0 (an in-memory array is one chunk).

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` item ranges covering every chunk in order; a range holds one chunk,
        or several whose total stays within ``array.chunk-size``.
    """
    chunks = array.chunks[0] if getattr(array, "chunks", None) else (array.shape[0],)
    item_bytes = max(1, array.dtype.itemsize * math.prod(array.shape[1:]))
    limit = max(item_bytes, parse_bytes(dask.config.get("array.chunk-size")))
    ranges: list[tuple[int, int]] = []
    start = stop = 0
    for size in chunks:
        if stop > start and (stop + size - start) * item_bytes > limit:
            ranges.append((start, stop))
            start = stop
        stop += size
    if stop > start:
        ranges.append((start, stop))
    return ranges
