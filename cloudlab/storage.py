"""Storage: any fsspec URL or local path, with cloudlab defaults, batched ranged reads, retries.

Defaults applied by :func:`resolve` (lowest to highest priority):

1. built-in defaults per protocol:

   * ``s3``: anonymous access unless credentials (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
     ``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_WEB_IDENTITY_TOKEN_FILE``, ``~/.aws/credentials``)
     or an endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) are configured; the
     endpoint is passed on;
   * ``gs`` / ``gcs``: token ``"anon"`` unless ``GOOGLE_APPLICATION_CREDENTIALS`` is set; the
     emulator in ``STORAGE_EMULATOR_HOST`` is used by gcsfs itself;

2. dask config ``cloudlab.storage.<protocol>`` (a mapping of filesystem keyword arguments);
3. the ``storage_options`` given by the caller.

Transient errors (connection resets, timeouts, HTTP 5xx/429) are retried with exponential backoff;
missing files and permission errors are raised at once.

Writing products: one overwrite policy
--------------------------------------
Every product cloudlab writes goes through :func:`write_zarr` (zarr stores) or :func:`write_file` /
:func:`write_bytes` (single files), and every product writer and CLI follows one rule:

* ``overwrite=False`` (the default of every product writer): if the destination exists the writer
  raises :class:`~cloudlab.errors.OverwriteError` naming it, **before any computation starts**.
  Callers that write several products call :func:`check_writable` on all their destinations
  before they build or compute anything.
* ``overwrite=True``: the previous product is replaced **only after the new one is complete**;
  if anything fails before that, the previous product is left readable and unchanged.
* A product never appears half-written under its final name:

  - single files are written to a temporary file and then renamed (local disk) or uploaded in
    one ``put`` (object stores, where one object upload is atomic);
  - zarr stores are written completely under a fresh sibling prefix
    ``.<name>.<token>.partial`` (by the workers, on a cluster). Local disk: the store is then
    renamed into place (a previous store is renamed aside first and removed last). Object stores
    (no rename): the objects are copied into place server-side, chunk data first and the
    metadata (``.zarray``/``.zattrs``/``.zgroup``/``zarr.json``, the consolidated
    ``.zmetadata`` of the root last of all), then keys of the previous product that the new one
    does not have are removed, then the staging prefix. A failure while computing or writing the
    staging copy removes it and leaves the previous product untouched; a failure while copying
    into place keeps the complete staging copy and the error names it.
* Temporaries are owned by their naming pattern: ``.<name>.<12 hex>.partial`` and
  ``.<name>.<12 hex>.previous`` beside a zarr store, ``.<name>.<32 hex>.tmp`` beside a local file.
  An interrupted run (SIGINT, a killed process, workers still writing after the client left) can
  leave one behind, never under the final name; the next write to the same destination removes
  those last modified before the current process started (:func:`stale_temporaries`).

Storage options can hold credentials: they reach filesystems, never ``attrs`` or products
(:func:`write_zarr` drops a ``storage_options`` attribute and any attribute that contains one of
the credential values given to it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

# gcsfs >= 2026.3 probes the bucket layout over gRPC on every open unless this is off; the
# variable is read when gcsfs is imported, so it must be set before anything imports it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import dask.config  # noqa: E402
import fsspec  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from cloudlab.errors import InputError, NotFoundError, OverwriteError, StorageError  # noqa: E402

__all__ = [
    "S3_BOTOCORE_RETRIES",
    "absolute",
    "atomic_write",
    "cat_ranges",
    "check_writable",
    "existing",
    "expand",
    "expand_detail",
    "file_info",
    "is_local",
    "is_transient",
    "local_path",
    "read_bytes",
    "read_zarr",
    "resolve",
    "retry",
    "stale_temporaries",
    "worker_environment",
    "write_bytes",
    "write_file",
    "write_zarr",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: when this process started writing: temporaries last modified before it belong to earlier runs
_RUN_STARTED = time.time()

#: Environment variables that configure storage access and must reach cluster workers.
STORAGE_ENV_VARS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_NO_SIGN_REQUEST",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
)

S3_BOTOCORE_RETRIES = {"total_max_attempts": 1, "mode": "standard"}
"""botocore's retry setting for S3 (``config_kwargs={"retries": ...}``): no retries inside
botocore; :func:`retry` and s3fs retry transient errors, and an endpoint that refuses connections
fails at once. Override with ``storage_options={"config_kwargs": {"retries": {...}}}``."""

_S3_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)

#: default HTTP connections per S3 filesystem (botocore's default is 10: at 30 ms a request, ~330
#: ranged reads/s however many are asked for at once); ``config_kwargs`` in storage_options wins
S3_CONNECTIONS = 64

_GLOB_CHARS = ("*", "?", "[")

_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "ProtocolError",
        "RemoteDisconnected",
        "ChunkedEncodingError",
    }
)

_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
)

_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT})

_UNREACHABLE_NAMES = frozenset({"ClientConnectorDNSError", "NameResolutionError", "gaierror"})


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts (and aiohttp's ``os_error``), without cycles."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if any(current is seen for seen in out):
            continue
        out.append(current)
        todo.extend(
            e
            for e in (current.__cause__, current.__context__, getattr(current, "os_error", None))
            if isinstance(e, BaseException)
        )
    return out


_REACHED: set[tuple[str, str]] = set()
"""Servers (protocol, endpoint or host) that answered at least once in this process."""


def _server_of(url: str) -> tuple[str, str]:
    """The server a URL is served by: its protocol and endpoint (or host)."""
    protocol = _protocol(url)
    if protocol in ("file", "local", "memory"):
        return protocol, ""
    try:
        endpoint = str(storage_options_for(url).get("endpoint_url") or "")
    except Exception:  # noqa: BLE001 - only a cache key; fall back to the host
        endpoint = ""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return protocol, endpoint or host


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the host does not exist or refuses connections (no use retrying)."""
    for current in _chain(exc):
        if isinstance(current, (ConnectionRefusedError, socket.gaierror)):
            return True
        if any(cls.__name__ in _UNREACHABLE_NAMES for cls in type(current).__mro__):
            return True
        if isinstance(current, OSError) and current.errno == errno.ECONNREFUSED:
            return True
    return False


