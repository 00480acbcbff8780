"""Seeded synthetic data with known truth, re-exported here (one line per simulator; keep the
``noqa`` so that ruff accepts the re-export)."""

from cloudlab.simulate.aia import aia_series  # noqa: F401
from cloudlab.simulate.ffis import ffi_stack  # noqa: F401
from cloudlab.simulate.galaxies import galaxy_tile  # noqa: F401
from cloudlab.simulate.lightcurves import lightcurves  # noqa: F401
from cloudlab.simulate.tess import tess_sector  # noqa: F401
