"""Outputs are never lost, stale or misreported: interrupted writes, stale temporaries, stale
timelag pair files, and the cluster options of the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cloudlab import storage
from cloudlab.errors import OverwriteError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    """Compute in this process (a session's gateway client may still be dask's default)."""
    import dask

    with dask.config.set(scheduler="threads"):
        yield


SLOW_COMMAND = '''
"""A cloudlab sub-command that writes a zarr store from a slow dask graph."""
import dask.array as da
import xarray as xr

from cloudlab import _tasks, storage
from cloudlab.commands._common import add_cluster_argument, cluster_context


def register(subparsers):
    parser = subparsers.add_parser("slow-write")
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.3)
    add_cluster_argument(parser)
    parser.set_defaults(func=run)


def run(args):
    planes = da.ones((24, 4, 4), chunks=(1, 4, 4))
    sums = planes.map_blocks(_tasks.slow_plane_sum, args.delay, chunks=(1, 1, 1), dtype="f8")
    with cluster_context(args):
        storage.write_zarr(xr.Dataset({"s": (("t", "y", "x"), sums)}), args.out, overwrite=True)
    print("written", args.out)
    return 0
'''


def _cloudlab(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``cloudlab`` (its real ``main``) in a subprocess, with the ``slow-write`` command added."""
    (tmp_path / "slowcmd.py").write_text(SLOW_COMMAND)
    code = textwrap.dedent(
        f"""
        import sys
        from cloudlab import cli
        cli.COMMAND_MODULES += ("slowcmd",)
        sys.exit(cli.main({list(args)!r}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _staging(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".partial", ".previous")))


@pytest.mark.parametrize("cluster", [[], ["--cluster", "local"]], ids=["threads", "local-cluster"])
def test_sigint_mid_write_says_interrupted_and_next_run_cleans_up(tmp_path, cluster):
    out = tmp_path / "out" / "sums.zarr"
    out.parent.mkdir()
    run = _cloudlab(tmp_path, "slow-write", str(out), *cluster)
    deadline = time.monotonic() + 120
    while not any(out.parent.glob(".sums.zarr.*.partial/s/*")):  # the store is being written
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.05)
    time.sleep(1.0)  # some chunks written, most still to come (24 x 0.3 s)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "cloudlab slow-write: interrupted"
    assert "Traceback" not in stderr
    assert not out.exists()  # nothing under the final name
    # the next run removes whatever the interrupted one left behind and writes the product
    again = _cloudlab(tmp_path, "slow-write", str(out), "--delay", "0")
    stdout, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr
    assert _staging(out.parent) == []
    sums = storage.read_zarr(str(out))["s"].values
    np.testing.assert_array_equal(sums, np.full((24, 1, 1), 16.0))  # each plane: 4 x 4 ones


def _product(value: float) -> xr.Dataset:
    return xr.Dataset({"v": ("x", np.full(5, value))})


def test_stale_zarr_staging_is_removed_by_the_next_write(tmp_path, monkeypatch):
    url = str(tmp_path / "p.zarr")
    stale = tmp_path / ".p.zarr.0123456789ab.partial"
    aside = tmp_path / ".p.zarr.ba9876543210.previous"
    other = tmp_path / ".q.zarr.0123456789ab.partial"  # another product's: not ours to remove
    for path in (stale, aside, other):
        (path / "v").mkdir(parents=True)
        (path / "v" / "0").write_bytes(b"half")
    fresh = tmp_path / ".p.zarr.fedcba987654.partial"  # a write still running in this process
    old = time.time() - 3600
    for path in (stale, stale / "v", stale / "v" / "0", aside, aside / "v", aside / "v" / "0"):
        os.utime(path, (old, old))
    monkeypatch.setattr(storage, "_RUN_STARTED", time.time() - 60)
    fresh.mkdir()
    storage.write_zarr(_product(1.0), url)
    assert _staging(tmp_path) == [fresh.name, other.name]
    np.testing.assert_array_equal(storage.read_zarr(url)["v"].values, np.ones(5))


def test_stale_write_file_temporary_is_removed(tmp_path, monkeypatch):
    stale = tmp_path / f".a.fits.{'0' * 32}.tmp"
    stale.write_bytes(b"half a file")
    monkeypatch.setattr(storage, "_RUN_STARTED", time.time() + 1)
    with storage.write_file(str(tmp_path / "a.fits")) as tmp:
        Path(tmp).write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits"]
    assert (tmp_path / "a.fits").read_bytes() == b"whole"


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_stale_staging_on_object_stores_is_removed(request, store, monkeypatch):
    bucket = request.getfixturevalue("s3_bucket" if store == "s3" else "gcs_bucket")
    url = f"{'s3' if store == 's3' else 'gs'}://{bucket}/run/p.zarr"
    fs, path = storage.resolve(url)
    staging = f"{bucket}/run/.p.zarr.0123456789ab.partial"
    fs.pipe({f"{staging}/v/0": b"half", f"{bucket}/run/.q.zarr.0123456789ab.partial/v/0": b"x"})
    monkeypatch.setattr(storage, "_RUN_STARTED", time.time() + 1)
    assert storage.stale_temporaries(url) == [staging]
    storage.write_zarr(_product(2.0), url)
    fs.invalidate_cache(f"{bucket}/run")
    names = sorted(p.rpartition("/")[2] for p in fs.ls(f"{bucket}/run", detail=False))
    assert names == [".q.zarr.0123456789ab.partial", "p.zarr"]
    np.testing.assert_array_equal(storage.read_zarr(url)["v"].values, np.full(5, 2.0))


# ------------------------------------------------------ products on the S3 and GCS emulators
class _FailingPuts:
    """Let ``n`` object uploads of an fsspec async filesystem class succeed, fail the rest."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, n: int):
        self.left = n
        original = cls._pipe_file

        async def pipe_file(fs, path, data, *args, **kwargs):
            if self.left <= 0:
                raise OSError(f"injected upload failure at {path}")
            self.left -= 1
            return await original(fs, path, data, *args, **kwargs)

        monkeypatch.setattr(cls, "_pipe_file", pipe_file)
        cls.clear_instance_cache()  # instances bind their sync methods when created


def _fs_class(url: str) -> type:
    import gcsfs
    import s3fs

    return s3fs.S3FileSystem if url.startswith("s3://") else gcsfs.GCSFileSystem


@pytest.fixture(params=["s3", "gcs"])
def bucket_url(request) -> str:
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}"
    return f"gs://{request.getfixturevalue('gcs_bucket')}"


