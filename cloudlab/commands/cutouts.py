"""``cloudlab cutouts``: TCE catalog → targets → batched cube cutouts → one TPF per target."""

from __future__ import annotations

import argparse
import re
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


def _size(text: str):
    """``--size``: N, ROWSxCOLS (pixels) or an angle such as 2arcmin (checked here)."""
    from cloudlab.cutouts.cutout import parse_size

    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; give N or ROWSxCOLS pixels, or an angle such as 2arcmin or 90arcsec"
        ) from None
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"give a positive number, got {text!r}")
    return value


def _ticid(text: str) -> int:
    """``--target``: a TIC id, ``123`` or ``"TIC 123"``."""
    match = re.fullmatch(r"\s*(?:tic)?[\s_-]*(\d+)\s*", text, flags=re.IGNORECASE)
    if match is None or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"give a TIC id such as 'TIC 123' or 123, got {text!r}")
    return int(match.group(1))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cutouts`` sub-command."""
    p = subparsers.add_parser(
        "cutouts",
        help="cut TCE targets out of TESS cubes and write lightkurve-ready TPFs",
        description="Read a TCE catalog (or any CSV with ticid[, ra, dec]) or take one target, "
        "find each target's camera/CCD offline, cut all targets from each sector's cubes as one "
        "dask graph and write one target pixel file per target and sector to --out.",
    )
    what = p.add_argument_group("targets (one of --catalog, --target, --ra/--dec)")
    what.add_argument("--catalog", help="TCE bulk CSV or CSV with ticid[,ra,dec]")
    what.add_argument(
        "--target",
        type=_ticid,
        metavar="TIC",
        help="one target: 'TIC 123' (position from --ra/--dec, --coords or --resolve)",
    )
    what.add_argument("--ra", type=float, help="one target's right ascension (deg)")
    what.add_argument("--dec", type=float, help="one target's declination (deg)")
    p.add_argument(
        "--sector",
        type=int,
        nargs="+",
        help="TESS sector(s): one set of TPFs per sector (required unless --cube or --ffis)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--size",
        type=_size,
        default=None,
        help="N or ROWSxCOLS pixels, or an angle such as 2arcmin (21 arcsec pixels; default 10)",
    )
    size.add_argument(
        "--size-arcsec", type=_positive, metavar="ARCSEC", help="cutout side as an angle"
    )
    p.add_argument(
        "--pad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NaN-pad cutouts that reach off the image, as astrocut and TESScut do (default); "
        "--no-pad reports those targets as failed (off_edge)",
    )
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
    p.add_argument(
        "--cube",
        nargs="+",
        help="cut every target from this cube (several: one set of TPFs per cube; with "
        "--sector, one sector per cube)",
    )
    p.add_argument(
        "--ffis",
        metavar="GLOB",
        help="cut straight from these calibrated FFIs of one sector, camera and CCD (a glob or "
        "URL), no cube needed; their headers are kept in OUT/ffi-headers.parquet for the next run",
    )
    p.add_argument("--limit", type=int, help="only the first N targets")
    p.add_argument("--out", required=True, help="output directory (local path or URL)")
    add_overwrite_argument(p)
    add_cluster_argument(p, " (default: threads)")
    p.set_defaults(func=_run)


_CATALOG_ONLY = ("min_depth", "max_depth", "min_snr", "min_period", "max_period", "limit")


def _check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or incomplete options, naming them, before any work."""
    single = args.target is not None or args.ra is not None or args.dec is not None
    if args.catalog is None and not single:
        raise InputError("cutouts: give --catalog, --target TIC or --ra/--dec")
    if args.catalog is not None and single:
        given = "--target" if args.target is not None else "--ra/--dec"
        raise InputError(f"cutouts: --catalog and {given} exclude each other; give one")
    if (args.ra is None) != (args.dec is None):
        missing, given = ("--dec", "--ra") if args.dec is None else ("--ra", "--dec")
        raise InputError(f"cutouts: {given} needs {missing}")
    if single:
        extra = [f"--{n.replace('_', '-')}" for n in _CATALOG_ONLY if getattr(args, n) is not None]
        extra += ["--all-tces"] if args.all_tces else []
        if extra:
            raise InputError(f"cutouts: {', '.join(extra)} apply to --catalog, not one target")
    if args.ra is not None and not (0 <= args.ra <= 360 and -90 <= args.dec <= 90):
        raise InputError(
            f"cutouts: --ra {args.ra} --dec {args.dec} is not a sky position "
            "(0 <= ra <= 360, -90 <= dec <= 90, degrees)"
        )
    if args.ffis is not None and (args.cube is not None or args.cube_base is not None):
        other = "--cube" if args.cube is not None else "--cube-base"
        raise InputError(f"cutouts: --ffis and {other} exclude each other; give one")
    if args.ffis is not None and args.sector is not None and len(args.sector) > 1:
        raise InputError("cutouts: --ffis holds one sector; give at most one --sector")
    if args.sector is None and args.cube is None and args.ffis is None:
        raise InputError("cutouts: give --sector (targets grouped by cube), --cube or --ffis")
    if args.sector is not None and args.cube is not None and len(args.sector) != len(args.cube):
        raise InputError(
            f"cutouts: {len(args.sector)} --sector value(s) for {len(args.cube)} --cube "
            "file(s); give one sector per cube, or leave --sector out"
        )
    for option, values in (("--sector", args.sector), ("--cube", args.cube)):
        if values is not None and len(set(values)) != len(values):
            raise InputError(f"cutouts: {option} names the same value twice: {values}")
    if args.limit is not None and args.limit <= 0:
        raise InputError(f"cutouts: --limit {args.limit}; give a positive number of targets")


