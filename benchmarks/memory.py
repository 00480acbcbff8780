"""Peak worker memory against the task size cloudlab chose, for each workflow at 10x the size of
``tests/test_scale.py``.

Each workflow is built with its default task size (:func:`cloudlab.chunking.items_per_task`:
dask's ``array.chunk-size`` capped by the workers' memory) and computed on a ``LocalCluster`` of
two single-thread worker processes with a memory limit. A thread in every worker samples the
process's resident anonymous memory (what its code allocated; Linux ``RssAnon``) and its
resident set every 10 ms; the figures are the peaks minus the worker's memory just
before the compute (after a warm-up run of the same graph, so imports, compiled kernels and
caches are paid on both workers, and after returning freed memory to the system). The result of each
workflow is reduced on the workers (a sum per chunk), so no worker holds results for the client.
Spilling: how many results the workers wrote to disk during the compute. The resident set also
counts the pages of memory-mapped local files a worker has read (cloudlab keeps up to 64 files
mapped), which dask's memory manager sees too.

Inputs are sparse files (real headers, pixels that are holes) or small simulations, so the run
takes a few minutes on a laptop.

Usage::

    python benchmarks/memory.py [--workflows cutouts dre ...] [--memory 2GiB]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
from astropy.io import fits
from dask.utils import format_bytes, parse_bytes

from cloudlab.testing import sparse_fits
from cloudlab.testing.scale import sparse_tile

GOAL = 2.0  # peak above baseline <= GOAL x task size


# ------------------------------------------------------------------------------------------
# workers: a sampler thread per worker process
# ------------------------------------------------------------------------------------------
def _anonymous() -> int:
    """Resident anonymous memory of this process (what its code allocated; Linux), else RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss


def _start_sampler(dask_worker, interval: float = 0.01) -> None:
    import psutil

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back before the baseline
    except OSError:
        pass
    process = psutil.Process()
    state = {"rss0": process.memory_info().rss, "anon0": _anonymous(), "rss": 0, "anon": 0}
    state.update(spilled=_spilled(dask_worker), stop=False)

    def sample() -> None:
        while not state["stop"]:
            state["rss"] = max(state["rss"], process.memory_info().rss)
            state["anon"] = max(state["anon"], _anonymous())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    dask_worker._memory_sampler = (state, thread)


def _stop_sampler(dask_worker) -> dict:
    state, thread = dask_worker._memory_sampler
    state["stop"] = True
    thread.join()
    return {
        "rss": state["rss"] - state["rss0"],
        "anon": state["anon"] - state["anon0"],
        "spilled": _spilled(dask_worker) - state["spilled"],
    }


def _spilled(dask_worker) -> int:
    """How many times the worker has written a key to disk so far."""
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return int(metrics.get(("disk-write", "count"), 0))


# ------------------------------------------------------------------------------------------
# workflows: each returns (what to compute, task size in bytes as the library chose it)
# ------------------------------------------------------------------------------------------
def _reduce(*arrays) -> list:
    """A sum per chunk: each chunk is released as soon as it is made."""
    return [a.map_blocks(lambda b: np.full((1,) * b.ndim, np.nansum(b)), chunks=(1,) * a.ndim)
            .sum() for a in arrays]  # fmt: skip


def build_cutouts(tmp: Path, n: int):
    from cloudlab.cutouts import make_cutouts
    from cloudlab.cutouts.cutout import BYTES_PER_PIXEL_FRAME
    from cloudlab.simulate import tess_sector

    frames, size = 600, 25
    sim = tess_sector(str(tmp), n_frames=frames, n_stars=n, ffis=False, cube=True, sparse=True)
    targets = sim.stars[["ticid", "ra", "dec"]].head(n).reset_index(drop=True)
    ds = make_cutouts(targets, sector=sim.sector, cube_base=str(tmp), size=size)
    per_target = 2 * size * size * frames * BYTES_PER_PIXEL_FRAME
    return _reduce(ds["flux"].data), max(ds["flux"].data.chunks[0]) * per_target