def _protocol(url: str) -> str:
    """The first protocol of ``url`` (``"file"`` for local paths)."""
    if "://" not in url and "::" not in url:
        return "file"
    proto = fsspec.core.split_protocol(url.split("::", 1)[0])[0]
    return proto or "file"


def absolute(url: str | os.PathLike) -> str:
    """``url`` as a string that means the same file in any process: relative local paths
    become absolute (cluster workers may run in another working directory); URLs are kept."""
    url = os.fspath(url)
    if "://" in url or "::" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def is_local(url: str) -> bool:
    """Whether ``url`` is a local path or a ``file://`` URL."""
    return _protocol(url) in ("file", "local")


def _env_options(protocol: str) -> dict[str, Any]:
    """Built-in defaults for ``protocol`` derived from the environment."""
    env = os.environ
    if protocol in ("s3", "s3a"):
        opts: dict[str, Any] = {}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        has_credentials = any(env.get(v) for v in _S3_CREDENTIAL_VARS) or os.path.exists(
            os.path.expanduser("~/.aws/credentials")
        )
        opts["anon"] = not (has_credentials or endpoint)
        # botocore's own retries (5 attempts with backoff of up to seconds each, under s3fs's
        # and cloudlab's retries) turn an unreachable endpoint into a 10-15 s wait: one
        # attempt each, cloudlab's retry() and s3fs retry transient errors
        opts["config_kwargs"] = {"retries": dict(S3_BOTOCORE_RETRIES)}
        return opts
    if protocol in ("gs", "gcs"):
        if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return {}
        return {"token": "anon"}
    return {}


