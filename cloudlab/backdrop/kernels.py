"""Fused CPU kernels (numba) for the two per-frame pixel passes of the BackDrop fit.

Pass 1 sums ``(frame - average)`` over the masked pixels of every 8x8 block. Pass 2 builds the
residual ``frame - average - poly`` row by row (a three-row ring buffer gives the gradient of
``|res|``), zeroes tess-backdrop's outlier pixels, and accumulates in the same sweep the strap
right-hand side (column sums) and ``Br^T (M * res)`` using the ``degree + 1`` non-zero row
B-splines of each row. Each frame is read twice and nothing of image size is written.
The numpy/CuPy path in :mod:`cloudlab.backdrop.solver` computes the same quantities.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is in the tess extra
    numba = None

AVAILABLE = numba is not None

__all__ = ["AVAILABLE", "band"]
if AVAILABLE:
    __all__ += ["block_sums", "rhs"]


def band(br: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """First non-zero basis index of every row and the ``degree + 1`` values from there."""
    k = br.shape[1]
    first = np.clip(np.argmax(br > 0, axis=1), 0, k - degree - 1).astype(np.int64)
    values = np.stack([br[np.arange(len(br)), first + q] for q in range(degree + 1)], axis=1)
    return first, values.astype(np.float32)


if AVAILABLE:

    @numba.njit(cache=True, nogil=True)
    def block_sums(frame, average, mask, block):  # pragma: no cover - compiled
        n_r, n_c = frame.shape
        nbr = (n_r + block - 1) // block
        nbc = (n_c + block - 1) // block
        sums = np.zeros((nbr, nbc))
        counts = np.zeros((nbr, nbc))
        acc = np.zeros(n_c, np.float32)
        cnt = np.zeros(n_c, np.float32)
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for r in range(n_r):
            for c in range(n_c):
                d = frame[r, c] - average[r, c]
                ok = mask[r, c] and abs(d) < np.inf
                acc[c] += d if ok else zero
                cnt[c] += one if ok else zero
            if (r + 1) % block == 0 or r == n_r - 1:
                br = r // block
                for c in range(n_c):
                    sums[br, c // block] += acc[c]
                    counts[br, c // block] += cnt[c]
                    acc[c] = 0.0
                    cnt[c] = 0.0
        return sums, counts

    @numba.njit(cache=True, nogil=True)
    def _residual_row(frame, average, prow, vct, rho, wrad, r, out, tmp):  # pragma: no cover
        n_c = frame.shape[1]
        for c in range(n_c):
            out[c] = frame[r, c] - average[r, c]
            tmp[c] = 0.0
        for k in range(wrad.shape[0] - 1, -1, -1):
            w = wrad[k]
            for c in range(n_c):
                tmp[c] = (tmp[c] + w) * rho[r, c]
        for i in range(vct.shape[0]):
            p = prow[r, i]
            for c in range(n_c):
                tmp[c] += p * vct[i, c]
        for c in range(n_c):
            out[c] -= tmp[c]

    @numba.njit(cache=True, nogil=True)
    def rhs(
        frame, average, mask, prow, vct, rho, wrad, first, values, n_knots, grad2, level
    ):  # pragma: no cover - compiled
        n_r, n_c = frame.shape
        spline = np.zeros((n_knots, n_c), np.float32)
        strap = np.zeros(n_c, np.float32)
        ring = np.empty((3, n_c), np.float32)
        absr = np.empty((3, n_c), np.float32)
        tmp = np.empty(n_c, np.float32)
        gcol = np.empty(n_c, np.float32)
        vrow = np.empty(n_c, np.float32)
        _residual_row(frame, average, prow, vct, rho, wrad, 0, ring[0], tmp)
        absr[0] = np.abs(ring[0])
        for r in range(n_r):
            cur = r % 3
            nxt = (r + 1) % 3
            prv = (r + 2) % 3
            if r + 1 < n_r:
                _residual_row(frame, average, prow, vct, rho, wrad, r + 1, ring[nxt], tmp)
                for c in range(n_c):
                    absr[nxt, c] = abs(ring[nxt, c])
            a = absr[cur]
            res = ring[cur]
            if r == 0:
                up, down, scale = absr[nxt], a, np.float32(1.0)
            elif r == n_r - 1:
                up, down, scale = a, absr[prv], np.float32(1.0)
            else:
                up, down, scale = absr[nxt], absr[prv], np.float32(0.5)
            gcol[0] = a[1] - a[0]
            gcol[n_c - 1] = a[n_c - 1] - a[n_c - 2]
            for c in range(1, n_c - 1):
                gcol[c] = (a[c + 1] - a[c - 1]) * np.float32(0.5)
            for c in range(n_c):
                gr = (up[c] - down[c]) * scale
                # NaN gradients (next to non-finite pixels) keep the pixel, as numpy's ">" does
                steep = gr * gr + gcol[c] * gcol[c] > grad2
                ok = mask[r, c] and a[c] <= level and not steep
                vrow[c] = res[c] if ok else np.float32(0.0)
                strap[c] += vrow[c]
            f = first[r]
            for q in range(values.shape[1]):
                b = values[r, q]
                for c in range(n_c):
                    spline[f + q, c] += b * vrow[c]
        return spline, strap
