"""``cloudlab demo``: simulate a small TESS sector, open it lazily on a local cluster, summarise."""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

__all__ = ["register", "run_demo"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo", help="simulate a small TESS sector, open it lazily and summarise it"
    )
    parser.add_argument(
        "--dest", help="where to write the sector (any fsspec URL; default: temp dir)"
    )
    parser.add_argument("--frames", type=int, default=24, help="number of FFIs (default 24)")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.dest:
        return run_demo(args.dest, n_frames=args.frames, n_workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="cloudlab-demo-") as tmp:
        return run_demo(tmp, n_frames=args.frames, n_workers=args.workers)


def run_demo(dest: str, *, n_frames: int = 24, n_workers: int = 2) -> int:
    """Simulate a sector into ``dest``, open it lazily on an embedded cluster and print a summary.

    Parameters
    ----------
    dest : str
        Destination directory (any fsspec URL the workers can reach).
    n_frames : int
        Number of simulated FFIs.
    n_workers : int
        Workers of the embedded ``LocalCluster``.

    Returns
    -------
    int
        0 on success.
    """
    from cloudlab.cluster import compute, connect
    from cloudlab.fits import open_hdu, open_stack
    from cloudlab.simulate import tess_sector

    print(f"simulating TESS sector 55, camera 1, CCD 1 ({n_frames} frames) into {dest}")
    sector = tess_sector(dest, n_frames=n_frames, progress=True)
    with connect("local", n_workers=n_workers) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        ffis = open_stack(sector.ffi_urls, hdu=1, dim="time", keys=("TSTART", "DQUALITY"))
        cube = open_hdu(sector.cube_url, hdu=1, dims=("row", "column", "time", "kind"))
        print(
            f"opened lazily (headers only): FFI stack {dict(ffis.sizes)}, cube {dict(cube.sizes)}"
        )
        star = sector.stars.sort_values("flux", ascending=False).iloc[0]
        r, c = int(round(star["row"])), int(round(star["column"]))
        box = cube[r - 2 : r + 3, c - 2 : c + 3, :, 0].sum(["row", "column"])
        good = np.asarray(sector.quality) == 0
        median = ffis.isel(time=np.flatnonzero(good)).median(["y", "x"])
        background, lightcurve = compute(median.data, box.data)
        lightcurve = lightcurve[good]
    print(f"frames: {n_frames} ({int((~good).sum())} flagged by DQUALITY)")
    print(f"median FFI level of unflagged frames: {np.nanmedian(background):.1f} electron / s")
    print(f"brightest star: TIC {int(star['ticid'])} at row {r}, column {c}")
    level, scatter = np.nanmedian(lightcurve), np.nanstd(lightcurve)
    print(f"  5x5 aperture: {level:.0f} electron / s, scatter {scatter:.1f} electron / s")
    return 0
