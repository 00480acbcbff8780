"""AIA time-lag analysis: FFT cross-correlation maps between channels, lazy and distributed."""

from cloudlab.timelag.maps import (
    HOT_TO_COOL,
    cross_correlation,
    default_pairs,
    max_correlation_map,
    timelag_map,
    timelag_maps,
)
from cloudlab.timelag.output import plot_maps, to_map, write_fits, write_zarr

__all__ = [
    "HOT_TO_COOL",
    "cross_correlation",
    "default_pairs",
    "max_correlation_map",
    "timelag_map",
    "timelag_maps",
    "plot_maps",
    "to_map",
    "write_fits",
    "write_zarr",
]