def _check_cube_sectors(args: argparse.Namespace) -> None:
    """Refuse a ``--sector`` that contradicts its ``--cube``'s SECTOR card, before any work
    (the headers are read once and cached for the cutting that follows)."""
    if args.sector is None or args.cube is None:
        return
    from cloudlab.io.tess import cube_meta

    for sector, url in zip(args.sector, args.cube, strict=True):
        known = cube_meta(url).sector
        if isinstance(known, int) and known > 0 and known != sector:
            raise InputError(
                f"cutouts: --sector {sector} contradicts --cube {url} (SECTOR = {known} in its "
                f"primary header); give --sector {known} or leave --sector out"
            )


def _cut_size(args: argparse.Namespace):
    if args.size_arcsec is not None:
        return f"{args.size_arcsec}arcsec"
    return args.size if args.size is not None else 10


def _runs(args: argparse.Namespace) -> list[dict]:
    """The make_cutouts calls: one per sector (grouped by cube), per cube, or the FFIs."""
    if args.ffis is not None:
        return [{"sector": (args.sector or [None])[0], "cube_url": None, "ffis": args.ffis}]
    if args.cube is None:
        return [{"sector": s, "cube_url": None} for s in args.sector]
    sectors = args.sector or [None] * len(args.cube)
    return [{"sector": s, "cube_url": c} for s, c in zip(sectors, args.cube, strict=True)]


def _single_target(args: argparse.Namespace):
    import pandas as pd

    from cloudlab.io.catalogs import position_name

    if args.target is not None:
        row = {"ticid": args.target}
    else:
        row = {"ticid": position_name(args.ra, args.dec)}
    if args.ra is not None:
        row.update(ra=args.ra, dec=args.dec)
    return pd.DataFrame([row])


def _targets(args: argparse.Namespace):
    from cloudlab.io.catalogs import (
        add_coordinates,
        filter_tces,
        one_per_tic,
        read_tce,
        resolve_tic_mast,
    )

    if args.catalog is None:
        targets = _single_target(args)
        n_rows = 1
    else:
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


def _label(run: dict) -> str:
    if run.get("ffis") is not None:
        return f"FFIs {run['ffis']}"
    return f"cube {run['cube_url']}" if run["cube_url"] is not None else f"sector {run['sector']}"


def _cut(args: argparse.Namespace, targets) -> list[tuple]:
    """(run, dataset or error text) per sector/cube, lazy: only headers are read."""
    from cloudlab.cutouts import make_cutouts

    out = []
    for run in _runs(args):
        try:
            ds = make_cutouts(
                targets,
                sector=run["sector"],
                size=_cut_size(args),
                cube_url=run["cube_url"],
                cube_base=args.cube_base,
                on_error="skip",
                pad=args.pad,
                ffis=run.get("ffis"),
                ffi_index=None if run.get("ffis") is None else f"{args.out}/ffi-headers.parquet",
            )
        except ValueError as err:
            if len(_runs(args)) == 1 or not isinstance(err, InputError):
                raise
            out.append((run, str(err)))  # nothing of this sector/cube could be cut
            continue
        out.append((run, ds))
    return out


def _cut_and_write(args: argparse.Namespace, targets) -> tuple | None:
    """Cut every target and write the TPFs; ``None`` when nothing could be cut at all."""
    import pandas as pd

    from cloudlab.cutouts import write_tpfs
    from cloudlab.cutouts.cutout import target_status
    from cloudlab.cutouts.tpf import TPFWriteError, tpf_urls

    try:
        cuts = _cut(args, targets)
    except InputError as err:
        # nothing could be cut at all: list the targets and stop
        print(f"cloudlab cutouts: {err}", file=sys.stderr)
        return None
    done = [(run, ds) for run, ds in cuts if not isinstance(ds, str)]
    for run, why in ((r, d) for r, d in cuts if isinstance(d, str)):
        print(f"{_label(run)}: {why}", file=sys.stderr)
    if not done:
        return None
    every = [url for _, ds in done for url in tpf_urls(ds, args.out)]
    if len(set(every)) != len(every):
        dupes = sorted({u for u in every if every.count(u) > 1})
        raise InputError(
            f"cutouts: several cubes give the same TPF name ({dupes[0]}): their sector is not "
            "in the cube headers; give one --sector per --cube"
        )
    check_products(every, args)
    tables = []
    for run, ds in done:
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
        tables.append(status.assign(run=_label(run)))
    return [ds for _, ds in done], pd.concat(tables, ignore_index=True)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    _check_cube_sectors(args)
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
    datasets, status = outcome
    elapsed = time.perf_counter() - t0
    n_written = int((status[STATUS] == STATUS_OK).sum())
    shapes = ", ".join(
        sorted({f"{d.sizes['time']} frames of {d.sizes['row']}x{d.sizes['column']} px"
                for d in datasets})
    )  # fmt: skip
    print(f"\n{n_written} TPF(s) in {args.out} ({shapes}) in {elapsed:.1f} s")
    problems = status[status[STATUS] != STATUS_OK]
    if len(problems):
        print(f"{len(problems)} target(s) failed:")
        several = len(datasets) > 1
        for ticid, code, why, run in problems[["ticid", STATUS, REASON, "run"]].itertuples(
            index=False
        ):
            where = f" [{run}]" if several else ""
            print(f"  TIC {ticid}: {why} ({code}){where}")
    return 0 if n_written else 1
