"""Benchmark: AIA time-lag maps, cloudlab vs sunkit-image with dask vs a serial per-pixel loop.

One simulated 6-channel cube is written as JSOC-like FITS files, loaded and prepared with
cloudlab (exposure, common absolute time grid), and persisted on one local cluster. From those
same in-memory arrays and chunks, the three methods compute the time-lag and maximum
cross-correlation maps of all 15 channel pairs:

* ``cloudlab``: :func:`cloudlab.timelag.timelag_maps` (one task per spatial block for all pairs);
* ``sunkit-image``: ``time_lag`` + ``max_cross_correlation`` per pair on the same dask arrays,
  computed together (with the ``array_check_hook`` workaround for its issue #276: without it
  ``time_lag`` puts Quantities inside dask chunks, which distributed does not carry reliably);
* ``serial``: a per-pixel ``scipy.signal.correlate`` loop, the serial IDL-style baseline of the
  Pangeo notebook, timed on a sample of pixels and extrapolated.

Throughput is in pixel-pairs per second; memory is the peak of the workers' sampled process
memory above what they held before the run (the persisted inputs).

Usage::

    python benchmarks/timelag.py [--shape 96x96] [--frames 300] [--workers 2] [--serial-pixels 150]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def _sunkit_maps(prepared: dict, pairs, seconds: np.ndarray, bounds_s: float):
    import astropy.units as u
    import dask.array as da
    from sunkit_image import time_lag as skt

    def hook(lags, indices):  # issue #276 workaround: no Quantity inside dask chunks
        values = da.from_array(lags.to_value("s"), chunks=lags.shape)
        return values[indices.flatten()].reshape(indices.shape)

    t = seconds * u.s
    bounds = [-bounds_s, bounds_s] * u.s
    out = []
    for a, b in pairs:
        sa, sb = prepared[a].data, prepared[b].data
        out.append(skt.time_lag(sa, sb, t, lag_bounds=bounds, array_check_hook=hook))
        out.append(skt.max_cross_correlation(sa, sb, t, lag_bounds=bounds))
    return out


def _serial_rate(values: dict, pairs, seconds: np.ndarray, bounds_s: float, n_pixels: int):
    """Pixel-pairs per second of a per-pixel scipy.signal.correlate loop, and its lags."""
    from scipy.signal import correlate

    n = seconds.size
    dt = seconds[1] - seconds[0]
    lags = (np.arange(2 * n - 1) - (n - 1)) * dt
    keep = (lags >= -bounds_s) & (lags <= bounds_s)
    ny, nx = next(iter(values.values())).shape[1:]
    rng = np.random.default_rng(0)
    pixels = [divmod(int(i), nx) for i in rng.choice(ny * nx, size=n_pixels, replace=False)]
    result = {}
    start = time.perf_counter()
    for a, b in pairs:
        for y, x in pixels:
            sa, sb = values[a][:, y, x], values[b][:, y, x]
            za, zb = (sa - sa.mean()) / sa.std(), (sb - sb.mean()) / sb.std()
            cc = correlate(zb, za, mode="full") / n
            result[(a, b, y, x)] = lags[keep][np.argmax(cc[keep])]
    elapsed = time.perf_counter() - start
    return len(pairs) * n_pixels / elapsed, result


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _timed(client, func):
    """Run ``func``; return its result, wall time and peak cluster memory above the start."""
    from distributed.diagnostics import MemorySampler

    baseline = sum(client.run(_rss).values())
    sampler = MemorySampler()
    with sampler.sample("run", interval=0.1, measure="process"):
        start = time.perf_counter()
        out = func()
        elapsed = time.perf_counter() - start
    peak = float(sampler.to_pandas()["run"].max()) - baseline
    return out, elapsed, max(peak, 0.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="96x96", help="NYxNX pixels (default 96x96)")
    parser.add_argument("--frames", type=int, default=300, help="frames per channel (300)")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.add_argument("--chunk", type=int, default=48, help="spatial chunk side (default 48)")
    parser.add_argument("--serial-pixels", type=int, default=150, help="pixels timed serially")
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny size")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.frames, args.chunk, args.serial_pixels = "24x24", 40, 12, 10

    import dask

    from cloudlab.cluster import connect
    from cloudlab.io import aia
    from cloudlab.simulate import aia_series
    from cloudlab.timelag import default_pairs, prepare_channels, timelag_maps

    ny, nx = (int(v) for v in args.shape.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="timelag-bench-") as tmp:
        t0 = time.perf_counter()
        series = aia_series(tmp, shape=(ny, nx), n_frames=args.frames)
        print(f"simulated 6 x {args.frames} frames of {ny}x{nx} px in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        client = connect("local", n_workers=args.workers, threads_per_worker=1)
        try:
            with dask.config.set(scheduler=client):
                channels = {c: aia.open_stack(f) for c, f in series.files.items()}
                prepared = prepare_channels(channels, chunks=(args.chunk, args.chunk))
                prepared = {c: p.persist() for c, p in prepared.items()}
                dask.compute(*[p.data for p in prepared.values()])
                grid = next(iter(prepared.values()))["time"].values
                seconds = (grid - grid[0]) / np.timedelta64(1, "s")
                bounds_s = float(seconds[-1] / 2)
                pairs = default_pairs(list(prepared))
                n_pixel_pairs = ny * nx * len(pairs)
                print(f"prepared: {grid.size} common times, chunks {args.chunk}x{args.chunk}, "
                      f"{len(pairs)} pairs, {args.workers} workers x 1 thread")  # fmt: skip

                maps, t_cloudlab, m_cloudlab = _timed(
                    client,
                    lambda: timelag_maps(prepared, lag_bounds=(-bounds_s, bounds_s)).compute(),
                )
                reference, t_sunkit, m_sunkit = _timed(
                    client,
                    lambda: dask.compute(*_sunkit_maps(prepared, pairs, seconds, bounds_s)),
                )
                values = {c: p.values for c, p in prepared.items()}
        finally:
            client.close()
    worst = 0.0
    for i, (a, b) in enumerate(pairs):
        ours = maps["timelag"].sel(pair=f"{a}-{b}").values
        worst = max(worst, float(np.nanmax(np.abs(ours - reference[2 * i]))))
    rate_serial, serial = _serial_rate(values, pairs, seconds, bounds_s, args.serial_pixels)
    for (a, b, y, x), lag in serial.items():
        assert np.isclose(maps["timelag"].sel(pair=f"{a}-{b}").values[y, x], lag)
    rate_cloudlab = n_pixel_pairs / t_cloudlab
    rate_sunkit = n_pixel_pairs / t_sunkit
    print(f"\nmax |cloudlab - sunkit-image| time lag: {worst:.3g} s; "
          f"serial loop agrees on {len(serial)} sampled pixel-pairs")  # fmt: skip
    print(f"\n{'method':<24}{'time [s]':>10}{'pixel-pairs/s':>16}{'peak extra memory':>19}")
    print(f"{'cloudlab timelag_maps':<24}{t_cloudlab:>10.2f}{rate_cloudlab:>16,.0f}"
          f"{m_cloudlab / 2**20:>15,.0f} MiB")  # fmt: skip
    print(f"{'sunkit-image + dask':<24}{t_sunkit:>10.2f}{rate_sunkit:>16,.0f}"
          f"{m_sunkit / 2**20:>15,.0f} MiB")  # fmt: skip
    serial_time = n_pixel_pairs / rate_serial
    print(f"{'serial scipy loop':<24}{serial_time:>10.2f}{rate_serial:>16,.0f}{'(1 core)':>19}")
    memory = f"{m_sunkit / m_cloudlab:.2f}" if m_cloudlab else "n/a (no cloudlab peak)"
    print(f"\ncloudlab / sunkit-image: {rate_cloudlab / rate_sunkit:.1f}x the throughput; "
          f"peak memory sunkit-image / cloudlab: {memory}")  # fmt: skip
    print(f"cloudlab / serial loop:  {rate_cloudlab / rate_serial:.1f}x faster")


if __name__ == "__main__":
    main()
