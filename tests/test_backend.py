"""numpy/CuPy dispatch."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from cloudlab.backend import array_module, asnumpy, gpu_available, to_cpu, to_gpu


def test_numpy_arrays_dispatch_to_numpy():
    assert array_module(np.zeros(3)) is np
    assert array_module(da.zeros(3, chunks=1)) is np
    np.testing.assert_array_equal(asnumpy(np.arange(3)), [0, 1, 2])


def test_to_cpu_keeps_values():
    x = da.arange(10, chunks=3)
    np.testing.assert_array_equal(to_cpu(x).compute(), np.arange(10))


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_to_gpu_without_gpu_says_what_is_missing():
    with pytest.raises(RuntimeError, match="No usable GPU"):
        to_gpu(da.zeros(3, chunks=1))


@pytest.mark.gpu
def test_round_trip_through_gpu():
    import cupy

    x = da.arange(12, chunks=4, dtype="f4")
    on_gpu = to_gpu(x)
    assert array_module(on_gpu) is cupy
    assert array_module(on_gpu.blocks[0].compute()) is cupy
    np.testing.assert_array_equal(to_cpu(on_gpu * 2).compute(), np.arange(12) * 2)


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_missing_gpu_is_an_external_tool_error():
    from cloudlab.errors import CloudlabError, ExternalToolError

    with pytest.raises(ExternalToolError, match="cloudlab\\[gpu\\]") as info:
        to_gpu(da.zeros(3, chunks=1))
    assert isinstance(info.value, CloudlabError)
