"""Where work runs: one call, :func:`connect`, for a laptop, a dask-gateway hub or a scheduler.

``connect()`` with no argument joins the dask-gateway configured for the session (dask config
``gateway.address``, as daskhub/Pangeo/TIKE hubs set it) and otherwise starts an embedded
``LocalCluster`` sized to the machine. Storage settings (endpoints, credentials and emulator
variables from the environment) are forwarded to the workers of every cluster kind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import dask
from dask_gateway import Gateway  # importing registers the gateway.* dask config defaults
from distributed import Client, LocalCluster, wait
from distributed.diagnostics.plugin import WorkerPlugin

from cloudlab.backend import GPU_RESOURCES, gpu_resources, gpu_tasks
from cloudlab.errors import ExternalToolError, InputError

__all__ = [
    "GPU_RESOURCES",
    "EnvironmentPlugin",
    "active_client",
    "compute",
    "connect",
    "describe_target",
    "gpu_resources",
    "gpu_tasks",
    "local_hosts",
    "reading_workers",
    "submitted_parts",
    "worker_addresses",
]


def active_client() -> Client | None:
    """The ``distributed`` client when it is dask's active scheduler, else ``None``.

    With several clients in a session (a gateway cluster and a local one), the active one is
    the client whose ``get`` is the scheduler, not necessarily the newest.
    """
    try:
        active = dask.base.get_scheduler()
    except ValueError:
        return None
    client = getattr(active, "__self__", None)
    return client if isinstance(client, Client) and active == client.get else None


def local_hosts() -> set[str]:
    """Names and addresses of this machine (to tell whether a worker runs here)."""
    hosts = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    try:
        hosts.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return hosts


def worker_addresses(client: Client) -> list[str]:
    """Addresses of every worker of ``client``'s cluster."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: no n_workers argument, lists every worker
        info = client.scheduler_info()
    return list(info.get("workers", {}))


def reading_workers(urls: Sequence[str]) -> tuple[Client | None, list[str]]:
    """The active client and the addresses of its workers that can read every one of ``urls``.

    Workers cannot see an in-memory filesystem (``memory://``, it lives in this process) nor
    local files when any of them runs on another machine; then the list is empty and the caller
    reads here instead.

    Parameters
    ----------
    urls : sequence of str
        The files to read.

    Returns
    -------
    (distributed.Client or None, list of str)
        The active client (``None`` when dask's scheduler is not a distributed client) and the
        worker addresses to send reads to (empty: read in this process).
    """
    from cloudlab.storage import is_local

    client = active_client()
    if client is None:
        return None, []
    workers = worker_addresses(client)
    if any(u.startswith("memory:") for u in urls):
        return client, []
    if workers and any(is_local(u) for u in urls):
        here = local_hosts()
        if not all(urlparse(w).hostname in here for w in workers):
            return client, []
    return client, workers


#: stands for a DataArray's own data among the names of its variables
_DATA = object()


def _variables(obj: Any) -> Any:
    """The variables of an xarray object (a DataArray's coordinates, not its data)."""
    import xarray as xr

    return obj.variables if isinstance(obj, xr.Dataset) else obj.coords.variables


