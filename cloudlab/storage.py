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
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
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

__all__ = [
    "atomic_write",
    "cat_ranges",
    "expand",
    "expand_detail",
    "file_info",
    "is_local",
    "is_transient",
    "local_path",
    "read_bytes",
    "resolve",
    "retry",
    "worker_environment",
    "write_bytes",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

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

_S3_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)

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

_TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT}
)


def _protocol(url: str) -> str:
    """The first protocol of ``url`` (``"file"`` for local paths)."""
    if "://" not in url and "::" not in url:
        return "file"
    proto = fsspec.core.split_protocol(url.split("::", 1)[0])[0]
    return proto or "file"


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
        return opts
    if protocol in ("gs", "gcs"):
        if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return {}
        return {"token": "anon"}
    return {}


def storage_options_for(url: str, storage_options: dict | None = None) -> dict[str, Any]:
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
        Keyword arguments for the filesystem constructor.
    """
    protocol = _protocol(url)
    opts = _env_options(protocol)
    configured = dask.config.get(f"cloudlab.storage.{protocol}", default=None)
    if configured:
        opts.update(dict(configured))
    if storage_options:
        opts.update(storage_options)
        # explicit credentials switch anonymous access off unless asked for
        if protocol in ("s3", "s3a") and "anon" not in storage_options:
            if any(k in storage_options for k in ("key", "secret", "profile", "token")):
                opts["anon"] = False
    return opts


def resolve(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
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
    opts = storage_options_for(url, storage_options)
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ValueError as exc:  # unknown protocol
        raise ValueError(f"cannot open {url!r}: {exc}") from exc


def _unstrip(fs: fsspec.AbstractFileSystem, path: str, template: str) -> str:
    """Full URL for ``path`` on ``fs``, in the style of ``template`` (local stays local)."""
    if "://" not in template and "::" not in template:
        return path
    if "::" in template:  # chained URL: keep the chain, replace the first path
        head, tail = template.split("::", 1)
        proto = fsspec.core.split_protocol(head)[0]
        return f"{proto}://{path}::{tail}" if proto else f"{path}::{tail}"
    return fs.unstrip_protocol(path)


def expand(urls_or_glob: str | Sequence[str], storage_options: dict | None = None) -> list[str]:
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
    return [url for url, _ in expand_detail(urls_or_glob, storage_options)]


def expand_detail(
    urls_or_glob: str | Sequence[str], storage_options: dict | None = None
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
            fs, path = resolve(item, storage_options)
            found = retry(lambda fs=fs, path=path: fs.glob(path, detail=True), what=item)
            files = {p: i for p, i in found.items() if i.get("type", "file") != "directory"}
            if not files:
                raise FileNotFoundError(f"no files match {item!r}")
            out.extend((_unstrip(fs, p, item), files[p]) for p in sorted(files))
        elif "://" not in item and "::" not in item:
            out.append((os.path.abspath(os.path.expanduser(item)), None))
        else:
            out.append((item, None))
    return out


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying (connection problems, timeouts, HTTP 5xx/429).

    Parameters
    ----------
    exc : BaseException
        The error raised by a storage call.

    Returns
    -------
    bool
    """
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
    """
    if retries is None:
        retries = int(dask.config.get("cloudlab.storage-retries", default=5))
    base = float(dask.config.get("cloudlab.storage-backoff", default=0.1))
    attempt = 0
    while True:
        try:
            return func()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
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


def local_path(url: str, storage_options: dict | None = None) -> str | None:
    """The path of ``url`` when it is a plain local file (for zero-copy reads), else ``None``."""
    if "::" in url:
        return None
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    if _protocol(url) not in ("file", "local"):
        return None
    fs, path = resolve(url, storage_options)
    return path if type(fs) is LocalFileSystem else None


def cat_ranges(
    url: str,
    starts: Sequence[int],
    ends: Sequence[int],
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
    fs, path = resolve(url, storage_options)

    def fetch() -> list[bytes]:
        if type(fs) is LocalFileSystem:
            return _local_cat_ranges(path, starts, ends)
        parts = fs.cat_ranges([path] * len(starts), starts, ends, on_error="raise")
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return parts

    return retry(fetch, what=url)


def file_info(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """``fs.info`` of ``url`` with retries (raises ``FileNotFoundError`` naming the URL)."""
    fs, path = resolve(url, storage_options)
    try:
        return retry(lambda: fs.info(path), what=url)
    except FileNotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, "no such file", url) from exc


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
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
    fs, path = resolve(url, storage_options)
    return retry(lambda: fs.cat_file(path), what=url)


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` atomically (local: temporary name then rename; object stores:
    one object upload, which is atomic by nature).

    Parameters
    ----------
    url : str
        Destination URL or local path.
    data : bytes
        Content.
    storage_options : dict, optional
        Filesystem keyword arguments.
    """
    fs, path = resolve(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    retry(lambda: fs.pipe_file(path, bytes(data)), what=url)


@contextlib.contextmanager
def atomic_write(url: str, storage_options: dict | None = None) -> Iterator[str]:
    """Context manager yielding a local path to write to; on success the file appears at ``url``
    in one step, on error nothing is left behind.

    Parameters
    ----------
    url : str
        Destination URL or local path.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Yields
    ------
    str
        A temporary local path (next to the destination for local files).
    """
    fs, path = resolve(url, storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local:
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
            raise FileNotFoundError(f"nothing was written for {url!r}")
        if local:
            os.replace(tmp, path)
        else:
            retry(lambda: fs.put_file(tmp, path), what=url)
    finally:
        if local and os.path.exists(tmp):
            os.unlink(tmp)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


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
