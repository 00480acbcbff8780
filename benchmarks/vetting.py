"""TCE vetting end to end: TCEs per second on a local cluster, and where the time goes.

A simulated sector (one CCD, 208 × 214 pixels, ``--frames`` 30-minute frames) and a catalog of
``--tces`` TCEs (every transiting star with its true ephemeris, the other stars with made-up ones,
one TCE per star, more per star when there are more TCEs than stars) are vetted with
:func:`cloudlab.pipelines.vet_tces` on an embedded ``LocalCluster`` (``--workers`` workers, one
thread each). The same graph is computed up to each stage in turn (cutout pixels, light curves,
views, predictions), so the differences are each stage's own cost; then
:func:`cloudlab.pipelines.write_vetting` writes every product. The model is an untrained AstroNet
of the shipped architecture unless ``--models`` names checkpoints (inference costs the same).

Usage::

    .venv/bin/python benchmarks/vetting.py [--tces 300] [--frames 1200] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def catalog(sector, n_tces: int, seed: int = 0) -> pd.DataFrame:
    """TCEs on the simulated stars (bulk-CSV columns plus ra/dec)."""
    rng = np.random.default_rng(seed)
    stars = sector.stars.sort_values("flux", ascending=False)
    picks = stars.iloc[np.arange(n_tces) % len(stars)]
    planet = np.arange(n_tces) // len(stars) + 1
    span = np.ptp(sector.times)
    real = (picks["depth"].to_numpy() > 0) & (planet == 1)
    period = np.where(real, picks["period"], rng.uniform(0.05, 0.4, n_tces) * span)
    t0 = np.where(real, picks["t0"], sector.times[0] + rng.uniform(0, 1, n_tces) * period)
    duration = np.where(real, picks["duration"], rng.uniform(0.02, 0.06, n_tces) * period)
    return pd.DataFrame(
        {
            "ticid": picks["ticid"].to_numpy(),
            "tce_plnt_num": planet,
            "tce_period": period,
            "tce_time0bt": t0,
            "tce_duration": duration * 24,
            "tce_depth": np.where(real, picks["depth"] * 1e6, 500.0),
            "ra": picks["ra"].to_numpy(),
            "dec": picks["dec"].to_numpy(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tces", type=int, default=300)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", nargs="+", help="AstroNet checkpoints (default: untrained)")
    parser.add_argument("--quick", action="store_true", help="50 TCEs, 300 frames")
    args = parser.parse_args()
    if args.quick:
        args.tces, args.frames = 50, 300

    from cloudlab.cluster import compute, connect
    from cloudlab.pipelines import vet_tces, write_vetting
    from cloudlab.simulate import tess_sector

    with tempfile.TemporaryDirectory(prefix="bench-vetting-") as tmp:
        t = time.perf_counter()
        sector = tess_sector(tmp, n_frames=args.frames, cadence_s=1800, ffis=False, seed=2)
        print(f"simulated {args.frames} frames in {time.perf_counter() - t:.1f} s")
        models = args.models
        if not models:
            from cloudlab.astronet.model import build
            from cloudlab.astronet.train import save

            models = [f"{tmp}/untrained.keras"]
            save(build("local_global"), models[0])
        tces = catalog(sector, args.tces)
        n_tic = tces["ticid"].nunique()
        print(f"{len(tces)} TCEs on {n_tic} targets, {args.workers} workers x 1 thread")
        with connect("local", n_workers=args.workers, threads_per_worker=1):
            t = time.perf_counter()
            ds = vet_tces(tces, sector=55, cubes=sector.cube_url, models=models)
            build = time.perf_counter() - t
            compute(ds["cutout_flux"].sum(), progress=False)  # warm-up: workers import cloudlab
            stages = {
                "cutout pixels": [ds["cutout_flux"].sum()],
                "light curves": [ds["flux"]],
                "views": [ds["global_view"], ds["local_view"]],
                "predictions (first, models loaded)": [ds["prediction"]],
                "predictions": [ds["prediction"]],
            }
            seconds = {}
            for name, what in stages.items():
                t = time.perf_counter()
                compute(*what, progress=False)
                seconds[name] = time.perf_counter() - t
            products = {}
            for kind in ("tpfs", "lightcurves", "table", "plots"):
                only = {k: k == kind for k in ("tpfs", "lightcurves", "table", "plots")}
                t = time.perf_counter()
                write_vetting(ds, str(Path(tmp) / kind), **only)
                products[kind] = time.perf_counter() - t - seconds["predictions"]
    total = build + seconds["predictions"]
    print(f"\ngraph built in {build:.2f} s (catalog, cube headers, checkpoint check)")
    previous = 0.0
    for name in ("cutout pixels", "light curves", "views", "predictions"):
        print(f"{name:>14}: {seconds[name]:6.2f} s cumulative, {seconds[name] - previous:+6.2f} s")
        previous = seconds[name]
    cold = seconds["predictions (first, models loaded)"] - seconds["predictions"]
    print(f"first prediction run: +{cold:.1f} s (TensorFlow import and model load per worker)")
    for kind, extra in products.items():
        print(f"write_vetting {kind:>11}: {extra:+6.2f} s beyond the predictions")
    write = sum(products.values())
    print(f"\nend to end (warm, to predictions): {len(tces) / total:.1f} TCEs/s")
    print(f"with every product written: {len(tces) / (total + write):.1f} TCEs/s")


if __name__ == "__main__":
    main()
