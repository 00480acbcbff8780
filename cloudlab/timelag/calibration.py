"""AIA degradation correction and pointing update from local tables, in aiapy's formats.

No network: the user passes the tables, as files or as tables already read (for instance the
ones ``aiapy.calibrate.util.get_correction_table`` and ``get_pointing_table`` return).

Degradation (the ``aia.response`` series, or SolarSoft's ``aia_V*_response_table.txt``; columns
``DATE``, ``WAVE_STR``, ``T_START``, ``T_STOP``, ``EFF_AREA``, ``EFFA_P1..3``): for a channel, the
rows of ``WAVE_STR`` ``"<wavelength>_THIN"`` (``"<wavelength>"`` for 1600, 1700 and 4500) ordered
by ``DATE``; the epoch of a time ``t`` is the last such row with ``T_START <= t < T_STOP``, and the
factor is

    EFF_AREA(epoch) / EFF_AREA(first row) * (1 + p1 dt + p2 dt**2 + p3 dt**3),

with ``dt`` the days from the epoch's ``T_START``. Images are divided by it (as aiapy's
``correct_degradation``), ``t`` being the frame's ``DATE-OBS`` (the time aiapy uses for AIA
maps; ``T_OBS`` when absent).

Pointing (the 3-hourly master pointing table ``aia.master_pointing3h``; columns ``T_START``,
``T_STOP``, ``A_<www>_X0``, ``A_<www>_Y0``, ``A_<www>_IMSCALE``, ``A_<www>_INSTROT``): the first
row with ``T_START <= T_OBS < T_STOP`` gives ``CRPIX1/2 = X0/Y0 + 1`` (the table's centres are
0-based), ``CDELT1/2 = IMSCALE`` and ``CROTA2 = INSTROT + SAT_ROT``; a missing (NaN) value keeps
the header's, as aiapy's ``update_pointing`` does. The table describes full 4096x4096 frames
only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from cloudlab.errors import FITSFormatError, InputError

__all__ = [
    "CORRECTION_COLUMNS",
    "FULL_FRAME",
    "POINTING_COLUMNS",
    "degradation",
    "pointing",
    "read_table",
]

#: columns of the degradation (``aia.response``) table that are used
CORRECTION_COLUMNS = ("DATE", "WAVE_STR", "T_START", "T_STOP", "EFF_AREA", "EFFA_P1", "EFFA_P2",
                      "EFFA_P3")  # fmt: skip
#: columns of the pointing table used, ``{w}`` being the wavelength on three digits
POINTING_COLUMNS = ("T_START", "T_STOP", "A_{w}_X0", "A_{w}_Y0", "A_{w}_IMSCALE",
                    "A_{w}_INSTROT")  # fmt: skip
#: channels whose ``WAVE_STR`` has no ``_THIN`` suffix
_NO_FILTER_SUFFIX = (1600, 1700, 4500)
#: shape of the frames the pointing table describes
FULL_FRAME = (4096, 4096)


def _name(source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the table given"


def read_table(source, columns: Sequence[str], option: str):
    """A table from a local file (any format ``astropy.io.ascii.read`` guesses) or as given.

    Raises
    ------
    InputError
        If the file cannot be read or a column in ``columns`` is missing (naming ``option``).
    """
    from astropy.table import Table

    if isinstance(source, (str, os.PathLike)):
        from astropy.io import ascii as astropy_ascii

        try:
            table = astropy_ascii.read(os.fspath(source))
        except (OSError, ValueError, astropy_ascii.InconsistentTableError) as err:
            raise InputError(f"{option}={_name(source)}: cannot read it as a table: {err}") from err
    elif isinstance(source, Table):
        table = source
    else:
        raise InputError(
            f"{option}: give the path of a local table file or an astropy Table, not "
            f"{type(source).__name__}"
        )
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        raise InputError(
            f"{option}={_name(source)}: column(s) {missing} are missing; it must be in aiapy's "
            f"format (columns {list(columns)})"
        )
    return table


def _values(column) -> np.ndarray:
    """Plain numbers of a column (Quantities and masked values as NaN)."""
    values = getattr(column, "value", column)
    if np.ma.isMaskedArray(values):
        values = values.astype(float).filled(np.nan)
    return np.asarray(values, dtype=float)


def _times(column) -> np.ndarray:
    """A time column (astropy Time or ISO strings, ``Z`` allowed) as datetime64[ns], UTC."""
    from astropy.time import Time

    if not isinstance(column, Time):
        text = [str(v).strip().rstrip("Z").replace("_UTC", "") for v in np.asarray(column)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # erfa warns about dates past the leap-second table
            column = Time(text, scale="utc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(column.utc.datetime64, "datetime64[ns]")


def _span(start: np.ndarray, stop: np.ndarray) -> str:
    return f"{np.datetime_as_string(start.min(), 's')} - {np.datetime_as_string(stop.max(), 's')}"


def degradation(table, wavelength: int, times, *, url=None, name: str | None = None) -> np.ndarray:
    """Degradation factors of channel ``wavelength`` at ``times`` (divide the images by them).

    Parameters
    ----------
    table : path or astropy Table
        Correction table in aiapy's format (see the module docstring).
    wavelength : int
        Channel (angstrom).
    times : array of datetime64
        Observation times (UTC).
    url : sequence of str, optional
        The files of ``times``, named in errors.
    name : str, optional
        The table's name in errors (default: its path).

    Raises
    ------
    InputError
        If the table has no row for the channel, or a time falls outside every epoch (naming
        the table, the time and the file).
    """
    name = name or f"correct_degradation={_name(table)}"
    table = read_table(table, CORRECTION_COLUMNS, "correct_degradation")
    suffix = "" if int(wavelength) in _NO_FILTER_SUFFIX else "_THIN"
    wave = f"{int(wavelength)}{suffix}"
    rows = np.flatnonzero(np.char.strip(np.asarray(table["WAVE_STR"], str)) == wave)
    if rows.size == 0:
        raise InputError(f"{name}: the degradation table has no row with WAVE_STR {wave!r}")
    rows = rows[np.argsort(_times(table["DATE"][rows]), kind="stable")]
    start, stop = _times(table["T_START"][rows]), _times(table["T_STOP"][rows])
    area = _values(table["EFF_AREA"][rows])
    p = [_values(table[f"EFFA_P{k}"][rows]) for k in (1, 2, 3)]
    times = np.asarray(times, "datetime64[ns]")
    out = np.empty(times.size)
    for k, t in enumerate(times):
        inside = np.flatnonzero((start <= t) & (t < stop))
        if inside.size == 0:
            where = f" ({url[k]})" if url is not None else ""
            raise InputError(
                f"{name}: the degradation table has no {wave} epoch for "
                f"{np.datetime_as_string(t, 's')}{where} (it covers {_span(start, stop)}): "
                "give a newer table"
            )
        e = inside[-1]
        dt = (t - start[e]) / np.timedelta64(86400, "s")
        out[k] = area[e] / area[0] * (1.0 + p[0][e] * dt + p[1][e] * dt**2 + p[2][e] * dt**3)
    return out


def pointing(
    table, wavelength: int, time, header, *, url: str, shape, name: str | None = None
) -> dict[str, float]:
    """The updated ``CRPIX1/2``, ``CDELT1/2`` and ``CROTA2`` of one full frame.

    Parameters
    ----------
    table : path or astropy Table
        Master pointing table in aiapy's format (see the module docstring).
    wavelength : int
        Channel (angstrom).
    time : datetime64
        The frame's ``T_OBS`` (UTC).
    header : mapping-like with ``get``
        The frame's header (``SAT_ROT``, and the values kept where the table has NaN).
    url : str
        The frame's file, named in errors.
    shape : (ny, nx)
        The frame's shape (must be 4096x4096).
    name : str, optional
        The table's name in errors (default: its path).

    Raises
    ------
    InputError
        A frame that is not a full 4096x4096 image, or a time outside the table.
    FITSFormatError
        A frame without ``SAT_ROT``.
    """
    if tuple(shape) != FULL_FRAME:
        raise InputError(
            f"{url}: pointing_table describes full 4096x4096 level-1 frames; this frame is "
            f"{shape[1]}x{shape[0]}: pass pointing_table=None for cutouts"
        )
    name = name or f"pointing_table={_name(table)}"
    w = f"{int(wavelength):03d}"
    columns = [c.format(w=w) for c in POINTING_COLUMNS]
    table = read_table(table, columns, "pointing_table")
    start, stop = _times(table["T_START"]), _times(table["T_STOP"])
    t = np.datetime64(time, "ns")
    inside = np.flatnonzero((start <= t) & (t < stop))
    if inside.size == 0:
        raise InputError(
            f"{name}: no row covers T_OBS {np.datetime_as_string(t, 's')} of {url} "
            f"(the table covers {_span(start, stop)}): give a table for that date"
        )
    row = inside[0]
    x0, y0, scale, instrot = (float(_values(table[c])[row]) for c in columns[2:])
    sat_rot = header.get("SAT_ROT")
    if sat_rot is None or sat_rot == "":
        raise FITSFormatError(f"{url}: header key SAT_ROT is missing: the pointing update needs it")
    new = {"CRPIX1": x0 + 1.0, "CRPIX2": y0 + 1.0, "CDELT1": scale, "CDELT2": scale,
           "CROTA2": instrot + float(sat_rot)}  # fmt: skip
    missing = [k for k, v in new.items() if np.isnan(v)]
    unknown = [k for k in missing if header.get(k) is None]
    if unknown:
        raise InputError(
            f"{name}: no value for {unknown} at {np.datetime_as_string(t, 's')} and {url} has "
            "none in its header either: use a complete table row"
        )
    keep = {k: float(header.get(k)) for k in missing}
    if keep:
        warnings.warn(
            f"{url}: pointing_table has no value for {sorted(keep)} at "
            f"{np.datetime_as_string(t, 's')}; the header's are kept",
            stacklevel=2,
        )
    return {**new, **keep}
