"""SExtractor catalogues of galaxy tiles (FITS_LDAC or plain FITS tables) as astropy tables.

The galaxy cut stacks DRE fits are made by :func:`cloudlab.dre.open_cuts`.
"""

from __future__ import annotations

import io
import warnings

from astropy.io import fits
from astropy.table import Table, vstack
from astropy.utils.exceptions import AstropyWarning

from cloudlab.errors import FITSFormatError
from cloudlab.storage import read_bytes

__all__ = ["read_catalog"]


def read_catalog(url: str, *, storage_options: dict | None = None) -> Table:
    """Read a SExtractor catalogue: all ``LDAC_OBJECTS`` HDUs of a FITS_LDAC file, vstacked,
    or the first table HDU of a plain FITS table.

    Parameters
    ----------
    url : str
        fsspec URL of the catalogue.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    FITSFormatError
        For a file that is not FITS, or has no catalogue table; the message names the file.
    """
    data = read_bytes(url, storage_options=storage_options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)  # truncation is raised below
            with fits.open(io.BytesIO(data)) as hdul:
                ldac = [Table(h.data) for h in hdul if h.name == "LDAC_OBJECTS"]
                tables = [Table(h.data) for h in hdul if isinstance(h, fits.BinTableHDU)]
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise FITSFormatError(
            f"{url}: not a readable FITS catalogue, truncated or not FITS ({err}); "
            "rerun SExtractor on the tile"
        ) from err
    if ldac:
        return vstack(ldac) if len(ldac) > 1 else ldac[0]
    if not tables:
        raise FITSFormatError(
            f"{url}: no LDAC_OBJECTS or binary-table HDU; give a SExtractor catalogue "
            "(CATALOG_TYPE FITS_LDAC or FITS_1.0)"
        )
    return tables[0]
