"""cloudlab: archive-scale astronomy in the cloud with lazy FITS-backed dask/xarray arrays."""

__version__ = "0.1.0"
