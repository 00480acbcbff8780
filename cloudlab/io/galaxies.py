"""SExtractor catalogues of galaxy tiles (FITS_LDAC or plain FITS tables) as astropy tables.

The galaxy cut stacks DRE fits are made by :func:`cloudlab.dre.open_cuts`.
"""

from __future__ import annotations

import io

from astropy.io import fits
from astropy.table import Table, vstack

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
    """
    with fits.open(io.BytesIO(read_bytes(url, storage_options=storage_options))) as hdul:
        ldac = [Table(h.data) for h in hdul if h.name == "LDAC_OBJECTS"]
        if ldac:
            return vstack(ldac) if len(ldac) > 1 else ldac[0]
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
        if not tables:
            raise FITSFormatError(
                f"{url}: no LDAC_OBJECTS or binary-table HDU; give a SExtractor catalogue "
                "(CATALOG_TYPE FITS_LDAC or FITS_1.0)"
            )
        return Table(tables[0].data)
