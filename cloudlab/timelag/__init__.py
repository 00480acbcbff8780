"""AIA time-lag analysis: lazy registration and preparation of AIA cubes, FFT cross-correlation
maps between channels, and their products.

:func:`prepare` (from :mod:`cloudlab.timelag.register`) registers level-1 stacks onto one
helioprojective grid; :mod:`cloudlab.timelag.steps` holds the steps for cubes already on one
grid (``crop``, ``select_time``, ``align_channels``...).
"""

from cloudlab.timelag.kernels import timelag_bytes_per_pixel
from cloudlab.timelag.maps import (
    HOT_TO_COOL,
    cross_correlation,
    default_pairs,
    max_correlation_map,
    timelag_map,
    timelag_maps,
)
from cloudlab.timelag.output import plot_maps, to_map, write_fits, write_zarr
from cloudlab.timelag.register import prepare
from cloudlab.timelag.steps import (
    align_channels,
    common_time_grid,
    crop,
    drop_bad_frames,
    interpolate_to_grid,
    nominal_cadence,
    normalize_exposure,
    prepare_channels,
    select_time,
)

__all__ = [
    "HOT_TO_COOL",
    "align_channels",
    "common_time_grid",
    "crop",
    "cross_correlation",
    "default_pairs",
    "drop_bad_frames",
    "interpolate_to_grid",
    "max_correlation_map",
    "nominal_cadence",
    "normalize_exposure",
    "plot_maps",
    "prepare",
    "prepare_channels",
    "select_time",
    "timelag_bytes_per_pixel",
    "timelag_map",
    "timelag_maps",
    "to_map",
    "write_fits",
    "write_zarr",
]
