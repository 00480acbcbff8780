"""AstroNet view generation: cloudlab's compiled and vectorised views against the reference.

The reference is ``cloudlab.astronet.reference``: the Astronet-Triage algorithm written plainly
from ``shared/reference/astronet.md`` (fold, ``argsort``, a Python loop over bins with pointer-
walked edges and ``np.median`` per bin, ``np.interp`` for empty bins, normalisation), one TCE at
a time, as ``generate_input_records`` does.  cloudlab computes the same views (bit for bit; checked
here) with ``batch_views`` for a batch of TCEs at once, two ways: the numba kernel
(``engine="numba"``, the default when numba is installed) and the NumPy fallback
(``engine="numpy"``).

Input: TESS-like TCEs, one 27-day light curve at 30-min cadence (~1,230 points, a 1-day gap)
each, periods 0.3–13 d, durations 1–8 % of the period (at most 0.5 d).  Everything runs in this
process with one thread; times are CPU seconds (``time.process_time``), meaningful on a shared
machine, with wall seconds beside them.  The numba kernel is compiled into a fresh, temporary
cache directory, so its first call is a real JIT compile: that time is reported on its own and
excluded from the per-TCE figures.

Usage::

    .venv/bin/python benchmarks/astronet_views.py [--tces 10000] [--ref-tces 500] [--batch 1000]
"""

from __future__ import annotations

import os
import tempfile

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="astronet-views-numba-")

import argparse  # noqa: E402
import atexit  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cloudlab.astronet import reference  # noqa: E402
from cloudlab.astronet.views import batch_views, numba_views  # noqa: E402

atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)


def make_tces(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """TESS-like light curves (one row per TCE) with a box transit at the TCE ephemeris."""
    rng = np.random.default_rng(seed)
    time_ = 1325.3 + np.arange(0, 27, 1 / 48)
    time_ = time_[np.abs(time_ - 1338.8) > 0.5]
    period = rng.uniform(0.3, 13, n)
    duration = np.minimum(rng.uniform(0.01, 0.08, n) * period, 0.5)
    t0 = 1325.3 + rng.uniform(0, 1, n) * period
    times = np.broadcast_to(time_, (n, time_.size))
    phase = np.abs(
        np.mod(times - t0[:, None] + period[:, None] / 2, period[:, None]) - period[:, None] / 2
    )
    flux = 1 + rng.normal(0, 1e-3, times.shape) - 0.005 * (phase < duration[:, None] / 2)
    return np.ascontiguousarray(times), flux, period, t0, duration


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tces", type=int, default=10000, help="TCEs for cloudlab")
    parser.add_argument("--ref-tces", type=int, default=500, help="TCEs for the reference")
    parser.add_argument("--batch", type=int, default=1000, help="TCEs per batch (one dask task)")
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny size")
    args = parser.parse_args()
    if args.quick:
        args.tces, args.ref_tces, args.batch = 200, 20, 100

    times, flux, period, t0, duration = make_tces(args.tces)
    print(f"{args.tces} TESS-like TCEs, {times.shape[1]} points each")

    def run(engine: str) -> tuple[float, float, dict[str, np.ndarray]]:
        cpu0, wall0 = _clock()
        results = []
        for lo in range(0, args.tces, args.batch):
            sl = slice(lo, lo + args.batch)
            results.append(
                batch_views(times[sl], flux[sl], period[sl], t0[sl], duration[sl], engine=engine)
            )
        cpu1, wall1 = _clock()
        merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        return (cpu1 - cpu0) / args.tces * 1e3, (wall1 - wall0) / args.tces * 1e3, merged

    rows = []
    engines = ["numpy"] if numba_views is None else ["numba", "numpy"]
    if numba_views is None:
        print("numba is not installed: only the NumPy path is timed")
    else:
        cpu0, wall0 = _clock()
        batch_views(times[:10], flux[:10], period[:10], t0[:10], duration[:10], engine="numba")
        cpu1, wall1 = _clock()
        print(f"numba first call (JIT compile, excluded below): {cpu1 - cpu0:.2f} s CPU, "
              f"{wall1 - wall0:.2f} s wall")  # fmt: skip
    batch_views(times[:10], flux[:10], period[:10], t0[:10], duration[:10], engine="numpy")
    outputs = {}
    for engine in engines:
        cpu, wall, outputs[engine] = run(engine)
        rows.append((f"cloudlab batch_views ({engine})", cpu, wall))
    ours = outputs[engines[0]]
    if len(engines) == 2:
        same = all(
            np.array_equal(outputs["numba"][k], outputs["numpy"][k], equal_nan=k.endswith("view"))
            for k in ours
        )
        print(f"numba and NumPy paths identical on {args.tces} TCEs: {same}")

    m = min(args.ref_tces, args.tces)
    cpu0, wall0 = _clock()
    ref = []
    for i in range(m):
        try:
            ref.append(reference.views_for(times[i], flux[i], period[i], t0[i], duration[i]))
        except ValueError:
            ref.append(None)
    cpu1, wall1 = _clock()
    rows.insert(
        0, ("reference (plain, per TCE)", (cpu1 - cpu0) / m * 1e3, (wall1 - wall0) / m * 1e3)
    )

    valid = ours["valid"]
    identical = all(
        (r is None and not valid[i])
        or (
            r is not None
            and np.array_equal(r[0], ours["global_view"][i])
            and np.array_equal(r[1], ours["local_view"][i])
        )
        for i, r in enumerate(ref)
    )
    print(f"views identical to the reference on {m} TCEs: {identical}; valid {valid.sum()}")
    print(f"{'implementation':<36}{'ms/TCE (CPU)':>14}{'ms/TCE (wall)':>15}{'TCE/s/core':>12}")
    for label, cpu, wall in rows:
        print(f"{label:<36}{cpu:>14.4f}{wall:>15.4f}{1e3 / cpu:>12.0f}")
    ref_cpu = rows[0][1]
    for label, cpu, _ in rows[1:]:
        print(f"speed-up over the reference (CPU time), {label}: {ref_cpu / cpu:.1f}x")


if __name__ == "__main__":
    main()
