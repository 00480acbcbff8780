"""Lazy FITS core: headers from ranged reads, dask arrays whose chunks read only their bytes.

Modules, bottom to top:

- :mod:`~cloudlab.fits.sources`: byte sources (ranged reads, gzip streams);
- :mod:`~cloudlab.fits.header`: card parsing, :class:`HDUInfo`, the HDU walk and header cache;
- :mod:`~cloudlab.fits.regions`: index normalisation, byte-range planning and merging, scaling,
  :func:`read_region` and the batched multi-box :func:`read_regions` (the one path from FITS
  bytes to numbers);
- :mod:`~cloudlab.fits.tables`: :func:`read_table`, :func:`read_headers`, parallel header scans;
- :mod:`~cloudlab.fits.arrays`: :func:`open_hdu`, :func:`open_stack` and their array-likes;
- :mod:`~cloudlab.fits.codecs`: numcodecs codecs of FITS scaling and tile compression
  (registered on import);
- :mod:`~cloudlab.fits.references`: :func:`references`, virtual Zarr (kerchunk) references.

Public API (see ``docs/architecture.md``): :class:`HDUInfo`, :func:`hdu_info`, :func:`open_hdu`,
:func:`read_region`, :func:`read_regions`, :func:`open_stack`, :func:`read_headers`,
:func:`read_table`, :func:`header_int`, :func:`references`, :func:`write_references`.

``import cloudlab.fits`` registers the ``cloudlab.fits_scale`` and ``cloudlab.fits_tile`` codecs
with numcodecs, which zarr needs to read references to scaled or tile-compressed images.
"""

from __future__ import annotations

from cloudlab.fits.arrays import default_dims, open_hdu, open_stack
from cloudlab.fits.codecs import FITSScale, FITSTile
from cloudlab.fits.header import (
    FITSError,
    HDUInfo,
    cache_records,
    clear_cache,
    hdu_info,
    hdu_infos,
    hdu_records,
    header_int,
    with_header,
)
from cloudlab.fits.references import references, write_references
from cloudlab.fits.regions import read_region, read_regions
from cloudlab.fits.tables import read_headers, read_table

__all__ = [
    "FITSError",
    "FITSScale",
    "FITSTile",
    "HDUInfo",
    "cache_records",
    "clear_cache",
    "default_dims",
    "hdu_info",
    "hdu_infos",
    "hdu_records",
    "header_int",
    "open_hdu",
    "open_stack",
    "read_headers",
    "read_region",
    "read_regions",
    "read_table",
    "references",
    "with_header",
    "write_references",
]
