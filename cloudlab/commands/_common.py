"""Pieces shared by the ``cloudlab`` sub-commands: common options and progress display."""

from __future__ import annotations

import argparse
import sys

CLUSTER_HELP = "'local', a gateway URL or a scheduler address"


def add_cluster_argument(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    """Add ``--cluster`` (default None: no cluster) to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    help_suffix : str, optional
        Appended to the help text, e.g. ``" (default: threads)"``.
    """
    parser.add_argument("--cluster", default=None, help=CLUSTER_HELP + help_suffix)


def cluster_progress(*futures) -> None:
    """Show a ``distributed`` progress bar until ``futures`` finish, then end its line on stderr.

    Parameters
    ----------
    *futures
        Futures or persisted dask collections.
    """
    from distributed import progress

    progress(*futures)
    print(file=sys.stderr)
