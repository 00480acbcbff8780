"""Domain readers: TESS cubes and FFIs, AIA stacks, catalogs, light curves → xarray / pandas."""
