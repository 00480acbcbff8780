"""BackDrop: TESS FFI scattered-light background models (tess-backdrop's model, solved fast).

``fit`` builds a lazy graph that fits every frame of an FFI stack; ``evaluate`` gives the
background on any pixel grid; ``subtract`` removes it from cutouts and ``correct_tpf`` from a
target pixel file; ``save``/``load`` write and read weights as tess-backdrop-layout FITS or zarr.
"""

from cloudlab.backdrop.evaluate import evaluate, frame_index, subtract
from cloudlab.backdrop.fit import fit
from cloudlab.backdrop.io import load, load_fits, load_zarr, save, save_fits, save_zarr
from cloudlab.backdrop.tpf import correct_tpf
from cloudlab.tess_detector import ccd_to_science, science_to_ccd

__all__ = [
    "ccd_to_science",
    "correct_tpf",
    "evaluate",
    "fit",
    "frame_index",
    "load",
    "load_fits",
    "load_zarr",
    "save",
    "save_fits",
    "save_zarr",
    "science_to_ccd",
    "subtract",
]
