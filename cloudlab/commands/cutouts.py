"""``cloudlab cutouts``: TCE catalog → targets → batched cube cutouts → one TPF per target."""

from __future__ import annotations

import argparse
import sys
import time

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
)
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError

__all__ = ["register"]


def _size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be N or ROWSxCOLS, got {text!r}") from exc
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"size must be N or ROWSxCOLS, got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cutouts`` sub-command."""
    p = subparsers.add_parser(
        "cutouts",
        help="cut TCE targets out of TESS cubes and write lightkurve-ready TPFs",
        description="Read a TCE catalog (or any CSV with ticid[, ra, dec]), filter it, find "
        "each target's camera/CCD offline, cut all targets from the sector's cubes as one dask "
        "graph and write one target pixel file per target to --out.",
    )
    p.add_argument("--catalog", required=True, help="TCE bulk CSV or CSV with ticid[,ra,dec]")
    p.add_argument("--sector", type=int, help="TESS sector (required unless --cube)")
    p.add_argument("--size", type=_size, default=10, help="N or ROWSxCOLS pixels (default 10)")
    p.add_argument("--min-depth", type=float, help="keep tce_depth > this (ppm)")
    p.add_argument("--max-depth", type=float, help="keep tce_depth <= this (ppm)")
    p.add_argument("--min-snr", type=float, help="keep tce_model_snr > this")
    p.add_argument("--min-period", type=float, help="keep tce_period > this (days)")
    p.add_argument("--max-period", type=float, help="keep tce_period <= this (days)")
    p.add_argument("--all-tces", action="store_true", help="keep every TCE, not one per TIC")
    p.add_argument("--coords", help="TIC coordinate table (CSV, FITS or Parquet)")
    p.add_argument(
        "--resolve", action="store_true", help="resolve missing coordinates at MAST (online)"
    )
    p.add_argument("--cube-base", help="directory of the cubes (default MAST's S3 bucket)")
    p.add_argument("--cube", help="cut every target from this one cube")
    p.add_argument("--limit", type=int, help="only the first N targets")
    p.add_argument("--out", required=True, help="output directory (local path or URL)")
    add_overwrite_argument(p)
    add_cluster_argument(p, " (default: threads)")
    p.set_defaults(func=_run)


def _targets(args: argparse.Namespace):
    from cloudlab.io.catalogs import (
        add_coordinates,
        filter_tces,
        one_per_tic,
        read_tce,
        resolve_tic_mast,
    )

    catalog = read_tce(args.catalog)
    n_rows = len(catalog)
    ranges = {
        "depth": (args.min_depth, args.max_depth),
        "snr": (args.min_snr, None),
        "period": (args.min_period, args.max_period),
    }
    ranges = {k: v for k, v in ranges.items() if v != (None, None)}
    targets = filter_tces(catalog, **ranges) if ranges else catalog
    if not args.all_tces:
        targets = one_per_tic(targets)
    if args.limit is not None:
        targets = targets.iloc[: args.limit]
    targets = add_coordinates(
        targets, coords=args.coords, resolver=resolve_tic_mast if args.resolve else None
    )
    return n_rows, targets


def _tpf_urls(ds, out: str) -> list[str]:
    """The TPF URL of every target that will be cut (known before any pixel is read)."""
    from cloudlab.cutouts.tpf import tpf_name

    size = (ds.sizes["row"], ds.sizes["column"])
    return [
        f"{out.rstrip('/')}/{tpf_name(t, s, c, d, size)}"
        for t, s, c, d in zip(
            *(ds[name].values for name in ("ticid", "sector", "camera", "ccd")), strict=True
        )
    ]


def _cut_and_write(args: argparse.Namespace, targets) -> tuple | None:
    """Cut every target and write the TPFs; ``None`` when nothing could be cut at all."""
    from cloudlab.cutouts import make_cutouts, write_tpfs
    from cloudlab.cutouts.cutout import target_status
    from cloudlab.cutouts.tpf import TPFWriteError

    try:
        ds = make_cutouts(
            targets,
            sector=args.sector,
            size=args.size,
            cube_url=args.cube,
            cube_base=args.cube_base,
            on_error="skip",
        )
    except ValueError as err:
        # nothing could be cut at all: list the targets and stop
        print(f"cloudlab cutouts: {err}", file=sys.stderr)
        return None
    check_products(_tpf_urls(ds, args.out), args)
    status = target_status(ds)
    try:
        urls = write_tpfs(
            ds, args.out, overwrite=args.overwrite, skip_existing=False, progress=True
        )
    except TPFWriteError as err:
        urls = err.urls
        by_url = dict(zip(urls, range(len(urls)), strict=True))
        for url, why in err.failed.items():
            status.loc[by_url[url], [STATUS, REASON]] = ("write_error", f"{url}: {why}")
    return ds, status


def _run(args: argparse.Namespace) -> int:
    if args.sector is None and args.cube is None:
        raise InputError("cutouts: give --sector (targets grouped by cube) or --cube")
    if args.limit is not None and args.limit <= 0:
        raise InputError(f"cutouts: --limit {args.limit}; give a positive number of targets")
    t0 = time.perf_counter()
    n_rows, targets = _targets(args)
    print(f"catalog: {n_rows} rows -> {len(targets)} targets")
    if targets.empty:
        print("nothing to cut")
        return 0
    with cluster_context(args) as client:
        if client is not None:
            print(f"cluster: {client.dashboard_link}")
        outcome = _cut_and_write(args, targets)
    if outcome is None:
        return 1
    ds, status = outcome
    elapsed = time.perf_counter() - t0
    n_written = int((status[STATUS] == STATUS_OK).sum())
    print(f"\n{n_written} TPF(s) in {args.out} ({ds.sizes['time']} frames, "
          f"{ds.sizes['row']}x{ds.sizes['column']} px) in {elapsed:.1f} s")  # fmt: skip
    problems = status[status[STATUS] != STATUS_OK]
    if len(problems):
        print(f"{len(problems)} target(s) failed:")
        for ticid, code, why in problems[["ticid", STATUS, REASON]].itertuples(index=False):
            print(f"  TIC {ticid}: {why} ({code})")
    return 0 if n_written else 1
