"""AIA time-lag analysis: FFT cross-correlation maps between channels, lazy and distributed."""

from cloudlab.timelag.maps import (
    HOT_TO_COOL,
    cross_correlation,
    default_pairs,
    max_correlation_map,
    timelag_map,
    timelag_maps,
)

__all__ = [
    "HOT_TO_COOL",
    "cross_correlation",
    "default_pairs",
    "max_correlation_map",
    "timelag_map",
    "timelag_maps",
]
