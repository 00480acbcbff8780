"""Issue 11, cutouts: catalogs in the shapes people have, damaged TPFs, no network."""

from __future__ import annotations

import errno
import logging
import socket

import pytest

from cloudlab import storage
from cloudlab.errors import StorageError


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_refused_and_dns_errors_are_not_transient() -> None:
    assert not storage.is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert not storage.is_transient(socket.gaierror(-2, "Name or service not known"))
    wrapped = OSError("could not connect")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert not storage.is_transient(wrapped)
    assert storage.is_transient(ConnectionResetError())  # a dropped connection is retried


def test_unreachable_s3_fails_without_retries(monkeypatch, caplog) -> None:
    pytest.importorskip("s3fs")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with caplog.at_level(logging.WARNING, logger="cloudlab.storage"):
        with pytest.raises(StorageError) as info:
            storage.read_bytes("s3://bucket/cube.fits")
    assert endpoint in str(info.value)
    assert "s3://bucket/cube.fits" in str(info.value)
    retries = [r for r in caplog.records if "transient error" in r.getMessage()]
    assert retries == []  # main retried 5 times (with backoff) before giving up
