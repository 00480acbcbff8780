"""BackDrop benchmark: cloudlab against tess-backdrop's per-frame solve, side by side.

tess-backdrop 0.1.6 does not install on Python 3.11 (its metadata says ``<3.10``), so its
approach is re-implemented here from the formulas in ``../shared/reference/backdrop.md`` (not its
code): an explicit sparse design matrix ``X`` (masked pixels x 3648) whose normal matrix
``X^T X + Lambda`` is built once, a dense 4 M x 29 polynomial design matrix, and per frame a
29 x 29 system rebuilt per clipping pass, the full-resolution polynomial model, ``X^T res`` and an
LU solve of the 3648 x 3648 system (``numpy.linalg.solve``), the work its ``_fit_frame`` does.

Both run on the same simulated full-size frames (``cloudlab.simulate.ffi_stack``), each in its own
single-threaded process (``OMP/OPENBLAS/MKL_NUM_THREADS=1``) so that times are per core and peak RSS
is one worker's. Times are CPU seconds of the process (the machine may be shared) and wall seconds.

Usage::

    .venv/bin/python benchmarks/backdrop.py [--frames 12] [--ref-frames 3] [--noise 3] [--quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import glob  # noqa: E402
import multiprocessing as mp  # noqa: E402
import pickle  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _errors(model: np.ndarray, truth, frame: int, mask: np.ndarray) -> np.ndarray:
    return np.abs(model - truth.background(frame))[mask]


def _accuracy(errs: list[np.ndarray]) -> dict:
    e = np.concatenate(errs)
    return {"median": float(np.median(e)), "p99": float(np.percentile(e, 99))}


def _warm_up() -> None:
    """Load the numba kernels (compiled and cached on first use) outside the timed region."""
    from cloudlab.backdrop.solver import build_solver

    solver = build_solver(np.ones((16, 16), bool), np.arange(16), np.arange(16), ccd=1, nknots=4)
    solver.fit_frames(np.ones((1, 16, 16), np.float32))


def run_cloudlab(stack: str, truth_file: str, fpb: int, out: mp.Queue) -> None:
    """cloudlab end to end (lazy graph, synchronous scheduler), then a timed breakdown."""
    import dask

    from cloudlab import backdrop
    from cloudlab.backdrop import masks
    from cloudlab.backdrop.fit import average_batches, model_grid, prepare_solver
    from cloudlab.io.tess import open_ffis

    truth = pickle.loads(Path(truth_file).read_bytes())
    res: dict = {}
    _warm_up()
    w0, c0 = time.perf_counter(), time.process_time()
    ffis = open_ffis(f"{stack}/*.fits")
    weights = backdrop.fit(ffis, frames_per_batch=fpb)
    with dask.config.set(scheduler="sync"):
        weights = weights.compute()
    res["end_to_end_wall"] = time.perf_counter() - w0
    res["end_to_end_cpu"] = time.process_time() - c0
    res["peak_rss_fit_gb"] = _peak_rss_gb()
    n = ffis.sizes["time"]
    res["end_to_end_cpu_per_frame"] = res["end_to_end_cpu"] / n

    # breakdown: setup (average image, masks, normal matrix, Cholesky) and the frame loop
    c0 = time.process_time()
    good = masks.good_frames(ffis["quality"].values)
    with dask.config.set(scheduler="sync"):
        (means,) = dask.compute(average_batches(ffis, good))
    rows, cols = ffis["row"].values, ffis["column"].values
    solver = prepare_solver(
        means, rows, cols, ccd=ffis.attrs["ccd"], npoly=5, nrad=5, nknots=40, degree=2
    )
    res["setup_cpu"] = time.process_time() - c0
    read_cpu = fit_cpu = 0.0
    errs = []
    for start in range(0, n, fpb):
        c0 = time.process_time()
        frames = ffis["flux"][start : start + fpb].values
        c1 = time.process_time()
        poly_w, spline_w, strap_w = solver.fit_frames(frames)
        c2 = time.process_time()
        read_cpu += c1 - c0
        fit_cpu += c2 - c1
        model = model_grid(solver, poly_w, spline_w, strap_w)
        errs += [_errors(model[k], truth, start + k, solver.mask) for k in range(len(frames))]
    res["read_cpu_per_frame"] = read_cpu / n
    res["fit_cpu_per_frame"] = fit_cpu / n
    res["accuracy"] = _accuracy(errs)
    full = backdrop.evaluate(weights, rows, cols, times=[0]).values[0]
    first = model_grid(solver, *solver.fit_frames(ffis["flux"][:1].values))[0]
    res["graph_equals_breakdown"] = float(np.abs(full - first).max())
    res["peak_rss_gb"] = _peak_rss_gb()
    res["frames"] = n
    out.put(res)


def _sparse_design(mask: np.ndarray, br: np.ndarray, bc: np.ndarray):
    """tess-backdrop's ``X = [spline | strap]`` on the masked pixels, as scipy CSR."""
    import scipy.sparse as sp

    from cloudlab.backdrop.kernels import band

    r, c = np.nonzero(mask)
    fr, vr = band(br, 2)
    fc, vc = band(bc, 2)
    k_r, k_c, n_c = br.shape[1], bc.shape[1], mask.shape[1]
    rows, cols, vals = [], [], []
    pix = np.arange(len(r))
    for qi in range(3):
        for qj in range(3):
            rows.append(pix)
            cols.append((fc[c] + qj) * k_r + fr[r] + qi)
            vals.append(vr[r, qi] * vc[c, qj])
    rows.append(pix)
    cols.append(k_r * k_c + c)
    vals.append(np.ones(len(r)))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(r), k_r * k_c + n_c),
    )


