"""Faults: a worker killed mid-computation, the S3 emulator restarted mid-read."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import threading
import time

import dask
import numpy as np
import s3fs
from astropy.io import fits

from cloudlab import _tasks
from cloudlab.cluster import connect
from cloudlab.fits import open_hdu, open_stack
from cloudlab.storage import resolve
from cloudlab.testing.objectstore import free_port


def test_killed_worker_mid_stack_computation_gives_exact_result(tmp_path):
    rng = np.random.default_rng(1)
    planes = rng.normal(size=(16, 48, 40)).astype(">f4")
    paths = []
    for i, plane in enumerate(planes):
        path = tmp_path / f"frame{i:02d}.fits"
        fits.PrimaryHDU(plane).writeto(path)
        paths.append(str(path))
    stack = open_stack(paths, dim="frame")
    sums = stack.data.map_blocks(_tasks.slow_plane_sum, 0.2, chunks=(1, 1, 1), dtype="f8").ravel()
    client = connect("local", n_workers=2)
    try:
        pids = list(client.run(os.getpid).values())
        future = client.compute(sums)

        def kill_one() -> None:
            time.sleep(0.8)
            os.kill(pids[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_one)
        killer.start()
        result = future.result(timeout=180)
        killer.join()
        np.testing.assert_array_equal(result, planes.astype("f8").sum(axis=(1, 2)))
        assert pids[0] not in client.run(os.getpid).values()
    finally:
        client.close()


class TcpForwarder:
    """A loopback TCP forwarder in front of the S3 emulator that can be taken down and brought back
    (the storage endpoint disappearing mid-read, while the emulator keeps its objects).

    Taken down, it cuts the open connections and resets the next ``n`` connection attempts at
    once; then it forwards again.  Counting attempts instead of waiting a fixed time makes the
    outage certain to be seen however slowly the reader gets to it.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.server: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.to_reset = 0
        self.resets = 0

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def close(self) -> None:
        assert self.server is not None
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.server.close()
        self._cut()

    def take_down(self, attempts: int) -> None:
        """Cut the open connections and reset the next ``attempts`` connections."""
        self.to_reset = attempts
        self._cut()

    def _cut(self) -> None:
        for sock in self.connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.connections.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self.to_reset > 0:
                self.to_reset -= 1
                self.resets += 1
                # SO_LINGER 0: close() sends RST, as an endpoint that is not there
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_storage_endpoint_down_mid_read_is_retried(
    s3_server, s3_bucket, tmp_path, caplog, monkeypatch
):
    data = (np.arange(400 * 500) % 30000).astype(">i2").reshape(400, 500)
    local = tmp_path / "img.fits"
    fits.PrimaryHDU(data).writeto(local)
    forwarder = TcpForwarder(s3_server.port)
    forwarder.start()
    options = {  # s3fs's and botocore's own retries off, so cloudlab's retry is what is tested
        "endpoint_url": f"http://127.0.0.1:{forwarder.port}",
        "skip_instance_cache": True,
        "config_kwargs": {"retries": {"total_max_attempts": 1}},
    }
    url = f"s3://{s3_bucket}/img.fits"
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    fs, path = resolve(url, storage_options=options)
    fs.put(str(local), path)
    image = open_hdu(url, storage_options=options)  # headers read while the endpoint is up

    forwarder.take_down(attempts=4)
    with (
        dask.config.set({"cloudlab.storage-retries": 10, "cloudlab.storage-backoff": 0.2}),
        caplog.at_level(logging.WARNING, logger="cloudlab.storage"),
    ):
        region = image[300:310, 5:45].compute(scheduler="sync")
    forwarder.close()
    np.testing.assert_array_equal(region.values, data[300:310, 5:45])
    assert forwarder.resets == 4
    # aiohttp retries a request once on a fresh connection when a pooled one fails, so
    # four resets reach cloudlab.storage.retry at least twice
    assert caplog.text.count("transient error") >= 2
