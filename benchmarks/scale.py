"""Graph size and scheduler acceptance at production size, for every workflow.

For each workflow the inputs are written as *sparse* files (real headers, the pixels left as
holes; :mod:`cloudlab.testing.scale`, the set-ups of ``tests/test_scale.py``), then timed:

* **build**: the client, from opening the inputs (header reads included) to the lazy result;
* **tasks** and **shipped** bytes: the optimised graph as ``Client.compute`` serialises it for
  what :func:`cloudlab.cluster.compute` submits (the dask-backed variables of the result);
* **accepted**: on a ``distributed.LocalCluster`` (2 worker processes), from ``client.compute``
  until the scheduler has made the graph's tasks (a scheduler plugin notes the moment; the time
  ``client.compute`` itself took, optimising and serialising on the client, in brackets); the
  futures are then cancelled, nothing is waited for.

Writing the files is timed apart (``set-up``) and not counted; the cutouts' 16 cubes are written
once (in the first size's set-up) and shared by every size. Each workflow is built once at a
small size first, so that no figure includes importing its modules. Goals at full size: built in
< 30 s, < 50 MB shipped, accepted in < 30 s.

Sizes (``--size``): full is a TESS sector's cutouts of 10⁵ targets over its 16 cubes, six AIA
channels × 1,800 full-disk frames and a 400″ crop for time lags, 16 CCDs × 3,000 FFIs for
BackDrop, 10⁶ DRE cuts, 10⁶ AstroNet TCEs; ``10x`` is a tenth of that and ``small`` a
hundredth, with the same geometry.

Run: ``python benchmarks/scale.py [--workflow cutouts ...] [--size small 10x full | --n N]
[--dir DIR] [--quick]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

#: workflow: (full size, items, keyword arguments of its set-up)
FULL = {
    "cutouts": (100_000, "targets", {"cubes": 16, "n_frames": 3000, "shape": (2078, 2136)}),
    "timelag": (
        1_800,
        "frames per channel",
        {"channels": (94, 131, 171, 193, 211, 335), "crop": 400.0},
    ),  # fmt: skip
    "backdrop": (3_000, "FFIs per CCD", {"ccds": 16}),
    "dre": (1_000_000, "galaxies", {}),
    "dre-hdf5": (1_000_000, "galaxies", {}),
    "astronet": (1_000_000, "TCEs", {}),
}
#: the five workflows of the goal (``dre-hdf5`` is the CLI's way in to DRE)
DEFAULT = ("cutouts", "timelag", "backdrop", "dre", "astronet")
SIZES = {"small": 100, "10x": 10, "full": 1}
#: size of the warm-up build of each workflow (the test's geometry) before any is timed, and
#: of ``--quick``
WARM_UP = 24
#: goals at full size: client build (s), shipped bytes, scheduler acceptance (s)
GOALS = (30.0, 50e6, 30.0)


def measure(
    client,  # noqa: ANN001
    name: str,
    n: int,
    where: Path,
    shared: Path,
    per_task: int | None = None,
    quick: bool = False,
    cadences_known: bool = False,
) -> dict:
    """Set up workflow ``name`` at size ``n`` under ``where`` and time its graph (``shared``:
    a directory for the inputs that every size of the workflow uses, the cutouts' cubes;
    ``per_task``: DRE's ``chunk_size`` or AstroNet's ``batch_size``; ``quick``: the test's
    geometry, two cubes, two channels, one CCD; ``cadences_known``: AstroNet's light curves
    opened with their cadence count given)."""
    from cloudlab.cluster import submitted_parts
    from cloudlab.testing.scale import SETUPS, AcceptanceClock, graph_size

    options = {} if quick else dict(FULL[name][2])
    if name == "cutouts":
        options["cube_dir"] = shared
    if name == "dre":  # None: the library's default (cloudlab.chunking.items_per_task)
        options["chunk_size"] = per_task
    if name == "astronet":
        options["batch_size"] = per_task
    if cadences_known and name == "astronet":
        options["cadences_known"] = True
    start = time.perf_counter()
    graph = SETUPS[name](where, n, **options)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    collections = graph()
    built = time.perf_counter() - start
    tasks, shipped = graph_size(collections)

    parts, _ = submitted_parts(collections)  # what cloudlab.cluster.compute submits
    before = len(client.run_on_scheduler(AcceptanceClock.accepted))
    sent = time.time()
    futures = client.compute(parts)
    handed = time.time() - sent
    while len(accepted := client.run_on_scheduler(AcceptanceClock.accepted)) == before:
        time.sleep(0.05)
    at, made = accepted[-1]
    client.cancel(futures)
    del futures
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        time.sleep(0.1)
    return {
        "setup": setup,
        "build": built,
        "tasks": tasks,
        "made": made,
        "shipped": shipped,
        "handed": handed,
        "accepted": at - sent,
    }


def row(name: str, label: str, n: int, m: dict) -> str:
    """A markdown row of the table, with ✔/✘ against the goals."""
    goals = (m["build"], m["shipped"], m["accepted"])
    marks = "".join("✔" if value < goal else "✘" for value, goal in zip(goals, GOALS, strict=True))
    return (
        f"| {name} | {label} | {n:,} {FULL[name][1]} | {m['setup']:.1f} | {m['build']:.1f} | "
        f"{m['tasks']:,} | {m['shipped'] / 1e6:.2f} MB | {m['accepted']:.1f} "
        f"({m['handed']:.1f} client) | {marks} |"
    )


def main() -> None:
    """Parse the options, run every (workflow, size) asked for and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflow", nargs="+", choices=sorted(FULL), default=list(DEFAULT))
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["small", "10x"])
    parser.add_argument("--n", type=int, help="one size for every workflow asked for")
    parser.add_argument(
        "--per-task",
        type=int,
        help="galaxies (dre) or TCEs (astronet) per task; default: the library's",
    )
    parser.add_argument(
        "--cadences-known",
        action="store_true",
        help="astronet: read_lightcurves(cadences=...) (no file opened while building)",
    )
    parser.add_argument("--dir", help="where to write the sparse inputs (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the test's sizes")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from cloudlab.testing.scale import SETUPS, AcceptanceClock

    runs = []
    for name in args.workflow:
        full = FULL[name][0]
        if args.quick:
            runs.append((name, "quick", WARM_UP))
        elif args.n:
            runs.append((name, "n", args.n))
        else:
            runs += [(name, size, full // SIZES[size]) for size in args.size]

    root = Path(tempfile.mkdtemp(prefix="cloudlab-scale-", dir=args.dir))
    print(
        "| workflow | size | items | set-up s | build s | tasks | shipped | accepted s | "
        "build, shipped, accepted |\n|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    try:
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,  # fmt: skip
            Client(cluster) as client,
        ):
            client.register_plugin(AcceptanceClock())
            for name in dict.fromkeys(name for name, _, _ in runs):
                # the first build imports the workflow's modules: not part of any figure
                (root / "warm-up").mkdir()
                SETUPS[name](root / "warm-up", WARM_UP)()
                shutil.rmtree(root / "warm-up")
                (root / name).mkdir()
            for name, label, n in runs:
                where = root / f"{name}-{n}"
                where.mkdir()
                figures = measure(client, name, n, where, root / name, args.per_task, args.quick,
                                  args.cadences_known)  # fmt: skip
                print(row(name, label, n, figures), flush=True)
                shutil.rmtree(where)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
