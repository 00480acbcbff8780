"""``cloudlab demo``: vet a simulated TESS sector's TCEs on a local cluster (``demo fits``: open a
simulated sector lazily and summarise it)."""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

__all__ = ["register", "run_demo", "run_vetting_demo"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="vet a simulated sector's TCEs with AstroNet (or 'demo fits': lazy FITS summary)",
        description="'cloudlab demo' simulates a TESS sector with transiting planets and "
        "look-alikes, starts a local dask cluster, cuts every TCE's target out of the cube, "
        "makes background-corrected light curves and AstroNet predictions in one graph, prints "
        "the ranked TCEs and writes one PNG per TCE. 'cloudlab demo fits' opens a simulated "
        "sector lazily and prints a summary.",
    )
    parser.add_argument(
        "what", nargs="?", choices=("vet", "fits"), default="vet", help="which demo (default vet)"
    )
    parser.add_argument(
        "--dest", help="where to write the simulated sector (any fsspec URL; default: temp dir)"
    )
    parser.add_argument(
        "--out", help="vet: where to write the plots and table (default: ./cloudlab-demo-TIME)"
    )
    parser.add_argument("--models", nargs="+", metavar="URL", help="vet: AstroNet checkpoints")
    parser.add_argument("--frames", type=int, default=24, help="fits: number of FFIs (default 24)")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cloudlab-demo-") as tmp:
        dest = args.dest or tmp
        if args.what == "fits":
            return run_demo(dest, n_frames=args.frames, n_workers=args.workers)
        out = args.out or f"cloudlab-demo-{time.strftime('%Y%m%d-%H%M%S')}"
        return run_vetting_demo(dest, out, models=args.models, n_workers=args.workers)


def run_vetting_demo(
    dest: str, out: str, *, models: list[str] | None = None, n_workers: int = 2
) -> int:
    """Simulate a vetting sector into ``dest``, vet its TCEs on a local cluster, write to ``out``.

    Parameters
    ----------
    dest : str
        Where the simulated cube goes.
    out : str
        Where the ranked table and the PNGs go (must not exist yet).
    models : list of str, optional
        AstroNet checkpoints (default: the shipped model).
    n_workers : int
        Workers of the embedded ``LocalCluster``.

    Returns
    -------
    int
        0 on success.
    """
    from cloudlab.cluster import connect
    from cloudlab.commands.vet import format_table
    from cloudlab.pipelines import vet_tces, write_vetting
    from cloudlab.simulate.vetting import separation, vetting_sector

    t0 = time.perf_counter()
    print(f"simulating a TESS sector (27 days of 30-minute frames) into {dest}")
    sim = vetting_sector(dest, seed=3, progress=True)
    counts = sim.tces["kind"].value_counts()
    print(f"{len(sim.tces)} TCEs: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    ds = vet_tces(sim.catalog_url, sector=sim.sector.sector, cubes=sim.cube_url, models=models)
    with connect("local", n_workers=n_workers) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        table = write_vetting(ds, out, tpfs=False, lightcurves=False, progress=True)
    truth = sim.tces.set_index("tceid")
    table["truth"] = truth.loc[table["tceid"], "kind"].to_numpy()
    print(format_table(table, truth=True))
    model = separation(sim.tces, table.set_index("tceid")["prediction"])
    score = separation(sim.tces, table.set_index("tceid")["score"])
    print(
        f"\nAUC, planets and eclipsing binaries against every other TCE, blends too: "
        f"{score['auc_all']:.3f} ranked by score; {model['auc_all']:.3f} by the AstroNet "
        "prediction alone (its light curves cannot tell a neighbour's diluted eclipse from the "
        "target's: the difference-image centroid test can)"
    )
    print(f"plots of every TCE and the ranked table (vetting.csv) in {out}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


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
