"""BackDrop on a distributed cluster reading frames from the S3 emulator."""

from __future__ import annotations

import dask
import numpy as np

from cloudlab import backdrop
from cloudlab.io.tess import open_ffis
from cloudlab.simulate.ffis import ffi_stack


def test_fit_on_cluster_from_s3_equals_local(s3_bucket, local_client):
    url = f"s3://{s3_bucket}/ffis"
    ffi_stack(url, n_frames=4, shape=(96, 96), seed=8, ccd=4)
    ffis = open_ffis(f"{url}/*.fits")
    assert ffis.sizes["time"] == 4
    lazy = backdrop.fit(ffis, nknots=8, frames_per_batch=2)
    on_cluster = local_client.compute(lazy).result()
    with dask.config.set(scheduler="sync"):
        local = lazy.compute()
    rows, cols = ffis.row.values, ffis.column.values
    np.testing.assert_allclose(
        backdrop.evaluate(on_cluster, rows, cols).values,
        backdrop.evaluate(local, rows, cols).values,
        atol=1e-6,
    )
    out = f"{url}/weights.fits"
    backdrop.save(on_cluster, out)
    again = backdrop.load(out)
    np.testing.assert_allclose(again["poly_w"].values, on_cluster["poly_w"].values)
