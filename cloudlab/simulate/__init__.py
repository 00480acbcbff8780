from cloudlab.simulate.aia import aia_series
from cloudlab.simulate.tess import tess_sector
from cloudlab.simulate.galaxies import galaxy_tile
from cloudlab.simulate.lightcurves import lightcurves
from cloudlab.simulate.ffis import ffi_stack
