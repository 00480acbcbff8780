"""End to end with the cutouts workflow: simulated sector -> fit FFIs -> subtract from cutouts."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd

from cloudlab import backdrop
from cloudlab.cutouts import make_cutouts
from cloudlab.io.tess import open_ffis
from cloudlab.simulate import tess_sector


def test_subtract_on_make_cutouts_output(tmp_path):
    sim = tess_sector(str(tmp_path), ccd=2, n_frames=5, shape=(140, 150), seed=6)
    ffis = open_ffis(sim.ffi_urls)
    assert (ffis.attrs["image_row_offset"], ffis.attrs["image_column_offset"]) == (
        sim.layout.science_rows.start,
        sim.layout.science_cols.start,
    )
    pixels = np.array([[60.3, 50.2], [20.0, 100.0]])  # (column, row) image pixels
    ra, dec = sim.wcs.all_pix2world(pixels, 0).T
    targets = pd.DataFrame({"ticid": [1, 2], "ra": ra, "dec": dec})
    with dask.config.set(scheduler="sync"):
        weights = backdrop.fit(ffis, nknots=10).compute()
        cutouts = make_cutouts(targets, cube_url=sim.cube_url, size=8).compute()
        out = backdrop.subtract(cutouts, weights).compute()
    truth = sim.background()  # (time, image row, image column), 0 off the science area
    row_off, col_off = sim.layout.science_rows.start, sim.layout.science_cols.start
    for k in range(2):
        r0 = int(cutouts["corner_row"].values[k])
        c0 = int(cutouts["corner_column"].values[k])
        bkg = out["background"].values[k]
        rows = np.arange(r0, r0 + 8) - row_off
        cols = np.arange(c0, c0 + 8) - col_off
        np.testing.assert_allclose(bkg, backdrop.evaluate(weights, rows, cols).values, atol=1e-9)
        assert np.median(np.abs(bkg - truth[:, r0 : r0 + 8, c0 : c0 + 8])) < 2.0, k
    np.testing.assert_allclose(
        out["flux"].values, cutouts["flux"].values - out["background"].values, atol=1e-3
    )
