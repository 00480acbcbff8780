"""Pieces shared by the ``cloudlab`` sub-commands: common options, the compute helper."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from cloudlab.errors import OverwriteError

__all__ = [
    "CLUSTER_HELP",
    "add_cluster_argument",
    "add_overwrite_argument",
    "check_products",
    "cluster_context",
    "run_graph",
]

CLUSTER_HELP = "'local', a gateway URL or a scheduler address"


def add_cluster_argument(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    """Add ``--cluster`` and the cluster-size options to ``parser``.

    ``--cluster`` defaults to None: dask's threaded scheduler in this process. ``--workers``,
    ``--worker-memory``, ``--worker-cores`` and ``--adapt MIN MAX`` size the cluster; given
    without ``--cluster`` they start the configured dask-gateway (else a local cluster).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    help_suffix : str, optional
        Appended to the help text of ``--cluster``.
    """
    group = parser.add_argument_group("cluster")
    group.add_argument("--cluster", default=None, help=CLUSTER_HELP + help_suffix)
    size = group.add_mutually_exclusive_group()
    size.add_argument(
        "--workers",
        type=int,
        default=None,
        help="number of workers (default: 2 on a gateway, one per core locally)",
    )
    size.add_argument(
        "--adapt",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="let the cluster scale itself between MIN and MAX workers",
    )
    group.add_argument(
        "--worker-memory", type=float, default=None, metavar="GIB", help="memory per worker, GiB"
    )
    group.add_argument(
        "--worker-cores", type=int, default=None, metavar="N", help="cores (threads) per worker"
    )


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (replace existing products; refused before any work without it)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing products (without it the command refuses before any work)",
    )


def check_products(
    urls: Sequence[str], args: argparse.Namespace, *, storage_options: dict | None = None
) -> None:
    """Refuse, before any work, to replace existing products unless ``--overwrite`` was given.

    Parameters
    ----------
    urls : sequence of str
        Every destination the command is about to write.
    args : argparse.Namespace
        The parsed arguments (``args.overwrite``).
    storage_options : dict, optional
        Filesystem keyword arguments.

    Raises
    ------
    OverwriteError
        Some destinations exist and ``--overwrite`` was not given; the message names the first.
    """
    from cloudlab.storage import existing

    if getattr(args, "overwrite", False):
        return
    found = existing(list(urls), storage_options=storage_options)
    if len(found) == 1:
        raise OverwriteError(f"{found[0]} exists; pass --overwrite to replace it")
    if found:
        raise OverwriteError(
            f"{found[0]} and {len(found) - 1} more exist; pass --overwrite to replace them"
        )


def cluster_context(args: argparse.Namespace):
    """A context with a client for ``--cluster`` (and the size options), else one doing nothing.

    The options of :func:`add_cluster_argument` go to :func:`cloudlab.cluster.connect`:
    ``--workers`` as ``n_workers``, ``--worker-memory``/``--worker-cores`` as ``worker_memory``/
    ``worker_cores``, ``--adapt MIN MAX`` as ``adapt=(MIN, MAX)``. Any of them without
    ``--cluster`` connects to the default place (the configured dask-gateway, else a local
    cluster).
    """
    address = getattr(args, "cluster", None)
    sizes = {
        "n_workers": getattr(args, "workers", None),
        "worker_memory": getattr(args, "worker_memory", None),
        "worker_cores": getattr(args, "worker_cores", None),
        "adapt": tuple(args.adapt) if getattr(args, "adapt", None) else None,
    }
    sizes = {key: value for key, value in sizes.items() if value is not None}
    if not address and not sizes:
        return nullcontext(None)
    from cloudlab.cluster import connect

    return connect(address or None, gpu=bool(getattr(args, "gpu", False)), **sizes)


def run_graph(*collections: Any, persist: bool = False) -> Any:
    """Compute dask collections for a command, with a progress bar on stderr.

    Runs on the active client (inside :func:`cluster_context`) or dask's threaded scheduler; see
    :func:`cloudlab.cluster.compute`.

    Parameters
    ----------
    *collections
        What to compute.
    persist : bool
        Persist instead of compute (results stay chunked in memory).

    Returns
    -------
    object or tuple
        The result when one collection was given, else a tuple of results.
    """
    from cloudlab.cluster import compute

    results = compute(*collections, persist=persist)
    return results[0] if len(collections) == 1 else results
