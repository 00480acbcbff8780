"""The BackDrop per-frame solve, with the shared normal matrix factorised once.

Model of one frame ``d = frame - average_image`` (tess-backdrop's two stages):

1. polynomial + radial terms (29 weights) fitted to the masked 8x8 block means with a Gaussian
   prior (sigma 3000) and two clipping passes at 300 e/s;
2. on the residual (pixels with ``|grad |res|| > 30`` or ``|res| > 500`` set to zero) a
   tensor-product B-spline (prior sigma 400) plus one offset per column (prior sigma 40), fitted by
   unit-weight least squares on the background mask.

The stage-2 normal matrix ``N = X_m^T X_m + Lambda`` depends only on the mask, so it is built once,
from the separable basis ``B(r, c) = Br(r) Bc(c)`` without ever forming the 4 M x 3648 design
matrix. Ordering the (diagonal) strap block first, its Cholesky factor is ``diag(sqrt(D))`` plus
the Cholesky factor of the spline Schur complement ``S = A - C D^-1 C^T`` (1600 x 1600). Each frame
then costs two GEMMs for its right-hand side ``Br^T (M * R) Bc`` plus column sums, and all frames
of a batch share the two triangular solves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import scipy.linalg

from cloudlab.backdrop import basis, kernels
from cloudlab.errors import InputError

__all__ = [
    "BLOCK",
    "CLIP",
    "CLIP_PASSES",
    "POLY_PRIOR",
    "SPLINE_PRIOR",
    "STRAP_PRIOR",
    "ZERO_GRADIENT",
    "ZERO_LEVEL",
    "Solver",
    "build_solver",
]

POLY_PRIOR = 3000.0
SPLINE_PRIOR = 400.0
STRAP_PRIOR = 40.0
CLIP = 300.0
CLIP_PASSES = 2
ZERO_GRADIENT = 30.0
ZERO_LEVEL = 500.0
BLOCK = 8


@dataclass
class Solver:
    """Everything the per-frame fit shares: masks, bases, the factorised normal matrix.

    Build it with :func:`build_solver`; it is computed once per sector/camera/CCD and sent to every
    worker. ``fit_frames`` runs on numpy or (with ``gpu=True``) CuPy.
    """

    rows: np.ndarray
    columns: np.ndarray
    ccd: int
    npoly: int
    nrad: int
    degree: int
    row_knots: np.ndarray
    column_knots: np.ndarray
    mask: np.ndarray
    average: np.ndarray
    br: np.ndarray
    bc: np.ndarray
    brm: np.ndarray
    dinv: np.ndarray
    chol: np.ndarray
    block_valid: np.ndarray
    block_count: np.ndarray
    poly_blocks: np.ndarray
    poly_normal: np.ndarray
    vr: np.ndarray
    vc: np.ndarray
    rho: np.ndarray
    band_first: np.ndarray
    band_values: np.ndarray
    saturation: np.ndarray | None = None
    _device: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_device"] = {}  # device copies stay where they were made
        return state

    @property
    def n_poly(self) -> int:
        """Number of polynomial + radial weights."""
        return self.npoly * self.npoly + self.nrad - 1

    def arrays(self, xp: ModuleType) -> dict[str, Any]:
        """The arrays the kernel needs, on the device of ``xp`` (copied once and cached)."""
        key = xp.__name__
        if key not in self._device:
            names = ("mask", "average", "br", "bc", "brm", "dinv", "chol", "vr", "vc", "rho")
            arrs = {n: xp.asarray(getattr(self, n)) for n in names}
            arrs["maskf"] = arrs["mask"].astype(xp.float32)
            self._device[key] = arrs
        return self._device[key]

    def fit_frames(self, frames: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fit a batch of frames.

        Parameters
        ----------
        frames : array or sequence of arrays
            ``(ntime, rows, columns)`` science images, or a list of ``(rows, columns)`` images
            (numpy or CuPy).

        Returns
        -------
        poly_w : numpy.ndarray
            ``(ntime, n_poly)`` polynomial + radial weights.
        spline_w : numpy.ndarray
            ``(ntime, n_column_knots, n_row_knots)`` spline weights, tess-backdrop's axis order.
        strap_w : numpy.ndarray
            ``(ntime, columns)`` strap weights.
        """
        from cloudlab.backend import array_module, asnumpy

        xp = array_module(frames[0])
        if xp is np and kernels.AVAILABLE:
            return self._fit_frames_numba(frames)
        dev = self.arrays(xp)
        n_t = len(frames)
        finite = [None] * n_t
        empty = np.zeros(n_t, bool)
        means = np.empty((n_t, int(self.block_valid.sum())))
        for t in range(n_t):
            d = frames[t].astype(xp.float32) - dev["average"]
            weight = dev["maskf"]
            if not bool(xp.isfinite(d).all()):
                finite[t] = xp.isfinite(d)
                d = xp.where(finite[t], d, 0)
                weight = weight * finite[t]
            sums = asnumpy(_block_sum(d * weight, xp)).ravel()[self.block_valid]
            counts = self.block_count
            if finite[t] is not None:
                counts = asnumpy(_block_sum(weight, xp)).ravel()[self.block_valid]
            means[t] = sums / np.maximum(counts, 1)
            empty[t] = not counts.any()
        poly_w = self._fit_poly(means)

        k_r, k_c = self.br.shape[1], self.bc.shape[1]
        rhs_spline = xp.empty((n_t, k_r, k_c), xp.float64)
        rhs_strap = xp.empty((n_t, len(self.columns)), xp.float64)
        coef = poly_w[:, : self.npoly**2].reshape(n_t, self.npoly, self.npoly)
        coef = xp.asarray(coef)
        wrad = poly_w[:, self.npoly**2 :]
        vr, vc, rho = (dev[n].astype(xp.float64) for n in ("vr", "vc", "rho"))
        for t in range(n_t):
            # the model in float64, as the numba path and the explicit solution have it: which
            # pixels the |residual| rules zero must not depend on float32 BLAS rounding
            model = vr @ coef[t].T @ vc.T
            power = rho
            for k in range(self.nrad - 1):
                model += float(wrad[t, k]) * power
                if k + 1 < self.nrad - 1:
                    power = power * rho
            res = (frames[t].astype(xp.float64) - dev["average"] - model).astype(xp.float32)
            keep = dev["mask"] & ~_zeroed(res, xp)
            if finite[t] is not None:
                keep &= finite[t]
            res = xp.where(keep, res, xp.float32(0))
            rhs_spline[t] = (dev["br"].T @ res) @ dev["bc"]
            rhs_strap[t] = res.sum(axis=0, dtype=xp.float64)
        spline_w, strap_w = self._solve(rhs_spline, rhs_strap, dev, xp)
        return _blank(empty, poly_w, asnumpy(spline_w), asnumpy(strap_w))

    def _fit_frames_numba(self, frames: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CPU path: the two fused pixel passes of :mod:`cloudlab.backdrop.kernels`."""
        frames = [np.ascontiguousarray(f, dtype=np.float32) for f in frames]
        n_t = len(frames)
        means = np.empty((n_t, int(self.block_valid.sum())))
        empty = np.zeros(n_t, bool)
        for t in range(n_t):
            sums, counts = kernels.block_sums(frames[t], self.average, self.mask, BLOCK)
            counts = counts.ravel()[self.block_valid]
            means[t] = sums.ravel()[self.block_valid] / np.maximum(counts, 1)
            empty[t] = not counts.any()
        poly_w = self._fit_poly(means)
        k_r = self.br.shape[1]
        rhs_spline = np.empty((n_t, k_r, self.bc.shape[1]))
        rhs_strap = np.empty((n_t, len(self.columns)))
        vr = self.vr.astype(np.float64)
        vct = np.ascontiguousarray(self.vc.T, dtype=np.float32)
        bc = self.bc.astype(np.float64)
        npp = self.npoly**2
        for t in range(n_t):
            prow = (vr @ poly_w[t, :npp].reshape(self.npoly, self.npoly).T).astype(np.float32)
            spline, rhs_strap[t] = kernels.rhs(
                frames[t], self.average, self.mask, prow, vct, self.rho,
                poly_w[t, npp:].astype(np.float32), self.band_first, self.band_values, k_r,
                np.float32(ZERO_GRADIENT**2), np.float32(ZERO_LEVEL),
            )  # fmt: skip
            rhs_spline[t] = spline @ bc
        dev = {"brm": self.brm, "bc": bc, "dinv": self.dinv, "chol": self.chol}
        spline_w, strap_w = self._solve(rhs_spline, rhs_strap, dev, np)
        return _blank(empty, poly_w, spline_w, strap_w)

    def _fit_poly(self, means: np.ndarray) -> np.ndarray:
        """Polynomial stage on block means, with two clipping passes (host, 29 x 29 systems)."""
        p = self.poly_blocks
        w = np.linalg.solve(self.poly_normal, p.T @ means.T).T
        for t in range(len(means)):
            for _ in range(CLIP_PASSES):
                drop = np.abs(means[t] - p @ w[t]) >= CLIP
                if not drop.any():
                    break
                normal = self.poly_normal - p[drop].T @ p[drop]
                w[t] = np.linalg.solve(normal, p[~drop].T @ means[t, ~drop])
        return w

    def _solve(self, rhs_spline: Any, rhs_strap: Any, dev: dict, xp: ModuleType) -> tuple:
        """Block Cholesky solve of the spline + strap system for all frames at once."""
        n_t = len(rhs_strap)
        brm, bc = dev["brm"], dev["bc"].astype(xp.float64)
        y = rhs_strap * dev["dinv"][None, :]  # D^-1 b_strap
        # C D^-1 b_strap, with C[(j, i), k] = (Br^T M)[i, k] Bc[k, j]
        coupled = xp.matmul(brm[None], bc[None] * y[:, :, None])  # (t, i, j)
        rhs = xp.transpose(rhs_spline - coupled, (0, 2, 1)).reshape(n_t, -1)  # (j, i) order
        x = _cho_solve(dev["chol"], rhs.T, xp).T
        spline = x.reshape(n_t, bc.shape[1], brm.shape[0])  # [t, j, i]
        back = xp.matmul(bc[None], spline)  # (t, k, i)
        strap = y - dev["dinv"][None, :] * (back * brm.T[None]).sum(axis=2)
        return spline, strap


def _blank(empty: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """NaN weights for frames without a single finite unmasked pixel."""
    for w in weights:
        w[empty] = np.nan
    return weights


def _cho_solve(chol: Any, rhs: Any, xp: ModuleType) -> Any:
    """Solve ``L L^T x = rhs`` with two triangular solves (numpy/scipy or CuPy)."""
    if xp is np:
        return scipy.linalg.cho_solve((chol, True), rhs, check_finite=False)
    from cupyx.scipy.linalg import solve_triangular

    z = solve_triangular(chol, rhs, lower=True)
    return solve_triangular(chol, z, lower=True, trans="T")


def _block_sum(x: Any, xp: ModuleType) -> Any:
    """Sums over ``BLOCK x BLOCK`` blocks (the image is zero-padded to whole blocks)."""
    n_r, n_c = x.shape
    pr, pc = -n_r % BLOCK, -n_c % BLOCK
    if pr or pc:
        x = xp.pad(x, ((0, pr), (0, pc)))
    nbr, nbc = x.shape[0] // BLOCK, x.shape[1] // BLOCK
    return x.reshape(nbr, BLOCK, nbc, BLOCK).sum(axis=(1, 3), dtype=xp.float64)


def _zeroed(res: Any, xp: ModuleType) -> Any:
    """Pixels tess-backdrop zeroes: ``hypot(gradient(|res|)) > 30`` or ``|res| > 500``."""
    a = xp.abs(res)
    g2 = xp.empty_like(a)
    g2[1:-1] = (a[2:] - a[:-2]) * 0.5
    g2[0] = a[1] - a[0]
    g2[-1] = a[-1] - a[-2]
    g2 *= g2
    gc = xp.empty_like(a)
    gc[:, 1:-1] = (a[:, 2:] - a[:, :-2]) * 0.5
    gc[:, 0] = a[:, 1] - a[:, 0]
    gc[:, -1] = a[:, -1] - a[:, -2]
    gc *= gc
    g2 += gc
    return (g2 > ZERO_GRADIENT**2) | (a > ZERO_LEVEL)


def _band_pairs(n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ordered index pairs ``(i, i')`` with ``|i - i'| <= width``."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = np.abs(i - j) <= width
    return i[keep], j[keep]


def build_solver(
    mask: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    *,
    ccd: int,
    npoly: int = 5,
    nrad: int = 5,
    nknots: int = 40,
    degree: int = 2,
    average: np.ndarray | None = None,
) -> Solver:
    """Build the masks' normal matrices and factorise them.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(rows, columns)`` boolean, True on pixels used by the fit.
    rows, columns : numpy.ndarray
        1-D 0-based science coordinates of the region.
    ccd : int
        CCD number (boresight of the radial term).
    npoly, nrad, nknots, degree : int
        Model sizes (tess-backdrop's defaults: 5, 5, 40, 2).
    average : numpy.ndarray, optional
        Image subtracted from every frame before the fit (default zero).

    Returns
    -------
    Solver
    """
    mask = np.asarray(mask, bool)
    rows = np.asarray(rows)
    columns = np.asarray(columns)
    if mask.shape != (len(rows), len(columns)):
        raise InputError(
            f"mask shape {mask.shape} does not match the {len(rows)} rows x {len(columns)} "
            "columns of the region; build the mask on the same region"
        )
    if not mask.any():
        raise InputError(
            "no unmasked pixels: every pixel is flagged as star or saturated; "
            "raise the star/saturation thresholds or fit a larger region"
        )
    k_r = k_c = nknots
    row_knots = basis.knots(rows, nknots, degree)
    column_knots = basis.knots(columns, nknots, degree)
    br = basis.spline_basis(rows, row_knots, degree)
    bc = basis.spline_basis(columns, column_knots, degree)
    mf = mask.astype(np.float64)

    # spline x spline block: sum_rc M Br_i Br_i' Bc_j Bc_j' over banded pairs only
    pi, pip = _band_pairs(k_r, degree)
    qj, qjp = _band_pairs(k_c, degree)
    g = (br[:, pi] * br[:, pip]).T @ mf  # (P_r, n_c)
    colsum = mf.sum(axis=0)
    dinv = 1.0 / (colsum + 1.0 / STRAP_PRIOR**2)
    brm = br.T @ mf  # (K_r, n_c)
    cp = bc[:, qj] * bc[:, qjp]  # (n_c, P_c)
    normal = np.zeros((k_c, k_r, k_c, k_r))
    normal[qj[None, :], pi[:, None], qjp[None, :], pip[:, None]] = g @ cp
    # Schur complement of the diagonal strap block: subtract C D^-1 C^T
    schur = (brm[:, None, :] * brm[None, :, :]).reshape(k_r * k_r, -1) @ (cp * dinv[:, None])
    ii, iip = np.divmod(np.arange(k_r * k_r), k_r)
    normal[qj[None, :], ii[:, None], qjp[None, :], iip[:, None]] -= schur
    normal = normal.reshape(k_c * k_r, k_c * k_r)
    normal[np.diag_indices_from(normal)] += 1.0 / SPLINE_PRIOR**2
    chol = scipy.linalg.cholesky(normal, lower=True, check_finite=False)
    del normal, schur

    # polynomial stage on the 8x8 block means
    n_br, n_bc = -(-len(rows) // BLOCK), -(-len(columns) // BLOCK)
    count = _block_sum(mf, np).ravel()
    del mf
    valid = count > 0
    block_rows = np.repeat(rows[0] + BLOCK * np.arange(n_br) + BLOCK // 2, n_bc)
    block_cols = np.tile(columns[0] + BLOCK * np.arange(n_bc) + BLOCK // 2, n_br)
    p = basis.poly_design(block_rows[valid], block_cols[valid], npoly, nrad, ccd)
    poly_normal = p.T @ p + np.eye(p.shape[1]) / POLY_PRIOR**2
    vr, vc = basis.poly_axes(rows, columns, npoly)
    avg = np.zeros(mask.shape, np.float32) if average is None else average
    first, values = kernels.band(br, degree)
    rho = np.empty(mask.shape, np.float32)
    step = max(1, 2**24 // (8 * len(columns)))  # float64 distances 16 MB at a time
    for a in range(0, len(rows), step):
        rho[a : a + step] = basis.radius(rows[a : a + step], columns, ccd)
    return Solver(
        rows=rows,
        columns=columns,
        ccd=ccd,
        npoly=npoly,
        nrad=nrad,
        degree=degree,
        row_knots=row_knots,
        column_knots=column_knots,
        mask=mask,
        average=np.asarray(avg, np.float32),
        br=br.astype(np.float32),
        bc=bc.astype(np.float32),
        brm=brm,
        dinv=dinv,
        chol=chol,
        block_valid=valid,
        block_count=count[valid],
        poly_blocks=p,
        poly_normal=poly_normal,
        vr=vr.astype(np.float32),
        vc=vc.astype(np.float32),
        rho=rho,
        band_first=first,
        band_values=values,
    )
