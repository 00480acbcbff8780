"""cloudlab: archive-scale astronomy in the cloud with lazy FITS-backed dask/xarray arrays."""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "connect"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``connect`` is imported on first use, so that importing a kernel module does not pull in
    # distributed and dask_gateway.
    if name == "connect":
        from cloudlab.cluster import connect

        return connect
    raise AttributeError(f"module 'cloudlab' has no attribute {name!r}")
