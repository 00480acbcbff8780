"""BackDrop: TESS FFI scattered-light background models (tess-backdrop's model, solved fast).

``fit`` builds a lazy graph that fits every frame of an FFI stack; ``evaluate`` gives the
background on any pixel grid; ``subtract`` removes it from cutouts and ``correct_tpf`` from a
target pixel file; ``write_weights`` and ``read_weights`` write and read weights as
tess-backdrop-layout FITS or zarr (``save``/``load``: deprecated aliases).
"""

from cloudlab.backdrop.evaluate import evaluate, frame_index, subtract
from cloudlab.backdrop.fit import check_parameters, fit
from cloudlab.backdrop.io import (
    load,
    read_masks_fits,
    read_weights,
    read_weights_fits,
    read_weights_zarr,
    save,
    write_masks_fits,
    write_weights,
    write_weights_fits,
    write_weights_zarr,
)
from cloudlab.backdrop.tpf import correct_tpf
from cloudlab.tess_detector import ccd_to_science, science_to_ccd

__all__ = [
    "ccd_to_science",
    "check_parameters",
    "correct_tpf",
    "evaluate",
    "fit",
    "frame_index",
    "load",
    "read_masks_fits",
    "read_weights",
    "read_weights_fits",
    "read_weights_zarr",
    "save",
    "science_to_ccd",
    "subtract",
    "write_masks_fits",
    "write_weights",
    "write_weights_fits",
    "write_weights_zarr",
]
