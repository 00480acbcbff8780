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
    """Add ``--cluster`` (default None: dask's threaded scheduler in this process) to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    help_suffix : str, optional
        Appended to the help text.
    """
    parser.add_argument("--cluster", default=None, help=CLUSTER_HELP + help_suffix)


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
    """A context with a client for ``--cluster`` when given, else one that does nothing."""
    address = getattr(args, "cluster", None)
    if not address:
        return nullcontext(None)
    from cloudlab.cluster import connect

    return connect(address, gpu=bool(getattr(args, "gpu", False)))


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
