"""``cloudlab timelag``: AIA time-lag and cross-correlation maps from stacks of FITS files.

``cloudlab timelag --channel 335=GLOB --channel 171=GLOB ... --out DIR`` prepares the channels
(exposure, crop, time range, common grid), computes every pair's maps in one graph and writes
zarr, FITS and PNG. ``cloudlab timelag simulate DEST`` writes a simulated multi-channel series.
"""

from __future__ import annotations

import argparse
import re
import time

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
    run_graph,
)
from cloudlab.errors import InputError

__all__ = [
    "register",
]

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^([+-]?\d*\.?\d+(?:e[+-]?\d+)?)\s*([a-z]*)$")


def duration(text: str) -> float:
    """Parse ``-3h``, ``90min``, ``600s`` or ``600`` into seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. -3h, 90min, 600s)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _point(text: str) -> tuple[float, float]:
    try:
        tx, ty = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected Tx,Ty in arcsec, got {text!r}") from err
    return tx, ty


def _channel(text: str) -> tuple[str, str]:
    name, sep, urls = text.partition("=")
    if not sep or not name.strip() or not urls.strip():
        raise argparse.ArgumentTypeError(f"expected CHANNEL=URLS (e.g. 171='aia/171/*.fits'), "
                                         f"got {text!r}")  # fmt: skip
    return name.strip(), urls.strip()


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("-")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected a pair like 335-171, got {text!r}")
    return a, b


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``timelag`` command (and its ``simulate`` action)."""
    parser = subparsers.add_parser(
        "timelag",
        help="AIA time-lag maps between channels (FFT cross-correlation, sunkit-image maths)",
        description="Compute time-lag and maximum cross-correlation maps for every pair of "
        "channels and write them as zarr, FITS and PNG. Durations accept s, min, h, d.",
    )
    # values such as "-3h" (lag bounds) or "-400,50" (corners) must read as values, not options
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.add_argument(
        "--channel", action="append", type=_channel, default=[], metavar="CHANNEL=URLS",
        help="a channel and its files (glob or URL; repeat to add files); repeat per channel",
    )  # fmt: skip
    parser.add_argument("--out", help="output directory (any fsspec URL)")
    parser.add_argument("--bottom-left", type=_point, metavar="Tx,Ty", help="crop corner (arcsec)")
    parser.add_argument("--top-right", type=_point, metavar="Tx,Ty", help="crop corner (arcsec)")
    parser.add_argument(
        "--lag-bounds", nargs=2, type=duration, metavar=("LOWER", "UPPER"),
        help="inclusive lag range, e.g. -3h 3h (default: all lags)",
    )  # fmt: skip
    parser.add_argument("--pairs", nargs="+", type=_pair, help="pairs such as 335-171")
    parser.add_argument("--start", help="first time to use (ISO)")
    parser.add_argument("--end", help="last time to use (ISO)")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    parser.add_argument("--cadence", type=duration, help="common grid step (default: nominal)")
    parser.add_argument("--keep-bad", action="store_true", help="keep frames with QUALITY != 0")
    parser.add_argument(
        "--max-gap", type=float, default=3.0, metavar="N",
        help="longest run of missing frames, in cadences, bridged by interpolation (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-gaps", action="store_true",
        help="interpolate across longer gaps too (with a warning) instead of refusing",
    )  # fmt: skip
    parser.add_argument(
        "--min-correlation", type=float, help="NaN lag where the max correlation is below this"
    )
    parser.add_argument("--vmax", type=duration, help="colour range of the PNG lag maps")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG plots")
    _add_prep_arguments(parser)
    add_cluster_argument(parser)
    add_overwrite_argument(parser)
    parser.set_defaults(func=_run)
    actions = parser.add_subparsers(dest="timelag_action", metavar="ACTION")
    simulate = actions.add_parser("simulate", help="write a simulated AIA multi-channel series")
    add_simulate_arguments(simulate)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the simulated AIA series (``cloudlab timelag simulate``, ``simulate aia``)."""
    parser.add_argument("dest", help="destination directory (any fsspec URL)")
    parser.add_argument("--channels", default="94,131,171,193,211,335", help="wavelengths")
    parser.add_argument("--shape", default="64x64", help="NYxNX (default 64x64)")
    parser.add_argument("--frames", type=int, default=150, help="frames per channel")
    parser.add_argument("--cadence", type=float, default=12.0, help="seconds (default 12)")
    parser.add_argument("--uncompressed", action="store_true", help="image in HDU 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level1", action="store_true", help="level-1 frames (see --prep)")
    parser.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from cloudlab.simulate import aia_series

    ny, nx = (int(v) for v in args.shape.lower().split("x"))
    channels = [int(c) for c in args.channels.split(",")]
    t0 = time.perf_counter()
    series = aia_series(
        args.dest, channels=channels, shape=(ny, nx), n_frames=args.frames,
        cadence_s=args.cadence, compressed=not args.uncompressed, seed=args.seed,
        level1=getattr(args, "level1", False),
    )  # fmt: skip
    n_files = sum(len(f) for f in series.files.values())
    print(f"{n_files} files ({len(channels)} channels x {args.frames} frames, {ny}x{nx}) "
          f"in {args.dest} in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


#: the variables written as one FITS file per pair each
_FITS_VARIABLES = ("timelag", "max_correlation")


def _destinations(maps, out: str, *, png: bool) -> list[str]:
    """Every product of the maps command: the zarr store, FITS files (and a PNG) per pair."""
    from cloudlab.timelag.output import pair_urls

    pairs = maps["pair"].values
    urls = [f"{out}/timelag_maps.zarr"]
    for variable in _FITS_VARIABLES:
        urls += pair_urls(pairs, f"{out}/fits", prefix=variable, suffix=".fits")
    return urls + (pair_urls(pairs, f"{out}/png", suffix=".png") if png else [])


def _stale(products: list[str], out: str, *, png: bool) -> tuple[list[str], list[str]]:
    """Pair files of an earlier run in ``out`` that this run would not replace.

    Returns all of them, and those no writer of this run removes (the PNGs with ``--no-png``).
    """
    from cloudlab.timelag.output import stale_pair_files

    stale = []
    for variable in _FITS_VARIABLES:
        stale += stale_pair_files(f"{out}/fits", products, prefix=variable, suffix=".fits")
    plots = stale_pair_files(f"{out}/png", products if png else [], suffix=".png")
    return stale + plots, ([] if png else plots)


def _run(args: argparse.Namespace) -> int:
    from cloudlab.io import aia
    from cloudlab.timelag import plot_maps, prepare_channels, timelag_maps, write_fits, write_zarr
    from cloudlab.timelag.output import refuse_stale, remove_files

    if not args.channel:
        raise InputError("give at least two --channel CHANNEL=URLS")
    if not args.out:
        raise InputError("give --out DIR")
    if (args.bottom_left is None) != (args.top_right is None):
        raise InputError("give both --bottom-left and --top-right, or neither")
    if not args.prep and (args.degradation_table or args.pointing_table):
        raise InputError(
            "--degradation-table and --pointing-table apply to level-1 files: add --prep"
        )
    files: dict[str, list[str]] = {}
    for name, urls in args.channel:
        files.setdefault(name, []).append(urls)
    if len(files) < 2:
        raise InputError(f"need at least two channels, got {sorted(files)}")
    out = args.out.rstrip("/")
    t0 = time.perf_counter()
    with cluster_context(args) as client:
        if client is not None:
            print(f"cluster: {client.dashboard_link}")
        keys = {name: int(name) if name.isdigit() else name for name in files}
        channels = {}
        for name, urls in files.items():
            channels[keys[name]] = aia.open_stack(urls if len(urls) > 1 else urls[0])
            print(f"channel {name}: {channels[keys[name]].sizes['time']} frames")
        if args.prep:
            prepared = _prepare_level1(channels, args)
        else:
            prepared = prepare_channels(
                channels, bottom_left=args.bottom_left, top_right=args.top_right,
                start=args.start, end=args.end, every=args.every, cadence=args.cadence,
                drop_bad=not args.keep_bad, max_gap=args.max_gap, allow_gaps=args.allow_gaps,
            )  # fmt: skip
        pairs = None
        if args.pairs:
            pairs = [(keys.get(a, a), keys.get(b, b)) for a, b in args.pairs]
        maps = timelag_maps(
            prepared, pairs=pairs, lag_bounds=args.lag_bounds, min_correlation=args.min_correlation
        )
        grid = next(iter(prepared.values()))
        products = _destinations(maps, out, png=not args.no_png)
        check_products(products, args)
        stale, leftover = _stale(products, out, png=not args.no_png)
        refuse_stale(stale, args.overwrite)
        print(f"{maps.sizes['pair']} pair(s) on {grid.sizes['time']} common times, "
              f"{grid.sizes['y']}x{grid.sizes['x']} px")  # fmt: skip
        results = run_graph(maps)
    written = [write_zarr(results, f"{out}/timelag_maps.zarr", overwrite=args.overwrite)]
    for variable in _FITS_VARIABLES:
        written += write_fits(
            results, f"{out}/fits", variable=variable, overwrite=args.overwrite, progress=False
        )
    if not args.no_png:
        written += plot_maps(
            results, f"{out}/png", vmax_s=args.vmax, overwrite=args.overwrite, progress=False
        )
    remove_files(leftover)
    print(f"{len(written)} outputs in {out} in {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------ --prep: level-1 registration
def _add_prep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prep`` and its options: register level-1 files (cloudlab.timelag.prepare)."""
    group = parser.add_argument_group("level-1 registration (--prep)")
    group.add_argument(
        "--prep", action="store_true", help="register level-1 files onto one grid (roll, scale)"
    )
    group.add_argument("--derotate", action="store_true", help="with --prep: follow solar rotation")
    group.add_argument("--scale", type=float, default=0.6, help="grid arcsec/px (default 0.6)")
    group.add_argument("--reference-time", help="grid time (ISO; default: mid-series)")
    group.add_argument(
        "--degradation-table", metavar="PATH",
        help="with --prep: local aia.response table (aiapy's format) to correct degradation",
    )  # fmt: skip
    group.add_argument(
        "--pointing-table", metavar="PATH",
        help="with --prep: local master pointing table (aiapy's format) for full frames",
    )  # fmt: skip


def _prepare_level1(channels: dict, args: argparse.Namespace) -> dict:
    """The ``--prep`` path: time selection, then registration and the common time grid."""
    from cloudlab.timelag import prepare, select_time

    region = None
    if args.bottom_left is not None:
        region = (args.bottom_left, args.top_right)
    channels = {k: select_time(c, args.start, args.end, args.every) for k, c in channels.items()}
    return prepare(
        channels, region=region, reference_time=args.reference_time, scale=args.scale,
        derotate=args.derotate, drop_bad=not args.keep_bad, cadence=args.cadence,
        correct_degradation=args.degradation_table, pointing_table=args.pointing_table,
    )  # fmt: skip