def build_backdrop(tmp: Path, n: int):
    from cloudlab import backdrop
    from cloudlab.io.tess import open_ffis
    from cloudlab.simulate import tess_sector

    sim = tess_sector(str(tmp / "seed"), n_frames=1, shape=(2078, 2136), n_stars=10, ffis=True,
                      cube=False)  # fmt: skip
    (src,) = sorted(Path(sim.ffi_urls[0]).parent.glob("*_ffic.fits"))
    headers = _headers(src)
    out = tmp / "ffis"
    out.mkdir()
    for k in range(n):
        hs = [h.copy() for h in headers]
        for h in hs:
            for key in ("TSTART", "TSTOP"):
                if key in h:
                    h[key] = float(h[key]) + k * 200 / 86400
            if "DQUALITY" in h:
                h["DQUALITY"] = 0
        sparse_fits(out / f"tess{k:013d}-s0001-1-1-0120-s_ffic.fits", hs)
    ffis = open_ffis(str(out / "*_ffic.fits"))
    result = backdrop.fit(ffis)
    n_r, n_c = ffis.sizes["row"], ffis.sizes["column"]
    per_frame = 4 * n_r * n_c
    return _reduce(result["poly_w"].data), max(result["poly_w"].data.chunks[0]) * per_frame


def build_dre(tmp: Path, n: int):
    from cloudlab.dre import fit, model_grid, open_cuts
    from cloudlab.dre.cuts import CUT_BYTES_PER_PIXEL
    from cloudlab.simulate.galaxies import gaussian_psf

    size = 128
    urls, catalog = sparse_tile(tmp, n)
    cuts = open_cuts(urls["tile"], catalog, size=size, margin=100, background=urls["bkg"],
                     rms=urls["rms"], segmentation=urls["seg"])  # fmt: skip
    models = model_grid(ax_ratio=(0.5, 0.5, 1), angle=(0.0, 90.0, 2), log_r=(0.4, 0.3, 2),
                        boxsize=size)  # fmt: skip
    result = fit(cuts, models, gaussian_psf(2.5, 9))
    per_galaxy = CUT_BYTES_PER_PIXEL * size * size
    return _reduce(result["chi"].data), max(cuts["obj"].data.chunks[0]) * per_galaxy


def build_astronet_sorted(tmp: Path, n: int):
    """The same catalog sorted by target, as the light curves are."""
    return build_astronet(tmp, n, ordered=True)


def build_astronet(tmp: Path, n: int, ordered: bool = False):
    from cloudlab.astronet import views
    from cloudlab.astronet.catalog import tces_per_task
    from cloudlab.io.lightcurves import read_lightcurves
    from cloudlab.simulate import lightcurves

    lightcurves(1, 0, 0, dest=str(tmp / "seed"), fmt="fits", cadence_minutes=2.0)
    (src,) = sorted((tmp / "seed").glob("*.fits"))
    headers = _headers(src)
    urls = {}
    for k in range(n):
        tic = 1000 + k
        hs = [h.copy() for h in headers]
        if "KEPLERID" in hs[0]:
            hs[0]["KEPLERID"] = tic
        urls[tic] = str(tmp / f"{tic}.fits")
        sparse_fits(Path(urls[tic]), hs)
    lcs = read_lightcurves(urls, reader="kepler")
    tics = np.asarray(lcs.target.values)
    if not ordered:  # as catalogs come: not sorted by target
        tics = np.random.default_rng(0).permutation(tics)
    tces = pd.DataFrame({"tic_id": tics, "Period": 3.0, "Epoc": 1.0, "Duration": 0.1})
    ds = views(lcs, tces)
    per_task = tces_per_task(lcs["flux"].shape[1], "triage", len(tces))
    n_cadences = lcs["flux"].shape[1]
    from cloudlab.astronet.views import num_bins

    per_tce = 32 * n_cadences + 8 * sum(num_bins("triage").values())
    assert max(ds["valid"].data.chunks[0]) == per_task
    return _reduce(ds["global_view"].data, ds["local_view"].data), per_task * per_tce


