"""Domain readers: TESS cubes and FFIs, AIA stacks, catalogs, light curves → xarray / pandas.

Import the reader modules themselves (``from cloudlab.io import catalogs``); this package
re-exports nothing, so importing one reader does not import the others.
"""

__all__: list[str] = []