def storage_options_for(url: str, *, storage_options: dict | None = None) -> dict[str, Any]:
    """Effective filesystem keyword arguments for ``url``: defaults, dask config, then caller's.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    storage_options : dict, optional
        Caller's options; they take precedence.

    Returns
    -------
    dict
        Keyword arguments for the filesystem constructor; for S3, ``config_kwargs`` always holds
        ``max_pool_connections`` (:data:`S3_CONNECTIONS` unless given), so that a batched read
        keeps many ranged requests in flight.
    """
    protocol = _protocol(url)
    opts = _env_options(protocol)
    configured = dask.config.get(f"cloudlab.storage.{protocol}", default=None)
    for given in (configured, storage_options):
        if not given:
            continue
        given = dict(given)
        if protocol in ("s3", "s3a") and isinstance(given.get("config_kwargs"), dict):
            # a botocore config given keeps cloudlab's retry setting unless it sets its own
            given["config_kwargs"] = {**opts.get("config_kwargs", {}), **given["config_kwargs"]}
        opts.update(given)
    if storage_options:
        # explicit credentials switch anonymous access off unless asked for
        if protocol in ("s3", "s3a") and "anon" not in storage_options:
            if any(k in storage_options for k in ("key", "secret", "profile", "token")):
                opts["anon"] = False
    given_endpoint = (storage_options or {}).get("client_kwargs", {}).get("endpoint_url")
    if given_endpoint and "endpoint_url" not in (storage_options or {}):
        # an endpoint given in client_kwargs wins over one from the environment
        opts.pop("endpoint_url", None)
    if protocol in ("s3", "s3a"):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", S3_CONNECTIONS)
        opts["config_kwargs"] = config
    return opts


