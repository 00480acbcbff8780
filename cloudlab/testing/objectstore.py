"""A loopback S3 object store and a latency/bandwidth shaper in front of it.

:class:`ObjectStore` runs `s3rver <https://github.com/jamhall/s3rver>`_ (an S3 implementation
for Node.js that keeps objects as plain files and answers requests concurrently) on 127.0.0.1.
:class:`Shaper` is a TCP proxy on 127.0.0.1 that delays the first byte of every HTTP request by a
fixed latency and limits each connection's bandwidth, so that a benchmark against it feels like
an object store in a cloud region: each request costs tens of milliseconds, and throughput comes
from having many requests in flight.  It counts requests and response bytes, so that benchmarks
can report requests per item and bytes fetched.

Install s3rver with ``make tools`` (it goes to ``.tools/`` in the repository), or point the
``CLOUDLAB_S3RVER`` environment variable at an ``s3rver`` executable.

Examples
--------
>>> with ObjectStore(tmp_dir, buckets=["data"]) as store, Shaper(store.port) as shaper:
...     options = store.storage_options(shaper.endpoint_url)
...     fits.open_hdu("s3://data/cube.fits", 1, storage_options=options)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cloudlab.errors import ExternalToolError, InputError

__all__ = [
    "ObjectStore",
    "Shaper",
    "ShaperStats",
    "aws_environment",
    "find_s3rver",
    "free_port",
    "place_object",
]

#: credentials s3rver accepts
KEY = "S3RVER"
SECRET = "S3RVER"
#: where ``make tools`` installs s3rver, relative to the repository root
TOOLS_BIN = Path(".tools") / "node_modules" / ".bin" / "s3rver"
#: HTTP methods that open a request (anything else on an idle connection is a request body)
METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ", b"OPTIONS ")
CHUNK = 256 * 1024


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call.

    Returns
    -------
    int
        The port number.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def aws_environment(endpoint_url: str, key: str, secret: str) -> Iterator[None]:
    """Point every ``s3://`` client of this process (s3fs, botocore, astropy through fsspec) at a
    loopback S3 endpoint through the ``AWS_*`` variables, and restore them afterwards.

    Parameters
    ----------
    endpoint_url : str
        The endpoint (a server's, or a :class:`Shaper`'s in front of it).
    key, secret : str
        The emulator's credentials.
    """
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict(zip(names, (endpoint_url, key, secret), strict=True)))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def find_s3rver() -> Path:
    """The ``s3rver`` executable.

    Looked for in ``$CLOUDLAB_S3RVER``, then in ``.tools/`` of the repository this package lives
    in (where ``make tools`` installs it), then on ``PATH``.

    Returns
    -------
    pathlib.Path
        Path of the executable.

    Raises
    ------
    ExternalToolError
        s3rver is not installed; the message says how to install it.
    """
    env = os.environ.get("CLOUDLAB_S3RVER")
    if env:
        if not os.access(env, os.X_OK):
            raise ExternalToolError(f"CLOUDLAB_S3RVER={env} is not an executable file")
        return Path(env)
    local = Path(__file__).resolve().parents[2] / TOOLS_BIN
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("s3rver")
    if found:
        return Path(found)
    raise ExternalToolError(
        f"s3rver (the loopback S3 server used by tests and benchmarks) was not found at {local} "
        "or on PATH: run `make tools` in the repository (it installs s3rver@3.7.1 with npm into "
        ".tools/), or set CLOUDLAB_S3RVER to an s3rver executable"
    )


def place_object(root: str | os.PathLike, bucket: str, key: str) -> Path:
    """Path at which to write an object straight into a stopped or running store's directory.

    s3rver keeps object ``KEY`` of bucket ``BUCKET`` as the file ``ROOT/BUCKET/KEY._S3rver_object``
    (a key's ``/`` are directories).  Writing there (for instance a *sparse* file, holes for the
    pixels of a full-size cube) avoids uploading it; call the returned object's sealing step,
    :meth:`ObjectStore.seal`, afterwards so that s3rver does not hash the whole file.

    Parameters
    ----------
    root : str or os.PathLike
        The store's directory (:attr:`ObjectStore.root`).
    bucket, key : str
        Bucket name and object key (``a/b/c.fits``).

    Returns
    -------
    pathlib.Path
        The object's file path; its parent directories exist.
    """
    if not bucket or "/" in bucket:
        raise InputError(f"bucket={bucket!r}: give a bucket name without '/'")
    parts = key.strip("/").split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"key={key!r}: give a key such as 'sector/cube.fits'")
    path = Path(root, bucket, *parts[:-1], f"{parts[-1]}._S3rver_object")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class ObjectStore:
    """s3rver serving a directory on 127.0.0.1, started in its own process group.

    Parameters
    ----------
    root : str or os.PathLike
        Directory of the objects (created if missing).
    buckets : sequence of str, optional
        Buckets to create at start.
    port : int, optional
        TCP port; a free one by default.
    timeout : float, optional
        Seconds to wait for the server to answer at start.

    Attributes
    ----------
    root : pathlib.Path
        The objects' directory.
    port : int
        The server's port.
    endpoint_url : str
        ``http://127.0.0.1:PORT``.
    key, secret : str
        Credentials the server accepts.

    Raises
    ------
    ExternalToolError
        s3rver is not installed, exits at start or does not answer within ``timeout``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        buckets: tuple[str, ...] | list[str] = (),
        port: int | None = None,
        timeout: float = 60.0,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.key, self.secret = KEY, SECRET
        self.log = self.root.parent / f"s3rver-{self.port}.log"
        binary = find_s3rver()
        for bucket in buckets:
            (self.root / bucket).mkdir(exist_ok=True)
        args = [str(binary), "-a", "127.0.0.1", "-p", str(self.port), "-d", str(self.root)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace")[-2000:]
                raise ExternalToolError(
                    f"s3rver exited with status {self.process.returncode} at start on port "
                    f"{self.port}; its output:\n{log}"
                )
            try:
                with urllib.request.urlopen(self.endpoint_url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (an anonymous ListBuckets is refused with 403)
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ExternalToolError(f"s3rver on port {self.port} did not answer within {timeout} s")

    def storage_options(self, endpoint_url: str | None = None) -> dict:
        """fsspec/s3fs keyword arguments for ``s3://`` URLs served here.

        Parameters
        ----------
        endpoint_url : str, optional
            Endpoint to go through (a :class:`Shaper`'s); this server's by default.

        Returns
        -------
        dict
            ``key``, ``secret`` and ``client_kwargs={"endpoint_url": ...}``.
        """
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": endpoint_url or self.endpoint_url},
        }

    def object_path(self, bucket: str, key: str) -> Path:
        """Path of object ``key`` of ``bucket`` (see :func:`place_object`)."""
        return place_object(self.root, bucket, key)

    def seal(self, bucket: str, key: str) -> None:
        """Write the ETag and metadata files of an object written with :meth:`object_path`.

        The ETag is a hash of the file's size and modification time, not of its content (s3rver
        would otherwise read the whole file, tens of GB for a full-size cube, on first access).

        Parameters
        ----------
        bucket, key : str
            The object.
        """
        path = self.object_path(bucket, key)
        stat = path.stat()
        tag = hashlib.md5(f"{key}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        Path(f"{path}.md5").write_text(tag)
        meta = path.with_name(path.name.replace("_S3rver_object", "_S3rver_metadata.json"))
        meta.write_text(json.dumps({"content-type": "application/octet-stream"}))

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 10 s)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ShaperStats:
    """What went through a :class:`Shaper`.

    Attributes
    ----------
    requests : collections.Counter
        HTTP requests per method (``"GET"``, ``"HEAD"``, ...).
    body_bytes : int
        Bytes of response bodies (what the client asked for, without HTTP headers).
    wire_bytes : int
        All bytes sent to clients, headers included.
    connections : int
        TCP connections accepted.
    """

    requests: Counter = field(default_factory=Counter)
    body_bytes: int = 0
    wire_bytes: int = 0
    connections: int = 0

    @property
    def total_requests(self) -> int:
        """Requests of every method."""
        return sum(self.requests.values())


class _Response:
    """Splits a server's byte stream into HTTP response headers and bodies (for counting)."""

    def __init__(self, shaper: Shaper, methods: list[str]):
        self.shaper = shaper
        self.methods = methods  # methods of requests not yet answered, oldest first
        self.head = b""
        self.remaining: int | None = 0  # body bytes left; None: until the next request
        self.in_body = False

    def feed(self, data: bytes) -> None:
        while data:
            if self.in_body:
                take = len(data) if self.remaining is None else min(len(data), self.remaining)
                self.shaper.stats.body_bytes += take
                data = data[take:]
                if self.remaining is not None:
                    self.remaining -= take
                    if self.remaining == 0:
                        self.in_body = False
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[: end + 4], self.head[end + 4 :]
            self.head = b""
            self._start(head)

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 200
        if 100 <= status < 200:
            return  # interim response: the real one follows
        method = self.methods.pop(0) if self.methods else "GET"
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if method == "HEAD" or status in (204, 304):
            length = 0
        self.remaining = length
        self.in_body = length != 0


class Shaper:
    """A TCP proxy on 127.0.0.1 that makes a loopback server feel like a cloud object store.

    Every HTTP request's first byte is held back ``latency`` seconds before it is forwarded (a
    request starts when a client sends a request line on a connection), and each connection's
    bytes flow at most at ``bandwidth`` bytes/s in each direction.  Connections are not limited
    in number.  The proxy runs an asyncio event loop in a background thread.

    Parameters
    ----------
    port : int
        Port of the server on 127.0.0.1 to forward to.
    latency : float, optional
        Seconds added once per request (time to first byte); 30 ms by default.
    bandwidth : float or None, optional
        Bytes/s per connection and direction; 80 MB/s by default; None for unlimited.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT`` of the proxy.
    stats : ShaperStats
        Requests and bytes so far (:meth:`reset` clears them).
    """

    def __init__(self, port: int, *, latency: float = 0.030, bandwidth: float | None = 80e6):
        if latency < 0:
            raise InputError(f"latency={latency}: give seconds >= 0")
        if bandwidth is not None and bandwidth <= 0:
            raise InputError(f"bandwidth={bandwidth}: give bytes/s > 0, or None for unlimited")
        self.target = port
        self.latency = float(latency)
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.stats = ShaperStats()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="cloudlab-shaper", daemon=True
        )
        self._thread.start()
        started.wait()
        if self._error is not None:
            raise self._error
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        bw = "unlimited" if self.bandwidth is None else f"{self.bandwidth / 1e6:g} MB/s"
        return f"Shaper(latency={self.latency * 1e3:g} ms, bandwidth={bw} per connection)"

    def describe(self) -> str:
        """The settings in words, to print beside a benchmark's figures."""
        bw = "unlimited" if self.bandwidth is None else f"{self.bandwidth / 1e6:g} MB/s"
        return f"first-byte latency {self.latency * 1e3:g} ms/request, {bw} per connection"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            started.set()
            return
        started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        with self._lock:
            self.stats.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        state = {"idle": True}
        methods: list[str] = []
        response = _Response(self, methods)
        up = asyncio.ensure_future(self._upstream(client_r, server_w, state, methods))
        down = asyncio.ensure_future(self._downstream(server_r, client_w, state, response))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for t in (up, down):
                t.cancel()
            for writer in (client_w, server_w):
                writer.close()
                with suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _pace(self, clock: list[float], n: int) -> None:
        """Sleep so that a connection's bytes in one direction flow at ``bandwidth``."""
        if self.bandwidth is None:
            return
        now = time.monotonic()
        clock[0] = max(clock[0], now) + n / self.bandwidth
        if clock[0] > now:
            await asyncio.sleep(clock[0] - now)

    async def _upstream(self, reader, writer, state: dict, methods: list[str]) -> None:
        clock = [0.0]
        while data := await reader.read(CHUNK):
            if state["idle"] and data.startswith(METHODS):
                method = data.split(b" ", 1)[0].decode()
                with self._lock:
                    self.stats.requests[method] += 1
                methods.append(method)
                state["idle"] = False
                if self.latency:
                    await asyncio.sleep(self.latency)
            await self._pace(clock, len(data))
            writer.write(data)
            await writer.drain()
        with suppress(OSError):
            writer.write_eof()

    async def _downstream(self, reader, writer, state: dict, response: _Response) -> None:
        clock = [0.0]
        while data := await reader.read(CHUNK):
            state["idle"] = True
            with self._lock:
                self.stats.wire_bytes += len(data)
                response.feed(data)
            await self._pace(clock, len(data))
            writer.write(data)
            await writer.drain()

    def reset(self) -> ShaperStats:
        """Clear the counters.

        Returns
        -------
        ShaperStats
            The counters before clearing.
        """
        with self._lock:
            old, self.stats = self.stats, ShaperStats()
        return old

    def snapshot(self) -> ShaperStats:
        """A copy of the counters now."""
        with self._lock:
            s = self.stats
            return ShaperStats(Counter(s.requests), s.body_bytes, s.wire_bytes, s.connections)

    def stop(self) -> None:
        """Close the proxy and its connections and end its thread."""
        if not self._thread.is_alive():
            return

        async def close() -> None:
            self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self._loop)
        self._thread.join(10)

    def __enter__(self) -> Shaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
