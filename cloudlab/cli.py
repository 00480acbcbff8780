"""The ``cloudlab`` command line: ``info``, ``demo`` and one group of sub-commands per workflow."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cloudlab.errors import CloudlabError

COMMAND_MODULES = (
    "cloudlab.commands.demo",
    "cloudlab.commands.simulate",
    "cloudlab.commands.cutouts",
    "cloudlab.commands.timelag",
    "cloudlab.commands.backdrop",
    "cloudlab.commands.dre",
    "cloudlab.commands.astronet",
    "cloudlab.commands.vet",
    "cloudlab.commands.references",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cloudlab",
        description="Archive-scale astronomy on dask clusters: lazy FITS, cutouts, timelags, "
        "backgrounds, galaxy fits and AstroNet.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = subparsers.add_parser("info", help="versions, the cluster connect() would pick, GPU")
    info.set_defaults(func=_info)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _info(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    from cloudlab.backend import gpu_available
    from cloudlab.cluster import describe_target

    packages = (
        "cloudlab", "numpy", "dask", "distributed", "dask-gateway", "xarray", "astropy",
        "fsspec", "s3fs", "gcsfs", "zarr", "sunpy", "sunkit-image", "tensorflow-cpu", "cupy",
    )  # fmt: skip
    print(f"python        {sys.version.split()[0]}")
    for name in packages:
        try:
            print(f"{name:<13} {version(name)}")
        except PackageNotFoundError:
            print(f"{name:<13} not installed")
    print(f"connect()     -> {describe_target()}")
    print(f"GPU           {'available' if gpu_available() else 'not available'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cloudlab`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BaseException as err:
        if args.debug or isinstance(err, SystemExit | GeneratorExit):
            raise
        if _interrupted(err):  # also when cleaning up after the interrupt failed in turn
            print(f"cloudlab {args.command}: interrupted", file=sys.stderr)
            return 130
        if not isinstance(err, Exception):
            raise
        print(f"cloudlab {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a KeyboardInterrupt or was raised while handling one."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _message(err: Exception) -> str:
    """One line for a failed command: the error's own words (and its type when unexpected)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split())
    if isinstance(err, CloudlabError | OSError | ValueError) and text:
        return text
    return f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