def resolve(
    url: str, *, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for any fsspec URL or local path, with cloudlab's defaults.

    Parameters
    ----------
    url : str
        Local path, ``file://``, ``s3://``, ``gs://``, ``https://``, ``memory://`` or any protocol
        registered with fsspec (chained URLs ``a::b://`` too).
    storage_options : dict, optional
        Filesystem keyword arguments; they override the defaults and dask config
        ``cloudlab.storage.<protocol>``.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
    path : str
        The path within ``fs``.
    """
    url = os.fspath(url)
    if "://" not in url and "::" not in url:
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(url))
    opts = storage_options_for(url, storage_options=storage_options)
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ValueError as exc:  # unknown protocol
        raise InputError(
            f"cannot open {url!r}: {exc}; use a local path or a protocol fsspec knows"
        ) from exc


def _unstrip(fs: fsspec.AbstractFileSystem, path: str, template: str) -> str:
    """Full URL for ``path`` on ``fs``, in the style of ``template`` (local stays local)."""
    if "://" not in template and "::" not in template:
        return path
    if "::" in template:  # chained URL: keep the chain, replace the first path
        head, tail = template.split("::", 1)
        proto = fsspec.core.split_protocol(head)[0]
        return f"{proto}://{path}::{tail}" if proto else f"{path}::{tail}"
    return fs.unstrip_protocol(path)


def expand(urls_or_glob: str | Sequence[str], *, storage_options: dict | None = None) -> list[str]:
    """Expand a URL, a glob or a list of them into a list of full URLs.

    Parameters
    ----------
    urls_or_glob : str or sequence of str
        A single URL, a glob pattern (``*``, ``?``, ``[``), or a list of URLs/globs.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    list of str
        Full URLs with their protocol kept (local paths stay absolute paths). A glob expands to
        its sorted matches; an explicit list keeps its order.

    Raises
    ------
    FileNotFoundError
        A glob matches nothing.
    """
    return [url for url, _ in expand_detail(urls_or_glob, storage_options=storage_options)]


def expand_detail(
    urls_or_glob: str | Sequence[str], *, storage_options: dict | None = None
) -> list[tuple[str, dict | None]]:
    """Like :func:`expand`, with each file's ``fs.info`` where a glob listing provided it.

    Returns
    -------
    list of (str, dict or None)
        URL and its info (``None`` for URLs given explicitly, which are not checked).
    """
    if isinstance(urls_or_glob, (str, os.PathLike)):
        items = [os.fspath(urls_or_glob)]
    else:
        items = [os.fspath(u) for u in urls_or_glob]
    out: list[tuple[str, dict | None]] = []
    for item in items:
        if any(c in item.split("::")[0] for c in _GLOB_CHARS):
            fs, path = resolve(item, storage_options=storage_options)
            found = retry(lambda fs=fs, path=path: fs.glob(path, detail=True), what=item)
            files = {p: i for p, i in found.items() if i.get("type", "file") != "directory"}
            if not files:
                raise NotFoundError(f"no files match {item!r}")
            out.extend((_unstrip(fs, p, item), files[p]) for p in sorted(files))
        elif "://" not in item and "::" not in item:
            out.append((os.path.abspath(os.path.expanduser(item)), None))
        else:
            out.append((item, None))
    return out


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying (dropped connections, timeouts, HTTP 5xx/429).

    A host name that does not resolve (DNS failure) or a connection refused is not transient:
    no network or a wrong endpoint, so the call fails at once instead of after every retry.

    Parameters
    ----------
    exc : BaseException
        The error raised by a storage call.

    Returns
    -------
    bool
    """
    if _unreachable(exc):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current is exc and isinstance(current, _PERMANENT):
            return False
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        status = _http_status(current)
        if status is not None and (status >= 500 or status == 429):
            return True
        current = current.__cause__ or current.__context__
    return False


def _http_status(exc: BaseException) -> int | None:
    """HTTP status carried by a botocore/aiohttp/gcsfs error, if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def retry(func: Callable[[], T], *, what: str = "", retries: int | None = None) -> T:
    """Call ``func`` and retry it on transient errors with exponential backoff and jitter.

    Parameters
    ----------
    func : callable
        Function without arguments.
    what : str
        What is being read (for the log and the final error).
    retries : int, optional
        Attempts after the first; default dask config ``cloudlab.storage-retries`` (5).

    Returns
    -------
    object
        Whatever ``func`` returns.

    Raises
    ------
    StorageError
        At once, without retries, when the host does not resolve or refuses the connection.
    """
    if retries is None:
        retries = int(dask.config.get("cloudlab.storage-retries", default=5))
    base = float(dask.config.get("cloudlab.storage-backoff", default=0.1))
    attempt = 0
    server = _server_of(what)
    while True:
        try:
            result = func()
            _REACHED.add(server)
            return result
        except Exception as exc:
            # a server never reached in this process that refuses connections or does not
            # resolve is not coming back: fail at once; one that answered before is retried
            if _unreachable(exc) and server not in _REACHED:
                raise StorageError(
                    f"{what or 'storage'}: cannot reach the server ({exc}); check the network "
                    "connection and the endpoint (e.g. AWS_ENDPOINT_URL_S3)"
                ) from exc
            if attempt >= retries or not (is_transient(exc) or _unreachable(exc)):
                raise
            delay = min(base * 2**attempt, 10.0) * (0.5 + random.random())
            log.warning(
                "transient error reading %s (%s: %s); retry %d/%d in %.2f s",
                what,
                type(exc).__name__,
                exc,
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)
            attempt += 1


def _local_cat_ranges(path: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """Ranged reads from one local file with a single open."""
    out = []
    with open(path, "rb") as f:
        for start, end in zip(starts, ends, strict=True):
            f.seek(start)
            out.append(f.read(end - start))
    return out


def local_path(url: str, *, storage_options: dict | None = None) -> str | None:
    """The path of ``url`` when it is a plain local file (for zero-copy reads), else ``None``."""
    if "::" in url:
        return None
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    if _protocol(url) not in ("file", "local"):
        return None
    fs, path = resolve(url, storage_options=storage_options)
    return path if type(fs) is LocalFileSystem else None


def cat_ranges(
    url: str,
    starts: Sequence[int],
    ends: Sequence[int],
    *,
    storage_options: dict | None = None,
) -> list[bytes]:
    """Read several byte ranges of one file in one batched call, retrying transient errors.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    starts, ends : sequence of int
        Byte ranges ``[start, end)``.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    list of bytes
        One ``bytes`` per range; shorter than asked where the file ends early.
    """
    starts = [int(s) for s in starts]
    ends = [int(e) for e in ends]
    if not starts:
        return []
    fs, path = resolve(url, storage_options=storage_options)

    def fetch() -> list[bytes]:
        if type(fs) is LocalFileSystem:
            return _local_cat_ranges(path, starts, ends)
        parts = fs.cat_ranges([path] * len(starts), starts, ends, on_error="raise")
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return parts

    return retry(fetch, what=url)


def file_info(url: str, *, storage_options: dict | None = None) -> dict[str, Any]:
    """``fs.info`` of ``url`` with retries (raises ``FileNotFoundError`` naming the URL)."""
    fs, path = resolve(url, storage_options=storage_options)
    try:
        return retry(lambda: fs.info(path), what=url)
    except FileNotFoundError as exc:
        raise NotFoundError(errno.ENOENT, "no such file", url) from exc


def read_bytes(url: str, *, storage_options: dict | None = None) -> bytes:
    """Whole content of ``url``.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    bytes
    """
    fs, path = resolve(url, storage_options=storage_options)
    return retry(lambda: fs.cat_file(path), what=url)


def existing(urls: str | Sequence[str], *, storage_options: dict | None = None) -> list[str]:
    """Which of ``urls`` exist (files or store prefixes), in the order given.

    Destinations in one directory of an object store are checked with one listing.

    Parameters
    ----------
    urls : str or sequence of str
        Destination URLs or local paths.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    list of str
        The URLs that exist.
    """
    single = isinstance(urls, (str, os.PathLike))
    items = [os.fspath(urls)] if single else [os.fspath(u) for u in urls]
    found: set[str] = set()
    groups: dict[tuple[int, str], tuple[fsspec.AbstractFileSystem, str, list]] = {}
    for url in items:
        fs, path = resolve(url, storage_options=storage_options)
        if isinstance(fs, LocalFileSystem):
            if os.path.lexists(path):
                found.add(url)
            continue
        parent = path.rstrip("/").rpartition("/")[0]
        groups.setdefault((id(fs), parent), (fs, parent, []))[2].append((url, path.rstrip("/")))
    for fs, parent, members in groups.values():
        if len(members) == 1:
            url, path = members[0]
            fs.invalidate_cache(path)
            if retry(lambda fs=fs, path=path: fs.exists(path), what=url):
                found.add(url)
            continue
        fs.invalidate_cache(parent)
        try:
            listing = retry(lambda fs=fs, parent=parent: fs.ls(parent, detail=False), what=parent)
        except FileNotFoundError:
            continue
        names = {p.rstrip("/") for p in listing}
        found.update(url for url, path in members if path in names)
    return [url for url in items if url in found]


def check_writable(
    urls: str | Sequence[str], *, overwrite: bool = False, storage_options: dict | None = None
) -> None:
    """Refuse, before any work, to write over existing products unless ``overwrite`` is set.

    Parameters
    ----------
    urls : str or sequence of str
        Every destination the caller is about to write.
    overwrite : bool
        Whether existing products may be replaced (then nothing is checked).
    storage_options : dict, optional
        Filesystem keyword arguments.

    Raises
    ------
    OverwriteError
        Some destinations exist; the message names them.
    """
    if overwrite:
        return
    found = existing(urls, storage_options=storage_options)
    if found:
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        verb = "exists" if len(found) == 1 else "exist"
        raise OverwriteError(
            f"{', '.join(found[:5])}{more} already {verb}: pass overwrite=True (CLI: --overwrite) "
            "to replace, or choose another destination"
        )


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from an ``fs.info`` time field (float, datetime or ISO text)."""
    import datetime

    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _last_modified(fs: fsspec.AbstractFileSystem, path: str) -> float | None:
    """Latest modification time of ``path`` and everything under it (None when unknown)."""
    fs.invalidate_cache(path)
    try:
        infos = fs.find(path, withdirs=True, detail=True)
    except FileNotFoundError:
        return None
    if not infos:
        with contextlib.suppress(FileNotFoundError):
            infos = {path: fs.info(path)}
    times = []
    for info in infos.values():  # the first time field the store gives, modification first
        stamps = (_timestamp(info.get(k)) for k in ("mtime", "LastModified", "updated", "created"))
        stamp = next((t for t in stamps if t is not None), None)
        if stamp is not None or info.get("type") != "directory":  # object-store prefixes: no time
            times.append(stamp)
    return None if None in times or not times else max(times)


def stale_temporaries(url: str, *, storage_options: dict | None = None) -> list[str]:
    """Temporaries that earlier runs left beside the product ``url`` (see the overwrite policy).

    Owned temporaries are found by their names: ``.<name>.<12 hex>.partial`` and
    ``.<name>.<12 hex>.previous`` (zarr staging of :func:`write_zarr`) and
    ``.<name>.<32 hex>.tmp`` (local files of :func:`write_file`). Only those last modified before
    this process started (or whose time the store does not give) count as stale, so a write
    still running in this process is never touched.

    Parameters
    ----------
    url : str
        The product's URL or local path.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    list of str
        Paths within the product's filesystem.
    """
    fs, path = resolve(url, storage_options=storage_options)
    parent, _, name = path.rstrip("/").rpartition("/")
    pattern = re.compile(
        rf"\.{re.escape(name)}\.([0-9a-f]{{12}}\.(partial|previous)|[0-9a-f]{{32}}\.tmp)"
    )
    fs.invalidate_cache(parent or "/")
    try:
        listing = retry(lambda: fs.ls(parent or "/", detail=False), what=parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in sorted(p.rstrip("/") for p in listing):
        if pattern.fullmatch(entry.rpartition("/")[2]):
            modified = _last_modified(fs, entry)
            if modified is None or modified < _RUN_STARTED:
                out.append(entry)
    return out


def _remove_stale_temporaries(url: str, storage_options: dict | None) -> None:
    """Remove :func:`stale_temporaries` of ``url`` (logged; a failure to remove is only logged)."""
    fs, _ = resolve(url, storage_options=storage_options)
    for entry in stale_temporaries(url, storage_options=storage_options):
        log.warning("removing %s, left by an interrupted earlier write", _unstrip(fs, entry, url))
        try:
            if isinstance(fs, LocalFileSystem) and not os.path.isdir(entry):
                os.unlink(entry)
            elif isinstance(fs, LocalFileSystem):
                shutil.rmtree(entry)
            else:
                retry(lambda entry=entry: fs.rm(entry, recursive=True), what=entry)
        except OSError as exc:
            log.warning("could not remove %s: %s", entry, exc)


@contextlib.contextmanager
def write_file(
    url: str, *, overwrite: bool = False, storage_options: dict | None = None
) -> Iterator[str]:
    """Context manager yielding a local path to write one product file to.

    The destination is checked first (see the module's overwrite policy); on success the file
    appears at ``url`` in one step (local rename or one object upload), on error nothing is left
    behind and a previous file is untouched.

    Parameters
    ----------
    url : str
        Destination URL or local path.
    overwrite : bool
        Replace an existing file (else :class:`~cloudlab.errors.OverwriteError`).
    storage_options : dict, optional
        Filesystem keyword arguments.

    Yields
    ------
    str
        A temporary local path (next to the destination for local files).

    Raises
    ------
    OverwriteError
        ``url`` exists and ``overwrite`` is False (checked before the body runs and again before
        the file is put in place).
    """
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    fs, path = resolve(url, storage_options=storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local:
        _remove_stale_temporaries(url, storage_options)
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        tmpdir = None
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    else:
        tmpdir = tempfile.mkdtemp(prefix="cloudlab-")
        tmp = os.path.join(tmpdir, os.path.basename(path) or "data")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise NotFoundError(f"nothing was written for {url!r}")
        check_writable(url, overwrite=overwrite, storage_options=storage_options)
        if local:
            os.replace(tmp, path)
        else:
            retry(lambda: fs.put_file(tmp, path), what=url)
    finally:
        if local and os.path.exists(tmp):
            os.unlink(tmp)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def atomic_write(url: str, *, storage_options: dict | None = None):
    """Deprecated: :func:`write_file` with ``overwrite=True`` (kept for existing callers)."""
    return write_file(url, overwrite=True, storage_options=storage_options)


def write_bytes(
    url: str, data: bytes, *, storage_options: dict | None = None, overwrite: bool = True
) -> None:
    """Write ``data`` to ``url`` in one step (local: temporary file then rename; object stores:
    one object upload, which is atomic by nature).

    Parameters
    ----------
    url : str
        Destination URL or local path.
    data : bytes
        Content.
    storage_options : dict, optional
        Filesystem keyword arguments.
    overwrite : bool
        Replace an existing file. The default (True) keeps this raw helper usable for inputs,
        caches and simulated data; every product writer passes its own ``overwrite`` (default
        False) so that products follow the module's overwrite policy.

    Raises
    ------
    OverwriteError
        ``url`` exists and ``overwrite`` is False.
    """
    fs, path = resolve(url, storage_options=storage_options)
    if isinstance(fs, LocalFileSystem):
        with write_file(url, overwrite=overwrite, storage_options=storage_options) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
        return
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    retry(lambda: fs.pipe_file(path, bytes(data)), what=url)


#: zarr metadata documents (v2 and v3); copied into place after every chunk
_ZARR_METADATA = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})
#: storage-option keys whose values are credentials
_SECRET_WORDS = ("key", "secret", "token", "pass", "cred", "auth")


def _secret_values(options: Any) -> set[str]:
    """String values stored under credential-like keys of ``options`` (nested mappings too)."""
    out: set[str] = set()
    if isinstance(options, dict):
        for key, value in options.items():
            if isinstance(value, dict):
                out |= _secret_values(value)
            elif isinstance(value, str) and len(value) >= 4:
                if any(word in str(key).lower() for word in _SECRET_WORDS):
                    out.add(value)
    return out


def _clean_attrs(attrs: dict, secrets: set[str]) -> dict:
    """``attrs`` without ``storage_options`` and without values that contain a credential."""
    return {
        k: v
        for k, v in attrs.items()
        if k != "storage_options" and not any(s in repr(v) for s in secrets)
    }


def _for_zarr(ds: Any, secrets: set[str]) -> Any:
    """A shallow copy of ``ds`` safe to write: no secrets in attrs, no stale chunk encodings,
    text as variable-length strings."""
    import numpy as np
    import xarray as xr

    ds = ds.copy(deep=False)
    text = [name for name, var in ds.variables.items() if var.dtype.kind == "U"]
    for name in text:  # variable-length strings have a zarr v3 specification, fixed-length not
        var = ds.variables[name]  # (text is small: labels, names, URLs; loaded here)
        text_var = xr.Variable(var.dims, np.asarray(var.values, dtype=object), var.attrs)
        if name in ds.coords:
            ds = ds.assign_coords({name: text_var})
        else:
            ds[name] = text_var
    ds.attrs = _clean_attrs(dict(ds.attrs), secrets)
    for var in ds.variables.values():
        var.attrs = _clean_attrs(dict(var.attrs), secrets)
        var.encoding = {
            k: v for k, v in var.encoding.items() if k not in ("chunks", "preferred_chunks")
        }
    return ds


def _is_lazy(ds: Any) -> bool:
    return any(dask.is_dask_collection(v.data) for v in ds.variables.values())


def _zarr_store(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """What ``to_zarr``/``open_zarr`` take for ``path``: the path locally, a mapper elsewhere."""
    return path if isinstance(fs, LocalFileSystem) else fs.get_mapper(path)


def _metadata_last(keys: list[str], root: str) -> list[str]:
    """Object keys ordered chunk data first, then metadata deepest first, the root's last."""

    def rank(key: str) -> tuple[int, int]:
        if key.rsplit("/", 1)[-1] not in _ZARR_METADATA:
            return (0, 0)
        return (1, -key[len(root) :].count("/"))

    return sorted(keys, key=rank)


def _switch_local(staging: str, path: str, url: str, overwrite: bool) -> None:
    """Rename the complete ``staging`` store to ``path`` (the previous one aside, then away)."""
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    if not overwrite:
        raise OverwriteError(f"{url} appeared while it was written: pass overwrite=True to replace")
    aside = f"{staging[: -len('.partial')]}.previous"
    os.rename(path, aside)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(aside, path)
        raise
    if os.path.isdir(aside):
        shutil.rmtree(aside)
    else:
        os.unlink(aside)


def _switch_remote(
    fs: fsspec.AbstractFileSystem, staging: str, path: str, url: str, overwrite: bool
) -> None:
    """Copy the complete ``staging`` store to ``path``: data, then metadata, then clean up."""
    fs.invalidate_cache(path)
    old = set(fs.find(path)) if fs.exists(path) else set()
    if old and not overwrite:
        raise OverwriteError(f"{url} appeared while it was written: pass overwrite=True to replace")
    fs.invalidate_cache(staging)
    new = _metadata_last(fs.find(staging), staging)
    targets = [f"{path}{key[len(staging) :]}" for key in new]
    n_data = sum(key.rsplit("/", 1)[-1] not in _ZARR_METADATA for key in new)
    try:
        if n_data:
            retry(lambda: fs.copy(new[:n_data], targets[:n_data]), what=url)
        for key, target in zip(new[n_data:], targets[n_data:], strict=True):
            retry(lambda key=key, target=target: fs.copy(key, target), what=target)
    except Exception as exc:
        raise StorageError(
            f"{url}: the new store is complete at {_unstrip(fs, staging, url)} but copying it into "
            f"place failed ({type(exc).__name__}: {exc}); {url} may mix old and new chunks: "
            "copy the complete store over it or write again with overwrite=True"
        ) from exc
    stale = sorted(old - set(targets))
    if stale:
        retry(lambda: fs.rm(stale), what=url)
    retry(lambda: fs.rm(staging, recursive=True), what=url)
    fs.invalidate_cache(path)


def write_zarr(
    ds: Any,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    zarr_format: int | None = None,
    consolidated: bool = True,
) -> str:
    """Write an xarray Dataset to a zarr store, following the module's overwrite policy.

    The destination is checked before anything is computed. The store is written complete under
    a fresh sibling prefix and then put in place (renamed locally, copied data-first and
    metadata-last on object stores), so ``url`` never holds a half-written store and a previous
    store survives any failure before the new one is complete. Dask-backed variables are
    computed by :func:`cloudlab.cluster.compute` (on the active cluster, the workers write their
    chunks; progress bar on stderr). ``storage_options`` never reach the store: a
    ``storage_options`` attribute, and any attribute containing one of its credentials, is left
    out.

    Parameters
    ----------
    ds : xarray.Dataset
        What to write (lazy or in memory).
    url : str
        Destination URL or local path of the store.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    storage_options : dict, optional
        Filesystem keyword arguments.
    progress : bool
        Show a progress bar while dask-backed variables are computed.
    zarr_format : {2, 3}, optional
        zarr format; default zarr's.
    consolidated : bool
        Write consolidated metadata (default True).

    Returns
    -------
    str
        ``url``.

    Raises
    ------
    OverwriteError
        ``url`` exists and ``overwrite`` is False (nothing is computed).
    StorageError
        The new store is complete but could not be copied into place (object stores); the
        message names the complete copy.
    """
    import warnings

    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    secrets = _secret_values(storage_options_for(url, storage_options=storage_options))
    clean = _for_zarr(ds, secrets)
    fs, path = resolve(url, storage_options=storage_options)
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    staging = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.partial"
    local = isinstance(fs, LocalFileSystem)
    if local:
        os.makedirs(parent or ".", exist_ok=True)
    _remove_stale_temporaries(url, storage_options)
    try:
        with warnings.catch_warnings():  # consolidated metadata is not in the zarr v3 spec (yet)
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            delayed = clean.to_zarr(
                _zarr_store(fs, staging),
                mode="w",
                compute=False,
                zarr_format=zarr_format,
                consolidated=consolidated,
            )
            from cloudlab.cluster import compute

            compute(delayed, progress=progress and _is_lazy(clean))
    except BaseException:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(staging)
            if fs.exists(staging):
                fs.rm(staging, recursive=True)
        raise
    if local:
        try:
            _switch_local(staging, path, url, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        try:
            _switch_remote(fs, staging, path, url, overwrite)
        except OverwriteError:
            fs.rm(staging, recursive=True)
            raise
    return url


def read_zarr(url: str, *, storage_options: dict | None = None) -> Any:
    """Open a zarr store written by :func:`write_zarr` (lazily, dask-backed).

    Parameters
    ----------
    url : str
        Store URL or local path.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    FileNotFoundError
        Nothing at ``url``.
    """
    import xarray as xr

    fs, path = resolve(url, storage_options=storage_options)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    if not retry(lambda: fs.exists(path), what=url):
        raise NotFoundError(errno.ENOENT, "no zarr store", url)
    return xr.open_zarr(_zarr_store(fs, path))


def worker_environment() -> dict[str, str]:
    """Storage settings that must reach cluster workers, as environment variables.

    Returns
    -------
    dict of str to str
        The storage variables set in this process (endpoints, credentials, the GCS emulator, the
        gcsfs HNS switch), plus ``DASK_CLOUDLAB__STORAGE`` when dask config ``cloudlab.storage``
        is set. Values may be secrets: pass them on, never print them.
    """
    env = {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}
    env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    configured = dask.config.get("cloudlab.storage", default=None)
    if configured:
        env["DASK_CLOUDLAB__STORAGE"] = repr(dict(configured))
    return env
