"""``cloudlab backdrop fit|apply``: fit FFI backgrounds, subtract them from target pixel files."""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

from cloudlab.commands._common import add_cluster_argument, cluster_context, run_graph


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
    apply.add_argument("--tpf", required=True, nargs="+", help="TPF URLs (astrocut/TESSCut)")
    apply.add_argument("--out-dir", required=True, help="directory URL for corrected TPFs")
    apply.add_argument("--suffix", default="_bkgsub", help="file-name suffix (default _bkgsub)")
    apply.add_argument("--verbose", action="store_true")
    apply.set_defaults(func=_apply)


def _fit(args: argparse.Namespace) -> int:
    from cloudlab import backdrop
    from cloudlab.backdrop.io import default_name, save_fits, save_masks_fits, save_zarr
    from cloudlab.io.tess import open_ffis

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


def _apply(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloudlab import backdrop, storage

    weights = backdrop.load(args.weights).load()
    failures = []
    for url in tqdm(args.tpf, desc="TPFs", unit="tpf"):
        try:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            stem = name[: -len(".fits")] if name.endswith(".fits") else name.split(".fits")[0]
            dest = f"{args.out_dir.rstrip('/')}/{stem}{args.suffix}.fits"
            storage.write_bytes(dest, correct_tpf(storage.read_bytes(url), weights))
            if args.verbose:
                tqdm.write(f"wrote {dest}")
        except (OSError, ValueError, KeyError) as exc:
            failures.append((url, exc))
            tqdm.write(f"failed {url}: {exc}")
    print(f"{len(args.tpf) - len(failures)} of {len(args.tpf)} TPFs corrected")
    return 1 if failures else 0


def correct_tpf(data: bytes, weights) -> bytes:
    """Subtract the background from one TPF (bytes in, bytes out).

    ``FLUX`` loses the background, ``FLUX_BKG`` (when present) gains it; the corner comes from the
    ``1CRV{n}P``/``2CRV{n}P`` keywords of the ``FLUX`` column (1-based CCD pixels), the frames from
    ``TIME`` (BTJD). Cadences without a fitted frame and pixels outside the fitted region are set
    to NaN.
    """
    import xarray as xr
    from astropy.io import fits

    from cloudlab import backdrop

    with fits.open(io.BytesIO(data)) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
        raise ValueError("not a target pixel file: HDU 1 is not a table")
    table = hdul[1]
    names = [c.upper() for c in table.columns.names]
    if "FLUX" not in names or "TIME" not in names:
        raise ValueError("not a target pixel file: HDU 1 lacks FLUX or TIME")
    n = names.index("FLUX") + 1
    head = table.header
    keys = (f"1CRV{n}P", f"2CRV{n}P")
    if any(k not in head for k in keys):
        raise ValueError(f"TPF lacks the corner keywords {keys}")
    ccd = hdul[0].header.get("CCD")
    if ccd is not None and int(ccd) != int(weights.attrs["ccd"]):
        raise ValueError(f"TPF from CCD {ccd}, weights fitted on CCD {weights.attrs['ccd']}")
    flux = np.asarray(table.data["FLUX"], dtype=np.float64)
    cutouts = xr.Dataset(
        {"flux": (("target", "time", "row", "column"), flux[None])},
        coords={
            "time": np.asarray(table.data["TIME"], float),
            "corner_row": ("target", [int(head[keys[1]]) - 1]),
            "corner_column": ("target", [int(head[keys[0]]) - 1]),
        },
    )
    bkg = backdrop.subtract(cutouts, weights, strict=False)["background"].values[0]
    table.data["FLUX"] = (flux - bkg).astype(table.data["FLUX"].dtype)
    if "FLUX_BKG" in names:
        table.data["FLUX_BKG"] = (table.data["FLUX_BKG"] + bkg).astype(table.data["FLUX"].dtype)
    head["BKGMODEL"] = ("cloudlab backdrop", "scattered-light background subtracted")
    out = io.BytesIO()
    hdul.writeto(out)
    return out.getvalue()