def submitted_parts(collections: Sequence[Any]) -> tuple[list[Any], Any]:
    """What :func:`compute` submits to a cluster for ``collections``, and how it rebuilds them.

    An xarray object computed whole carries every in-memory variable (a catalog's columns, a
    per-target mask) through the scheduler to a worker and back; only its dask-backed variables
    are submitted here, and the object is put back together on the client. Other collections
    are submitted as they are.

    Parameters
    ----------
    collections : sequence
        What to compute (dask collections, xarray objects).

    Returns
    -------
    (list, callable)
        The dask collections to submit, and ``rebuild(values)`` that turns their computed
        values (in that order) into one result per collection.
    """
    import xarray as xr

    parts: list[Any] = []
    plans: list[tuple[Any, list[Any] | None, int]] = []
    for collection in collections:
        if not isinstance(collection, xr.DataArray | xr.Dataset):
            plans.append((collection, None, len(parts)))
            parts.append(collection)
            continue
        variables = _variables(collection)
        lazy = {k: v.data for k, v in variables.items() if dask.is_dask_collection(v.data)}
        if isinstance(collection, xr.DataArray) and dask.is_dask_collection(collection.data):
            lazy[_DATA] = collection.data
        plans.append((collection, list(lazy), len(parts)))
        parts += lazy.values()

    def rebuild(values: Sequence[Any]) -> list[Any]:
        results = []
        for collection, names, at in plans:
            if names is None:
                results.append(values[at])
                continue
            computed = dict(zip(names, values[at : at + len(names)], strict=True))
            own = computed.pop(_DATA, None)
            out = collection.copy(data=own) if own is not None else collection.copy()
            variables = _variables(collection)
            for name, value in computed.items():
                variable = variables[name].copy(deep=False, data=value)
                if name in collection.coords:
                    out = out.assign_coords({name: variable})
                else:
                    out[name] = variable
            results.append(out)
        return results

    return parts, rebuild


def compute(*collections: Any, progress: bool = True, persist: bool = False) -> tuple:
    """Compute (or persist) dask collections where dask would, with one progress bar on stderr.

    This is the one sink every command and writer uses: on the active ``distributed`` client
    (:func:`connect`, a gateway, a scheduler) it submits the graph and shows
    ``distributed.progress``; otherwise it runs dask's default scheduler under
    ``dask.diagnostics.ProgressBar``. Both bars write to stderr. When the computation fails or
    is interrupted (SIGINT), the submitted tasks are cancelled before the error propagates, so
    workers stop writing chunks into a store the caller is about to clean up.

    Parameters
    ----------
    *collections
        dask arrays, xarray objects or delayed values (anything ``dask.compute`` accepts).
    progress : bool
        Show the progress bar (default True).
    persist : bool
        Return persisted collections (still chunked, held in memory) instead of results.

    Returns
    -------
    tuple
        One result per collection.
    """
    client = active_client()
    if client is not None:
        if persist:
            results = client.persist(list(collections))
            futures = results
        else:
            # xarray objects: only their dask-backed variables travel (see submitted_parts)
            parts, rebuild = submitted_parts(collections)
            futures = client.compute(parts)
            results = None
        try:
            if progress:
                from distributed import progress as show_progress

                show_progress(futures)
                print(file=sys.stderr)
            if persist:
                wait(futures)
                return tuple(results)
            return tuple(rebuild(client.gather(futures)))
        except BaseException:  # interrupted or failed: stop the workers writing on, then re-raise
            with contextlib.suppress(Exception):
                client.cancel(futures)
            raise
    run = dask.persist if persist else dask.compute
    if not progress:
        return run(*collections)
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr):
        return run(*collections)


class _OwningClient(Client):
    """A Client that shuts down the cluster :func:`connect` started for it when closed."""

    _owned_cluster: Any = None

    def close(self, *args: Any, **kwargs: Any) -> Any:
        result = super().close(*args, **kwargs)
        cluster, self._owned_cluster = self._owned_cluster, None
        if cluster is not None:
            cluster.close()
        return result


class EnvironmentPlugin(WorkerPlugin):
    """Set environment variables on every worker (storage endpoints, emulator hosts)."""

    name = "cloudlab-environment"

    def __init__(self, environment: dict[str, str]):
        self.environment = dict(environment)

    def setup(self, worker: Any) -> None:
        os.environ.update(self.environment)


