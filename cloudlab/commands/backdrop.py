"""``cloudlab backdrop fit|apply``: fit FFI backgrounds, subtract them from target pixel files."""

from __future__ import annotations

import argparse
import time

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
    run_graph,
)

__all__ = [
    "register",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``backdrop`` command group."""
    parser = subparsers.add_parser(
        "backdrop", help="TESS FFI scattered-light backgrounds (tess-backdrop's model)"
    )
    sub = parser.add_subparsers(dest="backdrop_command", metavar="ACTION", required=True)

    fit = sub.add_parser("fit", help="fit every frame of one sector/camera/CCD")
    fit.add_argument("--in-dir", required=True, help="directory URL holding the *_ffic.fits[.gz]")
    fit.add_argument("--out-dir", required=True, help="directory URL for the weights")
    fit.add_argument("--pattern", default="*_ffic.fits*", help="frame glob (default *_ffic.fits*)")
    fit.add_argument("--max-frames", type=int, default=None, help="fit only the first N frames")
    fit.add_argument("--frames-per-batch", type=int, default=None, help="frames per task")
    fit.add_argument("--nknots", type=int, default=40, help="spline knots per axis (default 40)")
    fit.add_argument("--npoly", type=int, default=5, help="polynomial order (default 5)")
    fit.add_argument("--nrad", type=int, default=5, help="radial order (default 5)")
    fit.add_argument(
        "--format", choices=("fits", "zarr", "both"), default="fits", help="weights format"
    )
    fit.add_argument("--masks", action="store_true", help="also write the masks/average image")
    fit.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    fit.add_argument("--gpu", action="store_true", help="run the kernels on CuPy")
    add_cluster_argument(fit, " (default: threads)")
    fit.add_argument("--verbose", action="store_true", help="print timings and file names")
    add_overwrite_argument(fit)
    fit.set_defaults(func=_fit)

    apply = sub.add_parser("apply", help="subtract the background from target pixel files")
    apply.add_argument("--weights", required=True, help="weights URL (.fits or .zarr)")
    apply.add_argument(
        "--tpf", required=True, nargs="+", help="TPF URLs or globs (astrocut/TESSCut)"
    )
    apply.add_argument("--out-dir", required=True, help="directory URL for corrected TPFs")
    apply.add_argument("--suffix", default="_bkgsub", help="file-name suffix (default _bkgsub)")
    apply.add_argument("--verbose", action="store_true")
    add_overwrite_argument(apply)
    apply.set_defaults(func=_apply)


def _fit(args: argparse.Namespace) -> int:
    from cloudlab import backdrop
    from cloudlab.backdrop.io import (
        default_name,
        write_masks_fits,
        write_weights_fits,
        write_weights_zarr,
    )
    from cloudlab.io.tess import open_ffis

    backdrop.check_parameters(
        npoly=args.npoly,
        nrad=args.nrad,
        nknots=args.nknots,
        frames_per_batch=args.frames_per_batch,
        max_frames=args.max_frames,
    )
    start = time.perf_counter()
    ffis = open_ffis(f"{args.in_dir.rstrip('/')}/{args.pattern}", on_error=args.on_error)
    if args.max_frames:
        ffis = ffis.isel(time=slice(0, args.max_frames))
    out = args.out_dir.rstrip("/")
    writers = []
    if args.format in ("fits", "both"):
        writers.append((f"{out}/{default_name(ffis)}", write_weights_fits))
    if args.format in ("zarr", "both"):
        writers.append((f"{out}/{default_name(ffis)[:-5]}.zarr", write_weights_zarr))
    if args.masks:
        writers.append((f"{out}/{default_name(ffis, 'masks')}", write_masks_fits))
    check_products([url for url, _ in writers], args)
    a = ffis.attrs
    print(
        f"{ffis.sizes['time']} frames of sector {a['sector']} camera {a['camera']} ccd {a['ccd']}, "
        f"{ffis.sizes['row']} x {ffis.sizes['column']} science pixels"
    )
    weights = backdrop.fit(
        ffis,
        npoly=args.npoly,
        nrad=args.nrad,
        nknots=args.nknots,
        frames_per_batch=args.frames_per_batch,
        gpu=args.gpu,
    )
    with cluster_context(args) as client:
        if client is not None:
            print(f"cluster: {client.dashboard_link}")
        weights = run_graph(weights)
    for t, reason in _failed_frames(weights):
        print(f"frame at time {t}: {reason}")
    for url, write in writers:
        write(weights, url, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    for url, _ in writers:
        print(f"wrote {url}")
    if args.verbose:
        n = weights.sizes["time"]
        print(f"{n} frames in {elapsed:.1f} s ({elapsed / n:.3f} s per frame, setup included)")
    return 0


def _corrected_url(url: str, args: argparse.Namespace) -> str:
    """``OUT_DIR/<stem><suffix>.fits`` for the TPF at ``url``."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    stem = name[: -len(".fits")] if name.endswith(".fits") else name.split(".fits")[0]
    return f"{args.out_dir.rstrip('/')}/{stem}{args.suffix}.fits"


def _failed_frames(weights: object) -> list[tuple[float, str]]:
    from cloudlab.errors import REASON, STATUS, STATUS_OK

    bad = weights[STATUS].values != STATUS_OK
    return list(zip(weights["time"].values[bad], weights[REASON].values[bad].tolist(), strict=True))


def _apply(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloudlab import backdrop, storage
    from cloudlab.backdrop.io import read_weights

    tpfs = storage.expand(args.tpf)
    destinations = [_corrected_url(url, args) for url in tpfs]
    check_products(destinations, args)
    weights = read_weights(args.weights).load()
    failures = []
    for url, dest in zip(tqdm(tpfs, desc="TPFs", unit="tpf"), destinations, strict=True):
        try:
            storage.write_bytes(
                dest,
                backdrop.correct_tpf(storage.read_bytes(url), weights, name=url),
                overwrite=args.overwrite,
            )
            if args.verbose:
                tqdm.write(f"wrote {dest}")
        except (OSError, ValueError, KeyError) as exc:
            failures.append((url, exc))
            tqdm.write(f"failed {url}: {exc}")
    print(f"{len(tpfs) - len(failures)} of {len(tpfs)} TPFs corrected")
    for url, exc in failures:
        print(f"not corrected: {url}: {exc}")
    return 1 if failures else 0
