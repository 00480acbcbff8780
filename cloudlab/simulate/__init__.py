"""Seeded synthetic data with known truth: one simulator per workflow's input, re-exported here."""

from cloudlab.simulate.aia import aia_series
from cloudlab.simulate.ffis import ffi_stack
from cloudlab.simulate.galaxies import galaxy_tile
from cloudlab.simulate.lightcurves import lightcurves
from cloudlab.simulate.tess import tess_sector
from cloudlab.simulate.vetting import vetting_sector

__all__ = ["aia_series", "ffi_stack", "galaxy_tile", "lightcurves", "tess_sector", "vetting_sector"]
