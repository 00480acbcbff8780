"""TESS TCE cutouts: catalog → camera/CCD offline → batched cube cutouts → lightkurve-ready TPFs."""

from cloudlab.cutouts.cutout import cutout_wcs, make_cutouts
from cloudlab.cutouts.locate import locate
from cloudlab.cutouts.photometry import aperture_photometry
from cloudlab.cutouts.tpf import write_tpfs

__all__ = ["aperture_photometry", "cutout_wcs", "locate", "make_cutouts", "write_tpfs"]
