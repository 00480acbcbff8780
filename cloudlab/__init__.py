"""cloudlab: archive-scale astronomy in the cloud with lazy FITS-backed dask/xarray arrays."""

from cloudlab.cluster import connect

__all__ = ["connect"]
__version__ = "0.1.0"
