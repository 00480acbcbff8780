"""TCE vetting end to end: TCEs per second on a local cluster, where the time goes, and the AUC.

A simulated vetting sector (:func:`cloudlab.simulate.vetting.vetting_sector`: 27 days of
``--cadence``-second frames, ``--tces`` TCEs, one per target: a quarter planets, a quarter
eclipsing binaries, a fifth noise, the rest variables and blends) is vetted with
:func:`cloudlab.pipelines.vet_tces` and the shipped Astronet-Triage ensemble (or ``--models``) on
an embedded ``LocalCluster`` (``--workers`` workers, one thread each). The same graph is computed
up to each stage in turn (cutout pixels, light curves, views, predictions), so the differences
are each stage's own cost; then :func:`cloudlab.pipelines.write_vetting` writes every product.
Last, the ROC AUC of planets and binaries against noise and variables, and against every other
TCE (blends too), and the mean prediction of each kind.

Usage::

    .venv/bin/python benchmarks/vetting.py [--tces 100] [--cadence 1800] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARES = {"planet": 0.25, "eb": 0.25, "variable": 0.15, "blend": 0.15}


def counts(n_tces: int) -> dict[str, int]:
    """TCEs of each kind for ``n_tces`` in all (noise takes the rest)."""
    out = {kind: int(share * n_tces) for kind, share in SHARES.items()}
    out["noise"] = n_tces - sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tces", type=int, default=100)
    parser.add_argument("--cadence", type=float, default=1800.0, help="seconds (1800 or 200)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", help="AstroNet checkpoints (default: shipped)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage (best is kept)")
    parser.add_argument("--quick", action="store_true", help="20 TCEs")
    args = parser.parse_args()
    if args.quick:
        args.tces = 20

    from cloudlab.cluster import compute, connect
    from cloudlab.pipelines import vet_tces, write_vetting
    from cloudlab.simulate.vetting import separation, vetting_sector

    n = counts(args.tces)
    with tempfile.TemporaryDirectory(prefix="bench-vetting-") as tmp:
        t = time.perf_counter()
        sim = vetting_sector(
            tmp, n_planets=n["planet"], n_ebs=n["eb"], n_noise=n["noise"],
            n_variables=n["variable"], n_blends=n["blend"], cadence_s=args.cadence,
            seed=args.seed,
        )  # fmt: skip
        frames, shape = len(sim.sector.times), sim.sector.shape
        print(f"simulated {frames} frames of {shape[0]} x {shape[1]} pixels and {n} TCEs in "
              f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        print(f"{len(sim.tces)} TCEs, {args.workers} workers x 1 thread")
        with connect("local", n_workers=args.workers, threads_per_worker=1):
            t = time.perf_counter()
            ds = vet_tces(sim.catalog_url, sector=55, cubes=sim.cube_url, models=args.models)
            build = time.perf_counter() - t
            compute(ds["cutout_flux"].sum(), progress=False)  # warm-up: workers import cloudlab
            t = time.perf_counter()
            compute(ds["prediction"], progress=False)
            cold = time.perf_counter() - t
            stages = {
                "cutout pixels": [ds["cutout_flux"].sum()],
                "light curves": [ds["flux"]],
                "views": [ds["global_view"], ds["local_view"]],
                "predictions": [ds["prediction"]],
                "scores": [ds["prediction"], ds["score"]],
            }
            seconds = {}
            for name, what in stages.items():
                runs = []
                for _ in range(args.repeat):  # best of: every worker has loaded the models
                    t = time.perf_counter()
                    results = compute(*what, progress=False)
                    runs.append(time.perf_counter() - t)
                seconds[name] = min(runs)
            products = {}
            for kind in ("tpfs", "lightcurves", "table", "plots"):
                only = {k: k == kind for k in ("tpfs", "lightcurves", "table", "plots")}
                t = time.perf_counter()
                write_vetting(ds, str(Path(tmp) / kind), **only)
                products[kind] = time.perf_counter() - t
            t = time.perf_counter()
            write_vetting(ds, str(Path(tmp) / "all"))
            everything = time.perf_counter() - t
    tces = sim.tces
    total = build + seconds["scores"]
    print(f"\ngraph built in {build:.2f} s (catalog, cube headers, checkpoint check)")
    previous = 0.0
    for name in ("cutout pixels", "light curves", "views", "predictions", "scores"):
        print(f"{name:>14}: {seconds[name]:6.2f} s cumulative, {seconds[name] - previous:+6.2f} s")
        previous = seconds[name]
    print(f"first prediction run: {cold:.1f} s (TensorFlow import and model load per worker)")
    for kind, spent in products.items():
        print(f"write_vetting {kind:>11} alone: {spent:6.2f} s (computes what it needs)")
    print(f"write_vetting, every product: {everything:6.2f} s")
    print(f"\nend to end (warm, to ranked scores): {len(tces) / total:.1f} TCEs/s")
    print(f"end to end, every product written: {len(tces) / everything:.1f} TCEs/s")
    index = ds["tceid"].values
    score = separation(tces, pd.Series(np.asarray(results[0]), index=index))
    ranked = separation(tces, pd.Series(np.asarray(results[1]), index=index))
    print(f"\nAUC, planets and binaries against noise and variables: {score['auc']:.3f}")
    print(
        f"AUC against every other TCE, blends too: {score['auc_all']:.3f} (prediction alone), "
        f"{ranked['auc_all']:.3f} (score: with the difference-image centroid test)"
    )
    print("mean prediction: " + ", ".join(f"{k} {score[k]:.3f}" for k in n if k in score))


if __name__ == "__main__":
    main()