def describe_target(cluster: str | None = None) -> str:
    """Say which kind of cluster :func:`connect` would use, without starting anything.

    Parameters
    ----------
    cluster : str, optional
        The same argument as for :func:`connect`.

    Returns
    -------
    str
        e.g. ``"dask-gateway at http://…"``, ``"LocalCluster (2 workers x 1 thread)"``.
    """
    kind, address = _choose(cluster)
    if kind == "gateway":
        return f"dask-gateway at {address}"
    if kind == "scheduler":
        return f"existing scheduler at {address}"
    n_workers, threads = _local_size(None)
    return f"embedded LocalCluster ({n_workers} workers x {threads} threads)"


def connect(
    cluster: str | None = None,
    *,
    gpu: bool = False,
    n_workers: int | None = None,
    worker_memory: float | None = None,
    worker_cores: int | None = None,
    adapt: tuple[int, int] | None = None,
    **options: Any,
) -> Client:
    """Connect to the place where cloudlab graphs run and return a ``distributed.Client``.

    Parameters
    ----------
    cluster : str, optional
        ``None``: the configured dask-gateway (dask config ``gateway.address``) if any, otherwise an
        embedded ``LocalCluster``. ``"local"``: always a ``LocalCluster``. ``"http(s)://…"``: a
        dask-gateway at that address. ``"tcp://…"`` (or ``tls://``, ``ucx://``, ``inproc://``): an
        existing scheduler.
    gpu : bool
        Ask for GPU workers: a gateway cluster option (``worker_gpus`` when the gateway exposes it,
        and the worker resource ``{"GPU": n}``), or locally a ``LocalCUDACluster`` (needs
        ``dask-cuda``). GPU tasks carry ``resources={"GPU": 1}`` (see :func:`gpu_tasks`).
    n_workers : int, optional
        Number of workers (local) or the size the gateway cluster is scaled to (default 2).
    worker_memory : float, optional
        Memory per worker in GiB: the gateway's ``worker_memory`` option, or the ``memory_limit``
        of each local worker.
    worker_cores : int, optional
        Cores (threads) per worker: the gateway's ``worker_cores`` option, or the
        ``threads_per_worker`` of a local cluster.
    adapt : (int, int), optional
        ``(minimum, maximum)`` workers: the cluster scales itself between them
        (``cluster.adapt(minimum, maximum)``) instead of a fixed ``n_workers``.
    **options
        Gateway cluster options (``worker_memory``, ``worker_cores``, ``image``,
        ``environment`` …) or extra ``LocalCluster`` keyword arguments.

    Returns
    -------
    distributed.Client
        Closing it also shuts down any cluster that ``connect`` started.
    """
    from cloudlab.storage import worker_environment

    _check_size(n_workers, worker_memory, worker_cores, adapt)
    environment = worker_environment()
    kind, address = _choose(cluster)
    if kind == "gateway":
        if worker_memory is not None:
            options["worker_memory"] = worker_memory
        if worker_cores is not None:
            options["worker_cores"] = worker_cores
        client = _connect_gateway(
            address, gpu=gpu, n_workers=n_workers, adapt=adapt, env=environment, **options
        )
    elif kind == "scheduler":
        sized = (n_workers, worker_memory, worker_cores, adapt)
        if gpu or options or any(v is not None for v in sized):
            raise InputError(
                f"cannot set gpu, worker counts, sizes or cluster options on an existing "
                f"scheduler ({address}); configure its workers where they are started"
            )
        client = Client(address)
    else:
        if worker_memory is not None:
            options["memory_limit"] = f"{worker_memory}GiB"
        if worker_cores is not None:
            options["threads_per_worker"] = worker_cores
        client = _connect_local(gpu=gpu, n_workers=n_workers, **options)
        if adapt is not None:
            client.cluster.adapt(minimum=adapt[0], maximum=adapt[1])
    if environment:
        client.register_plugin(EnvironmentPlugin(environment))
    return client


