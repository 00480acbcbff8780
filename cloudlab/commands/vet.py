"""``cloudlab vet``: TCE catalog → cutouts → light curves → AstroNet → ranked planet candidates."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
)
from cloudlab.errors import STATUS, STATUS_OK, InputError

__all__ = ["format_table", "register"]


def _aperture(text: str) -> str | int:
    if text == "threshold":
        return text
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"aperture must be 'threshold' or a box width in pixels, got {text!r}"
        ) from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``vet`` sub-command."""
    p = subparsers.add_parser(
        "vet",
        help="rank a TCE catalog's planet candidates: cutouts, light curves, AstroNet",
        description="Read a TCE catalog (TESS bulk CSV or AstroNet tces.csv), cut every target "
        "out of the sector's cubes, subtract the background, make aperture light curves, "
        "AstroNet views and ensemble predictions as one dask graph, and write TPFs, light-curve "
        "FITS, a ranked table (CSV, Parquet) and one PNG per TCE to --out.",
    )
    p.add_argument("--catalog", required=True, help="TCE bulk CSV or AstroNet tces.csv")
    p.add_argument("--sector", type=int, help="TESS sector (required unless one --cubes file)")
    cubes = p.add_mutually_exclusive_group()
    cubes.add_argument("--cubes", nargs="+", metavar="URL", help="cube URL(s) to cut from")
    cubes.add_argument("--cube-base", help="directory of the cubes (default MAST's S3 bucket)")
    p.add_argument("--weights", help="BackDrop weights of the sector/camera/CCD (FITS or zarr)")
    p.add_argument(
        "--models", nargs="+", metavar="URL", help="AstroNet checkpoints (default: shipped)"
    )
    p.add_argument("--coords", help="TIC coordinate table for catalogs without ra/dec")
    p.add_argument("--size", type=int, default=11, help="cutout size in pixels (default 11)")
    p.add_argument(
        "--aperture",
        type=_aperture,
        default="threshold",
        help="'threshold' (default) or a box width in pixels",
    )
    p.add_argument("--limit", type=int, help="only the first N TCEs of the catalog")
    p.add_argument("--out", required=True, help="output directory (local path or URL)")
    p.add_argument("--top", type=int, default=20, help="rows of the ranked table to print")
    add_overwrite_argument(p)
    add_cluster_argument(p, " (default: threads)")
    p.set_defaults(func=_run)


def format_table(table: pd.DataFrame, *, top: int | None = None, truth: bool = False) -> str:
    """The ranked table as text: rank, TIC, TCE, period, depth, prediction, centroid offset (and
    truth, status).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`cloudlab.pipelines.write_vetting` (with a ``truth`` column when ``truth``).
    top : int, optional
        Show only the first rows.
    truth : bool
        Add the ``truth`` column.

    Returns
    -------
    str
    """
    shown = table if top is None else table.iloc[:top]
    header = f"{'rank':>4}  {'TIC':>11}  {'TCE':<16} {'period d':>9} {'depth ppm':>10} {'pred':>6}"
    header += f" {'offset px':>9}"
    header += f"  {'truth':<8}" if truth else ""
    lines = [header + "  status"]
    for row in shown.itertuples(index=False):
        pred = f"{row.prediction:6.3f}" if pd.notna(row.prediction) else f"{'-':>6}"
        offset = f"{row.centroid_offset:9.2f}" if pd.notna(row.centroid_offset) else f"{'-':>9}"
        line = (
            f"{row.rank:>4}  {row.ticid:>11}  {row.tceid:<16} {row.period:9.4f} "
            f"{row.depth_ppm:10.0f} {pred} {offset}"
        )
        line += f"  {row.truth:<8}" if truth else ""
        line += f"  {getattr(row, STATUS)}"
        lines.append(line)
    if len(shown) < len(table):
        lines.append(f"... and {len(table) - len(shown)} more")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from cloudlab.pipelines import read_catalog, vet_tces, write_vetting

    if args.limit is not None and args.limit <= 0:
        raise InputError(f"vet: --limit {args.limit}; give a positive number of TCEs")
    if args.sector is None and not (args.cubes and len(args.cubes) == 1):
        raise InputError("vet: give --sector (targets are grouped by camera/CCD) or one --cubes")
    out = args.out.rstrip("/")
    check_products([f"{out}/vetting.csv", f"{out}/vetting.parquet"], args)
    t0 = time.perf_counter()
    catalog = read_catalog(args.catalog, coords=args.coords)
    if args.limit is not None:
        catalog = catalog.iloc[: args.limit]
    print(f"catalog: {len(catalog)} TCEs on {catalog['ticid'].nunique()} targets")
    ds = vet_tces(
        catalog,
        sector=args.sector,
        cubes=args.cubes or args.cube_base,
        weights=args.weights,
        models=args.models,
        size=args.size,
        aperture=args.aperture,
    )
    with cluster_context(args) as client:
        if client is not None:
            print(f"cluster: {client.dashboard_link}")
        table = write_vetting(ds, out, overwrite=args.overwrite, progress=True)
    elapsed = time.perf_counter() - t0
    print(format_table(table, top=args.top))
    n_ok = int((table[STATUS] == STATUS_OK).sum())
    print(f"\n{n_ok} of {len(table)} TCEs vetted in {elapsed:.1f} s; products in {out}")
    failed = table[table[STATUS] != STATUS_OK]
    for row in failed.iloc[:10].itertuples(index=False):
        print(f"  TCE {row.tceid}: {row.reason} ({getattr(row, STATUS)})")
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (see vetting.csv)")
    return 0 if n_ok else 1
