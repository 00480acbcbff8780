"""Best model and derived parameters per galaxy (DRE's Summary table)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from astropy.table import Table

from cloudlab.backend import asnumpy
from cloudlab.chunking import client_batches
from cloudlab.dre.fit import MODEL_DIMS, flag_reasons, flag_status

__all__ = ["SUMMARY_COLUMNS", "parabola_log_r", "parameters", "summarize"]

#: DRE's Summary columns, in order (catalogue columns follow).
SUMMARY_COLUMNS = (
    "ROW",
    "MODEL_IDX",
    "CHI",
    "CHI_STD",
    "LOGR_CHI",
    "LOGR_VAR",
    "LOGR_CHI_VAR",
    "LOGR_PARAB",
    "LOGR_STD",
    "INDEX",
    "LOGR",
    "AX_RATIO",
    "ANGLE",
    "EXT_NUMBER",
    "NUMBER",
)


def parabola_log_r(chi: np.ndarray, idx: tuple[int, ...], log_r: np.ndarray) -> tuple[float, float]:
    """Refine log r with DRE's 3-point parabola on ln χ along the log r axis.

    Parameters
    ----------
    chi : numpy.ndarray
        χ cube ``(N_n, N_q, N_t, N_r)``.
    idx : tuple of int
        Best model index ``(n, q, t, r)``.
    log_r : numpy.ndarray
        log r axis values.

    Returns
    -------
    (float, float)
        ``LOGR_PARAB`` and ``LOGR_STD``: the vertex ``x* = −b / 2a`` of ``ln χ = c + b x + a x²``
        through the 3 points centred on the best r (centre clamped to ``[1, N_r − 2]``);
        (NaN, NaN) when ``a < 0`` or ``x*`` is outside the axis; ``(log_r[r_best], NaN)`` when
        ``x*`` is outside the 3-point window; else ``(x*, 1 / sqrt(2a))``.
    """
    n_r = log_r.size
    if n_r < 3:
        return float("nan"), float("nan")
    r = idx[-1]
    centre = min(max(r, 1), n_r - 2)
    window = slice(centre - 1, centre + 2)
    x = np.asarray(log_r[window], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(chi[idx[:-1]][window], dtype=np.float64))
    try:
        c, b, a = np.linalg.solve(np.vander(x, 3, increasing=True), y)
    except np.linalg.LinAlgError:
        return float("nan"), float("nan")
    if not np.isfinite(a) or a == 0:
        return float("nan"), float("nan")
    vertex = -b / (2.0 * a)
    if vertex < log_r[0] or vertex > log_r[-1] or a < 0:
        return float("nan"), float("nan")
    if vertex < x[0] or vertex > x[-1]:
        return float(log_r[r]), float("nan")
    return float(vertex), float(1.0 / np.sqrt(2.0 * a))


def parameters(chi: np.ndarray, axes: dict[str, np.ndarray]) -> dict[str, object]:
    """DRE's per-galaxy parameters from one χ cube.

    Parameters
    ----------
    chi : numpy.ndarray
        χ cube ``(N_n, N_q, N_t, N_r)``.
    axes : dict
        ``index``, ``ax_ratio``, ``angle``, ``log_r`` axis values.

    Returns
    -------
    dict
        ``MODEL_IDX`` (first nanargmin in C order), ``CHI`` (nanmin), ``CHI_STD`` (np.std),
        the 1/χ-weighted radius moments ``LOGR_CHI``, ``LOGR_VAR``, ``LOGR_CHI_VAR``, the
        parabola ``LOGR_PARAB``, ``LOGR_STD`` and the axis values at the best model.
    """
    chi = np.asarray(chi)
    idx = tuple(int(i) for i in np.unravel_index(np.nanargmin(chi), chi.shape))
    log_r = np.asarray(axes["log_r"], dtype=np.float64)
    radius = 10.0 ** log_r.astype(chi.dtype)
    weight = 1.0 / chi
    total = np.sum(weight)
    mean_r = np.sum(weight * radius) / total
    best_r = radius[idx[-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "MODEL_IDX": np.array(idx, dtype=np.int64),
            "CHI": chi[idx],
            "CHI_STD": np.std(chi),
            "LOGR_CHI": np.log10(mean_r),
            "LOGR_VAR": np.log10(np.sum(weight * (radius - best_r) ** 2) / total),
            "LOGR_CHI_VAR": np.log10(np.sum(weight * (radius - mean_r) ** 2) / total),
        }
    out["LOGR_PARAB"], out["LOGR_STD"] = parabola_log_r(chi, idx, log_r)
    out["INDEX"], out["AX_RATIO"] = axes["index"][idx[0]], axes["ax_ratio"][idx[1]]
    out["ANGLE"], out["LOGR"] = axes["angle"][idx[2]], axes["log_r"][idx[3]]
    return out


def _nan_row(axes_dtype: np.dtype) -> dict[str, object]:
    nan = np.array(np.nan, dtype=axes_dtype)
    row: dict[str, object] = {"MODEL_IDX": np.full(4, -1, dtype=np.int64)}
    for column in SUMMARY_COLUMNS[2:13]:
        row[column] = nan
    return row


def summarize(result: xr.Dataset) -> Table:
    """Compute DRE's Summary table from a :func:`cloudlab.dre.fit` result (computes χ, a batch
    of whole chunks of about dask's ``array.chunk-size`` at a time).

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`cloudlab.dre.fit` (``chi``, ``flag`` and galaxy coordinates).

    Returns
    -------
    astropy.table.Table
        One row per galaxy: ``ROW``, ``MODEL_IDX``, ``CHI``, ``CHI_STD``, ``LOGR_CHI``,
        ``LOGR_VAR``, ``LOGR_CHI_VAR``, ``LOGR_PARAB``, ``LOGR_STD``, ``INDEX``, ``LOGR``,
        ``AX_RATIO``, ``ANGLE``, ``EXT_NUMBER``, ``NUMBER``, then ``FLAG``, ``STATUS``
        (``"ok"`` or the code of the lowest flag bit, as in the fit's ``status``) and ``REASON``
        (the codes of all flag bits, comma-separated: why a galaxy has no fit; DRE drops such
        galaxies) and the remaining catalogue columns.
        Galaxies with a non-zero ``FLAG`` have NaN parameters and ``MODEL_IDX = -1``.
    """
    axes = {dim: np.asarray(result[dim].values) for dim in MODEL_DIMS}
    n = result.sizes["galaxy"]
    rows, flags = [], [np.zeros(0, result["flag"].dtype)]
    # χ comes to the client a bounded batch at a time, never whole
    for start, stop in client_batches(result["chi"].data):
        computed = result[["chi", "flag"]].isel(galaxy=slice(start, stop)).compute()
        chi, flag = asnumpy(computed["chi"].data), asnumpy(computed["flag"].data)
        for c, f in zip(chi, flag, strict=True):
            rows.append(_nan_row(chi.dtype) if f else parameters(c, axes))
        flags.append(flag)
    flag = np.concatenate(flags)
    table = Table()
    table["ROW"] = np.arange(n, dtype=np.int64)
    for column in SUMMARY_COLUMNS[1:13]:
        values = [row[column] for row in rows]
        table[column] = np.stack(values) if n else np.zeros((0, 4) if column == "MODEL_IDX" else 0)
    coords = {k: np.asarray(c.values) for k, c in result.coords.items() if c.dims == ("galaxy",)}
    table["EXT_NUMBER"] = coords.get("EXT_NUMBER", np.zeros(n, dtype=np.int64))
    table["NUMBER"] = coords.get("NUMBER", np.arange(1, n + 1))
    table["FLAG"] = flag.astype(np.uint8)
    table["STATUS"] = flag_status(flag)[0] if n else np.zeros(0, "U2")
    table["REASON"] = [flag_reasons(f) for f in flag] if n else np.zeros(0, "U1")
    for name, values in coords.items():
        if name not in table.colnames:
            table[name] = values
    return table