def _check_size(
    n_workers: int | None,
    worker_memory: float | None,
    worker_cores: int | None,
    adapt: tuple[int, int] | None,
) -> None:
    """Refuse impossible cluster sizes before anything is started."""
    if n_workers is not None and n_workers < 1:
        raise InputError(f"n_workers (CLI --workers) must be at least 1, got {n_workers}")
    if worker_memory is not None and not worker_memory > 0:
        raise InputError(
            f"worker_memory (CLI --worker-memory) must be a positive number of GiB, "
            f"got {worker_memory}"
        )
    if worker_cores is not None and worker_cores < 1:
        raise InputError(
            f"worker_cores (CLI --worker-cores) must be at least 1, got {worker_cores}"
        )
    if adapt is not None:
        if n_workers is not None:
            raise InputError(
                "give either n_workers (CLI --workers) or adapt (CLI --adapt MIN MAX), not both"
            )
        low, high = adapt
        if not 0 <= low <= high or high < 1:
            raise InputError(
                f"adapt (CLI --adapt MIN MAX) needs 0 <= MIN <= MAX and MAX >= 1, got {low} {high}"
            )


def _choose(cluster: str | None) -> tuple[str, str | None]:
    if cluster is None:
        address = dask.config.get("gateway.address", None)
        return ("gateway", address) if address else ("local", None)
    if cluster == "local":
        return "local", None
    if cluster.startswith(("http://", "https://")):
        return "gateway", cluster
    if "://" in cluster:
        return "scheduler", cluster
    raise InputError(
        f"connect(cluster={cluster!r}): expected None, 'local', a gateway URL (http[s]://…) "
        "or a scheduler address (tcp://…)"
    )


def _local_size(n_workers: int | None) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    if n_workers is None:
        n_workers = min(cores, 8)
    return n_workers, max(1, cores // n_workers)


def _connect_local(*, gpu: bool, n_workers: int | None, **options: Any) -> Client:
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise ExternalToolError(
                "connect('local', gpu=True) needs dask-cuda and a CUDA GPU: "
                "pip install dask-cuda cloudlab[gpu]"
            ) from err
        cluster = LocalCUDACluster(
            ip="127.0.0.1", dashboard_address="127.0.0.1:0", resources=gpu_resources(), **options
        )
    else:
        workers, threads = _local_size(n_workers)
        options.setdefault("threads_per_worker", threads)
        cluster = LocalCluster(
            n_workers=workers,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            **options,
        )
    client = _OwningClient(cluster)
    client._owned_cluster = cluster
    return client


def _connect_gateway(
    address: str | None,
    *,
    gpu: bool,
    n_workers: int | None,
    adapt: tuple[int, int] | None,
    env: dict[str, str],
    **options: Any,
) -> Client:
    gateway = Gateway(address) if address else Gateway()
    cluster_options = gateway.cluster_options()
    names = set(cluster_options)
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError(
            f"the dask-gateway at {gateway.address} does not offer the cluster option(s) "
            f"{unknown}; it offers {sorted(names)}"
        )
    for key, value in options.items():
        cluster_options[key] = value
    environment = dict(env)
    if gpu:
        environment["DASK_DISTRIBUTED__WORKER__RESOURCES"] = repr(gpu_resources())
        if "worker_gpus" in names:
            cluster_options["worker_gpus"] = max(1, int(options.get("worker_gpus", 1)))
        elif "environment" not in names:
            raise InputError(
                f"the dask-gateway at {gateway.address} offers neither a 'worker_gpus' nor an "
                "'environment' option, so GPU workers cannot be requested; ask its admin"
            )
    if "environment" in names and environment:
        merged = dict(cluster_options["environment"] or {})
        merged.update(environment)
        cluster_options["environment"] = merged
    cluster = gateway.new_cluster(cluster_options, shutdown_on_close=True)
    if adapt is not None:
        cluster.adapt(minimum=adapt[0], maximum=adapt[1])
    else:
        cluster.scale(n_workers or 2)
    client = _OwningClient(cluster, set_as_default=True)
    client._owned_cluster = cluster
    return client