def test_backdrop_fit_cli_writes_to_the_emulators(bucket_url, capsys):
    from cloudlab import backdrop
    from cloudlab.cli import main
    from cloudlab.io.tess import open_ffis
    from cloudlab.simulate.ffis import ffi_stack

    frames = f"{bucket_url}/ffis"
    ffi_stack(frames, n_frames=3, shape=(64, 64), seed=3, ccd=2)
    out = f"{bucket_url}/weights"
    argv = ["backdrop", "fit", "--in-dir", frames, "--out-dir", out, "--nknots", "6"]
    assert main([*argv, "--format", "both"]) == 0
    written = [line[len("wrote ") :] for line in capsys.readouterr().out.splitlines()
               if line.startswith("wrote ")]  # fmt: skip
    assert [w.rsplit(".", 1)[1] for w in written] == ["fits", "zarr"]
    expected = backdrop.fit(open_ffis(f"{frames}/*_ffic.fits*"), nknots=6).compute()
    for url in written:
        got = backdrop.read_weights(url)
        np.testing.assert_allclose(got["poly_w"].values, expected["poly_w"].values, rtol=1e-6)
    assert storage.stale_temporaries(written[1]) == []


def _chi(value: float) -> xr.Dataset:
    """A small DRE-like result: ``chi`` (galaxy, model) and ``flag`` (galaxy)."""
    chi = np.full((6, 4), value)
    return xr.Dataset(
        {"chi": (("galaxy", "model"), chi), "flag": ("galaxy", np.zeros(6, dtype="i4"))},
        coords={"galaxy": np.arange(6)},
    ).chunk({"galaxy": 1})


def _timelag(value: float, pairs: tuple[str, ...] = ("94-335",)) -> xr.Dataset:
    shape = (len(pairs), 3, 3)
    return xr.Dataset(
        {
            "timelag": (("pair", "y", "x"), np.full(shape, value), {"units": "s"}),
            "max_correlation": (("pair", "y", "x"), np.full(shape, 0.5)),
        },
        coords={"pair": list(pairs)},
    ).chunk({"y": 1})