def run_reference(stack: str, truth_file: str, n_ref: int, out: mp.Queue) -> None:
    """tess-backdrop's approach: explicit design matrices, per-frame LU solve."""
    from astropy.io import fits

    from cloudlab.backdrop import basis, masks
    from cloudlab.backdrop.solver import (
        CLIP,
        POLY_PRIOR,
        SPLINE_PRIOR,
        STRAP_PRIOR,
        ZERO_GRADIENT,
        ZERO_LEVEL,
    )

    truth = pickle.loads(Path(truth_file).read_bytes())
    files = sorted(glob.glob(f"{stack}/*.fits"))
    res: dict = {}

    def read(f: str) -> np.ndarray:
        return fits.getdata(f, 1)[:2048, 44:2092].astype(np.float64)

    # masks from the average image (same rules as cloudlab)
    c0 = time.process_time()
    quality = np.array([fits.getheader(f, 1)["DQUALITY"] for f in files])
    good = np.flatnonzero(masks.good_frames(quality))
    batch_means = []
    for b in masks.frame_batches(len(good)):
        acc = np.zeros((2048, 2048))
        for k in good[b]:
            img = read(files[k])
            acc += img - np.median(img[::16, ::16])
        batch_means.append(acc / len(b))
    avg = np.nanmedian(batch_means, axis=0)
    avg -= np.nanmedian(avg)
    mask, _ = masks.background_mask(avg)
    res["masks_cpu"] = time.process_time() - c0

    # one-off matrices: dense 4 M x 29 polynomial, sparse spline + strap, the normal matrix
    c0 = time.process_time()
    ccd = truth.ccd
    px = np.arange(2048)
    rr, cc = np.meshgrid(px, px, indexing="ij")
    poly_x = basis.poly_design(rr.ravel(), cc.ravel(), 5, 5, ccd)
    del rr, cc
    kn = basis.knots(px, 40, 2)
    br = basis.spline_basis(px, kn, 2)
    bc = basis.spline_basis(px, kn, 2)
    x = _sparse_design(mask, br, bc)
    prior = np.r_[np.full(1600, SPLINE_PRIOR**-2), np.full(2048, STRAP_PRIOR**-2)]
    sigma_w_inv = (x.T @ x).toarray() + np.diag(prior)
    nb = 256
    block_mask = mask.reshape(nb, 8, nb, 8)
    counts = block_mask.sum(axis=(1, 3)).ravel()
    valid = counts > 0
    centres = 8 * np.arange(nb) + 4
    br_c, bc_c = np.meshgrid(centres, centres, indexing="ij")
    p_blocks = basis.poly_design(br_c.ravel()[valid], bc_c.ravel()[valid], 5, 5, ccd)
    res["matrix_cpu"] = time.process_time() - c0
    mflat = mask.ravel()

    def fit_frame(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = (d * mask).reshape(nb, 8, nb, 8).sum(axis=(1, 3)).ravel()[valid] / counts[valid]
        keep = np.ones(len(m), bool)
        for _ in range(3):  # first solve, then two clipping passes (matrix rebuilt each time)
            p = p_blocks[keep]
            w = np.linalg.solve(p.T @ p + np.eye(29) / POLY_PRIOR**2, p.T @ m[keep])
            keep = np.abs(m - p_blocks @ w) < CLIP
        resid = d - (poly_x @ w).reshape(2048, 2048)
        gr, gc = np.gradient(np.abs(resid))
        resid[(np.hypot(gr, gc) > ZERO_GRADIENT) | (np.abs(resid) > ZERO_LEVEL)] = 0.0
        wsp = np.linalg.solve(sigma_w_inv, x.T @ resid.ravel()[mflat])
        return w, wsp

    def model(w: np.ndarray, wsp: np.ndarray) -> np.ndarray:
        out = basis.poly_grid(w[None], px, px, 5, 5, ccd)[0]
        out += br @ wsp[:1600].reshape(40, 40).T @ bc.T
        return out + wsp[1600:][None, :]

    c0 = time.process_time()
    w, wsp = fit_frame(avg)
    avg = avg - model(w, wsp)
    res["average_fit_cpu"] = time.process_time() - c0

    read_cpu = fit_cpu = 0.0
    errs = []
    for k in range(n_ref):
        c0 = time.process_time()
        d = read(files[k]) - avg
        c1 = time.process_time()
        w, wsp = fit_frame(d)
        c2 = time.process_time()
        read_cpu += c1 - c0
        fit_cpu += c2 - c1
        errs.append(_errors(model(w, wsp), truth, k, mask))
    res["read_cpu_per_frame"] = read_cpu / n_ref
    res["fit_cpu_per_frame"] = fit_cpu / n_ref
    res["accuracy"] = _accuracy(errs)
    res["peak_rss_gb"] = _peak_rss_gb()
    res["frames"] = n_ref
    out.put(res)


def _child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12, help="frames fitted by cloudlab")
    parser.add_argument("--ref-frames", type=int, default=3, help="frames fitted by the reference")
    parser.add_argument("--noise", default="none", help="'none' (shot+read noise) or sigma e/s")
    parser.add_argument("--frames-per-batch", type=int, default=6)
    parser.add_argument("--workdir", default=None, help="where the frames are written")
    parser.add_argument("--quick", action="store_true", help="4 frames, 1 reference frame")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.ref_frames = 4, 1
    from cloudlab.simulate.ffis import ffi_stack

    noise = None if args.noise == "none" else float(args.noise)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="backdrop-bench-"))
    stack = work / "frames"
    t0 = time.perf_counter()
    truth = ffi_stack(str(stack), n_frames=args.frames, shape=(2048, 2048), seed=7, ccd=1,
                      noise=noise)  # fmt: skip
    truth_file = work / "truth.pkl"
    truth_file.write_bytes(pickle.dumps(truth))
    print(f"simulated {args.frames} full frames (noise={args.noise}) in "
          f"{time.perf_counter() - t0:.1f} s under {stack}")  # fmt: skip

    ours = _child(run_cloudlab, str(stack), str(truth_file), args.frames_per_batch)
    print("\ncloudlab (1 core)")
    for key, value in ours.items():
        print(f"  {key:24s} {value}")
    if args.skip_reference:
        return
    ref = _child(run_reference, str(stack), str(truth_file), min(args.ref_frames, args.frames))
    print("\ntess-backdrop approach, re-implemented (1 core)")
    for key, value in ref.items():
        print(f"  {key:24s} {value}")
    per_ours = ours["fit_cpu_per_frame"] + ours["read_cpu_per_frame"]
    per_ref = ref["fit_cpu_per_frame"] + ref["read_cpu_per_frame"]
    setup_ref = ref["masks_cpu"] + ref["matrix_cpu"] + ref["average_fit_cpu"]
    print("\nratios (reference / cloudlab)")
    print(f"  per frame, read + fit      {per_ref:.3f} s / {per_ours:.3f} s = "
          f"{per_ref / per_ours:.1f}x")  # fmt: skip
    print(f"  setup (masks+matrix+avg)   {setup_ref:.1f} s / {ours['setup_cpu']:.1f} s = "
          f"{setup_ref / ours['setup_cpu']:.1f}x")  # fmt: skip
    rss = ours["peak_rss_fit_gb"]
    print(
        f"  peak RSS (fit)             {ref['peak_rss_gb']:.2f} GB / {rss:.2f} GB = "
        f"{ref['peak_rss_gb'] / rss:.1f}x"
    )
    print(f"  accuracy median |m - t|    {ref['accuracy']['median']:.4f} / "
          f"{ours['accuracy']['median']:.4f} e/s")  # fmt: skip
    print(f"  accuracy p99 |m - t|       {ref['accuracy']['p99']:.4f} / "
          f"{ours['accuracy']['p99']:.4f} e/s")  # fmt: skip


if __name__ == "__main__":
    main()
