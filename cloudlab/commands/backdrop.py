"""``cloudlab backdrop fit|apply``: fit FFI backgrounds, subtract them from target pixel files."""

from __future__ import annotations

import argparse
import time

from cloudlab.commands._common import add_cluster_argument, cluster_context, run_graph

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
    fit.set_defaults(func=_fit)

    apply = sub.add_parser("apply", help="subtract the background from target pixel files")
    apply.add_argument("--weights", required=True, help="weights URL (.fits or .zarr)")
    apply.add_argument(
        "--tpf", required=True, nargs="+", help="TPF URLs or globs (astrocut/TESSCut)"
    )
    apply.add_argument("--out-dir", required=True, help="directory URL for corrected TPFs")
    apply.add_argument("--suffix", default="_bkgsub", help="file-name suffix (default _bkgsub)")
    apply.add_argument("--verbose", action="store_true")
    apply.set_defaults(func=_apply)


def _fit(args: argparse.Namespace) -> int:
    from cloudlab import backdrop
    from cloudlab.backdrop.io import default_name, save_fits, save_masks_fits, save_zarr
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
    out = args.out_dir.rstrip("/")
    written = []
    if args.format in ("fits", "both"):
        written.append(f"{out}/{default_name(weights)}")
        save_fits(weights, written[-1])
    if args.format in ("zarr", "both"):
        written.append(f"{out}/{default_name(weights)[:-5]}.zarr")
        save_zarr(weights, written[-1])
    if args.masks:
        written.append(f"{out}/{default_name(weights, 'masks')}")
        save_masks_fits(weights, written[-1])
    elapsed = time.perf_counter() - start
    for url in written:
        print(f"wrote {url}")
    if args.verbose:
        n = weights.sizes["time"]
        print(f"{n} frames in {elapsed:.1f} s ({elapsed / n:.3f} s per frame, setup included)")
    return 0


def _failed_frames(weights: object) -> list[tuple[float, str]]:
    from cloudlab.errors import REASON, STATUS, STATUS_OK

    bad = weights[STATUS].values != STATUS_OK
    return list(zip(weights["time"].values[bad], weights[REASON].values[bad].tolist(), strict=True))


def _apply(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloudlab import backdrop, storage

    weights = backdrop.load(args.weights).load()
    tpfs = storage.expand(args.tpf)
    failures = []
    for url in tqdm(tpfs, desc="TPFs", unit="tpf"):
        try:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            stem = name[: -len(".fits")] if name.endswith(".fits") else name.split(".fits")[0]
            dest = f"{args.out_dir.rstrip('/')}/{stem}{args.suffix}.fits"
            storage.write_bytes(
                dest, backdrop.correct_tpf(storage.read_bytes(url), weights, name=url)
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