def _writers():
    from cloudlab import backdrop, dre
    from cloudlab.timelag.output import read_zarr as read_timelag
    from cloudlab.timelag.output import write_zarr as write_timelag

    def weights(value: float) -> xr.Dataset:
        ds = xr.Dataset(
            {name: (("time", "k"), np.full((4, 3), value)) for name in backdrop.io.WEIGHT_VARS},
            attrs={"sector": 1, "camera": 1, "ccd": 1},
        )
        return ds.chunk({"time": 1})

    return {
        "backdrop": (weights, backdrop.write_weights_zarr, backdrop.read_weights_zarr, "poly_w"),
        "dre": (_chi, dre.io.write_chi_zarr, dre.io.read_chi_zarr, "chi"),
        "timelag": (_timelag, write_timelag, read_timelag, "timelag"),
    }


@pytest.mark.parametrize("workflow", ["backdrop", "dre", "timelag"])
def test_failed_upload_mid_write_keeps_the_previous_product(bucket_url, workflow, monkeypatch):
    make, write, read, name = _writers()[workflow]
    url = f"{bucket_url}/{workflow}/product.zarr"
    write(make(1.0), url, progress=False)
    np.testing.assert_array_equal(read(url)[name].values, make(1.0)[name].values)
    _FailingPuts(monkeypatch, _fs_class(url), n=3)  # the metadata and a chunk, then failures
    with pytest.raises(OSError, match="injected upload failure"):
        write(make(2.0), url, overwrite=True, progress=False)
    monkeypatch.undo()
    _fs_class(url).clear_instance_cache()
    np.testing.assert_array_equal(read(url)[name].values, make(1.0)[name].values)
    assert storage.stale_temporaries(url) == []  # the failed write removed its staging copy
    write(make(2.0), url, overwrite=True, progress=False)
    np.testing.assert_array_equal(read(url)[name].values, make(2.0)[name].values)


# ----------------------------------------------------- timelag pair files of an earlier run
@pytest.mark.parametrize("where", ["local", "s3"])
def test_timelag_rerun_never_leaves_pair_files_of_an_earlier_run(where, tmp_path, request):
    from cloudlab.timelag.output import plot_maps, read_fits, write_fits

    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    first = _timelag(1.0, ("94-335", "94-171", "171-335"))
    second = _timelag(2.0, ("171-335", "193-211"))
    fits_dir, png_dir = f"{base}/fits", f"{base}/png"
    assert len(write_fits(first, fits_dir, progress=False)) == 3
    assert len(plot_maps(first, png_dir, progress=False)) == 3
    for writer, directory, suffix in ((write_fits, fits_dir, "fits"), (plot_maps, png_dir, "png")):
        with pytest.raises(OverwriteError, match=rf"timelag_94_171\.{suffix}.*overwrite"):
            writer(_timelag(2.0, ("193-211",)), directory, progress=False)  # new pairs only
        written = writer(second, directory, overwrite=True, progress=False)
        assert written == [f"{directory}/timelag_171_335.{suffix}",
                           f"{directory}/timelag_193_211.{suffix}"]  # fmt: skip
        fs, path = storage.resolve(directory)
        fs.invalidate_cache(path)
        names = sorted(p.rpartition("/")[2] for p in fs.ls(path, detail=False))
        assert names == [f"timelag_171_335.{suffix}", f"timelag_193_211.{suffix}"]
    np.testing.assert_array_equal(read_fits(f"{fits_dir}/timelag_171_335.fits")["timelag"], 2.0)


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_staging_of_a_write_running_in_this_process_is_not_stale(request, store):
    bucket = request.getfixturevalue("s3_bucket" if store == "s3" else "gcs_bucket")
    url = f"{'s3' if store == 's3' else 'gs'}://{bucket}/run/p.zarr"
    fs, _ = storage.resolve(url)
    fs.pipe({f"{bucket}/run/.p.zarr.0123456789ab.partial/v/0": b"being written"})
    assert storage.stale_temporaries(url) == []


CLEANUP_COMMAND = """
import asyncio


def register(subparsers):
    parser = subparsers.add_parser("cleanup-fails")
    parser.add_argument("kind")
    parser.set_defaults(func=run)


def run(args):
    try:
        raise KeyboardInterrupt
    finally:  # closing a cluster after the interrupt fails in turn
        if args.kind == "error":
            raise RuntimeError("scheduler connection closed")
        raise asyncio.CancelledError()
"""


@pytest.mark.parametrize("kind", ["error", "cancelled"])
def test_a_failing_cleanup_after_sigint_still_reports_the_interrupt(
    kind, tmp_path, monkeypatch, capsys
):
    from cloudlab import cli

    (tmp_path / "cleanupcmd.py").write_text(CLEANUP_COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "cleanupcmd"))
    assert cli.main(["cleanup-fails", kind]) == 130
    assert capsys.readouterr().err.strip() == "cloudlab cleanup-fails: interrupted"