def build_timelag(tmp: Path, n: int):
    from cloudlab.io import aia
    from cloudlab.simulate import aia_series
    from cloudlab.timelag import prepare_channels, timelag_bytes_per_pixel, timelag_maps

    channels = (171, 193)
    aia_series(str(tmp / "seed"), channels=channels, n_frames=24, shape=(64, 64),
               lag_map=np.zeros((64, 64)), compressed=False)  # fmt: skip
    files = {}
    for channel in channels:
        (header,) = _headers(sorted((tmp / "seed" / f"{channel:04d}").glob("*.fits"))[0])
        t0 = np.datetime64(header["T_OBS"].rstrip("Z"))
        out = tmp / f"{channel:04d}"
        out.mkdir()
        for k in range(n):
            h = header.copy()
            step = np.timedelta64(12 * k, "s")
            h["T_OBS"] = np.datetime_as_string(t0 + step, unit="us") + "Z"
            h["DATE-OBS"] = np.datetime_as_string(np.datetime64(h["DATE-OBS"]) + step, unit="us")
            h["NAXIS1"] = h["NAXIS2"] = 4096
            h["CRPIX1"] += (4096 - 64) / 2
            h["CRPIX2"] += (4096 - 64) / 2
            sparse_fits(out / f"aia_{channel}_{k:05d}.fits", [h])
        files[channel] = sorted(str(p) for p in out.glob("*.fits"))
    stacks = {c: aia.open_stack(urls) for c, urls in files.items()}
    prepared = prepare_channels(stacks, bottom_left=(-430, 20), top_right=(-370, 80))
    maps = timelag_maps(prepared)
    _, rows, columns = prepared[channels[0]].data.chunks
    pixels = max(rows) * max(columns)
    frames = prepared[channels[0]].sizes["time"]
    per_pixel = timelag_bytes_per_pixel(frames, len(channels))
    lazy = [v.data for v in maps.data_vars.values() if isinstance(v.data, da.Array)]
    return _reduce(*lazy), pixels * per_pixel


def _headers(path: Path) -> list[fits.Header]:
    with fits.open(path, disable_image_compression=True) as hdul:
        return [hdu.header.copy() for hdu in hdul]


#: name: (builder, 10x the test_scale.py size)
WORKFLOWS = {
    "cutouts": (build_cutouts, 200),
    "dre": (build_dre, 640),
    "astronet": (build_astronet, 640),
    "astronet-sorted": (build_astronet_sorted, 640),
    "backdrop": (build_backdrop, 80),
    "timelag": (build_timelag, 1200),
}


def measure(client, name: str, tmp: Path, scale: int = 1) -> dict:
    build, n = WORKFLOWS[name]
    n //= scale
    collections, task = build(tmp, n)
    dask.compute(*collections)  # warm-up: imports, compiled kernels and caches on both workers
    client.run(_start_sampler)
    start = time.perf_counter()
    dask.compute(*collections)
    seconds = time.perf_counter() - start
    samples = client.run(_stop_sampler)
    peak = max(s["anon"] for s in samples.values())
    rss = max(s["rss"] for s in samples.values())
    spilled = sum(s["spilled"] for s in samples.values())
    return {"workflow": name, "n": n, "task": task, "peak": peak, "rss": rss, "spilled": spilled,
            "seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", nargs="*", default=list(WORKFLOWS), choices=list(WORKFLOWS))
    parser.add_argument("--memory", default="2GiB", help="memory limit of each worker")
    parser.add_argument("--quick", action="store_true", help="smoke run, a tenth of the sizes")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    limit = parse_bytes(args.memory)
    rows = []
    for name in args.workflows:  # a fresh cluster each: nothing left over from the one before
        tmp = Path(tempfile.mkdtemp(prefix=f"cloudlab-memory-{name}-"))
        try:
            with (
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                             memory_limit=limit, dashboard_address=":0") as cluster,
                Client(cluster) as client,
            ):  # fmt: skip
                rows.append(measure(client, name, tmp, scale=10 if args.quick else 1))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(rows[-1], flush=True)
    chunk = dask.config.get("array.chunk-size")
    print(f"\narray.chunk-size {chunk}, 2 workers x 1 thread, {format_bytes(limit)} each\n")
    print("| workflow | items | task size chosen | peak above baseline | ratio | RSS peak above "
          "baseline | spilled | goal <= 2x |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["peak"] / r["task"]
        ok = "✔" if ratio <= GOAL and not r["spilled"] else "✘"
        print(
            f"| {r['workflow']} | {r['n']} | {format_bytes(r['task'])} | "
            f"{format_bytes(r['peak'])} | {ratio:.2f} | {format_bytes(r['rss'])} | "
            f"{r['spilled'] or 'no'} | {ok} |"
        )


if __name__ == "__main__":
    main()
