"""``cloudlab dre sextract|psfex|cuts|models|fit``: DRE's scripts over its directory layout.

Every action works on a root URL (any fsspec URL) holding DRE's folders::

    ROOT/Tiles/{name}.fits                    science tiles
    ROOT/Sextracted/{name}/{name}_*.fits      catalogue (_cat) and check images (_bkg _rms _seg _nb)
    ROOT/PSF/{name}.psf                       PSFEx models
    ROOT/Cuts/{name}_cuts.h5                  cuts (groups EE_NNNN: obj, seg, rms)
    ROOT/Chi/{name}_chi.h5                    χ cubes (datasets EE_NNNN)
    ROOT/Summary/{name}_dre.fits              Summary tables
    ROOT/Mosaics/{name}/{name}_EE_NNNN_mosaic.fits|png
"""

from __future__ import annotations

import argparse
import sys
import warnings

from cloudlab.commands._common import add_cluster_argument, cluster_context, run_graph


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dre`` command group."""
    parser = subparsers.add_parser(
        "dre", help="DRE galaxy fitting: SExtractor, PSFEx, cuts, model grids, chi^2 fits"
    )
    sub = parser.add_subparsers(dest="dre_command", metavar="ACTION", required=True)

    sex = sub.add_parser("sextract", help="run SExtractor on ROOT/Tiles/*.fits")
    _root_args(sex)
    _tool_args(sex, "SExtractor")
    sex.set_defaults(func=_sextract)

    psf = sub.add_parser("psfex", help="run PSFEx on ROOT/Sextracted/*/*_cat.fits")
    _root_args(psf)
    _tool_args(psf, "PSFEx")
    psf.set_defaults(func=_psfex)

    cuts = sub.add_parser("cuts", help="make ROOT/Cuts/{name}_cuts.h5 from tiles + SExtractor")
    _root_args(cuts)
    cuts.add_argument("--size", type=int, default=128, help="cut side (default 128)")
    cuts.add_argument("--margin", type=int, default=80, help="edge margin (default 80)")
    cuts.add_argument(
        "--max-stellarity", type=float, default=1.0, help="keep CLASS_STAR < this (default 1.0)"
    )
    cuts.add_argument(
        "--filter",
        nargs=3,
        action="append",
        default=[],
        metavar=("PARAM", "MIN", "MAX"),
        help="keep MIN < PARAM < MAX",
    )
    cuts.add_argument("--compression", default="medium", choices=("none", "low", "medium", "high"))
    cuts.set_defaults(func=_cuts)

    models = sub.add_parser("models", help="write a Sérsic model grid in DRE's FITS layout")
    models.add_argument("dest", help="FITS URL to write")
    for name, default in (
        ("ax-ratio", (0.1, 0.1, 10)),
        ("angle", (0.0, 15.0, 13)),
        ("log-r", (-0.7, 0.12, 21)),
    ):
        models.add_argument(
            f"--{name}",
            nargs=3,
            type=float,
            default=default,
            metavar=("START", "STEP", "N"),
            help=f"axis values START + i*STEP (default {default})",
        )
    models.add_argument(
        "--index", nargs=3, type=float, metavar=("START", "STEP", "N"), help="Sérsic index axis"
    )
    models.add_argument("--boxsize", type=int, default=128, help="stamp side (default 128)")
    models.set_defaults(func=_models)

    fit = sub.add_parser("fit", help="fit ROOT/Cuts/*_cuts.h5 against a model cube")
    _root_args(fit)
    fit.add_argument("--models", required=True, help="DRE model cube (FITS URL)")
    fit.add_argument("--psf", help="one PSF (.psf or FITS) for every tile instead of ROOT/PSF")
    fit.add_argument("--gpu", action="store_true", help="evaluate chi^2 on the GPU (CuPy)")
    fit.add_argument("--mosaics", action="store_true", help="also write ROOT/Mosaics")
    fit.add_argument("--zarr", action="store_true", help="also write ROOT/Chi/{name}_chi.zarr")
    fit.add_argument("--compression", default="medium", choices=("none", "low", "medium", "high"))
    add_cluster_argument(fit)
    fit.set_defaults(func=_fit)


def _root_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="root URL holding Tiles/, Sextracted/, PSF/, Cuts/ …")
    parser.add_argument("--tile", action="append", help="tile name(s) to process (default: all)")


def _tool_args(parser: argparse.ArgumentParser, tool: str) -> None:
    """``--option KEY=VALUE`` (repeatable) and ``--config`` for an external tool."""
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help=f"{tool} parameter"
    )
    parser.add_argument("--config", help=f"{tool} configuration file instead of cloudlab's")


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _names(args: argparse.Namespace, pattern: str, suffix: str) -> list[str]:
    from cloudlab import storage

    root = args.root.rstrip("/")
    if args.tile:
        return list(args.tile)
    names = [u.rsplit("/", 1)[-1].removesuffix(suffix) for u in storage.expand(f"{root}/{pattern}")]
    if not names:
        raise FileNotFoundError(f"nothing matches {root}/{pattern}")
    return names


def _progress(items: list[str], what: str):
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="tile", file=sys.stderr)


def _sextract(args: argparse.Namespace) -> int:
    from cloudlab.dre import sextract

    root = args.root.rstrip("/")
    for name in _progress(_names(args, "Tiles/*.fits", ".fits"), "sextract"):
        result = sextract(
            f"{root}/Tiles/{name}.fits",
            f"{root}/Sextracted/{name}",
            name=name,
            config=args.config,
            options=_options(args.option),
        )
        print(f"{name}: {len(result.table)} objects -> {result.catalog}")
    return 0


def _psfex(args: argparse.Namespace) -> int:
    from cloudlab.dre import psfex

    root = args.root.rstrip("/")
    for name in _progress(_names(args, "Sextracted/*/*_cat.fits", "_cat.fits"), "psfex"):
        result = psfex(
            f"{root}/Sextracted/{name}/{name}_cat.fits",
            f"{root}/PSF/{name}.psf",
            config=args.config,
            options=_options(args.option),
        )
        print(f"{name}: PSF {result.psf.shape} -> {result.url}")
    return 0


def _cuts(args: argparse.Namespace) -> int:
    from cloudlab.dre import write_cuts_hdf5
    from cloudlab.dre.cuts import open_cuts

    root = args.root.rstrip("/")
    for name in _progress(_names(args, "Tiles/*.fits", ".fits"), "cuts"):
        sx = f"{root}/Sextracted/{name}/{name}"
        cuts = open_cuts(
            f"{root}/Tiles/{name}.fits",
            f"{sx}_cat.fits",
            size=args.size,
            margin=args.margin,
            max_stellarity=args.max_stellarity,
            background=f"{sx}_bkg.fits",
            rms=f"{sx}_rms.fits",
            segmentation=f"{sx}_seg.fits",
            filters={p: (float(lo), float(hi)) for p, lo, hi in args.filter},
        )
        n = write_cuts_hdf5(cuts, f"{root}/Cuts/{name}_cuts.h5", compression=args.compression)
        print(f"{name}: {n} cuts of {cuts.sizes['galaxy']} selected")
    return 0


def _models(args: argparse.Namespace) -> int:
    from cloudlab.dre import model_grid

    def axis(values):
        return None if values is None else (values[0], values[1], int(values[2]))

    cube = model_grid(
        ax_ratio=axis(args.ax_ratio),
        angle=axis(args.angle),
        log_r=axis(args.log_r),
        index=axis(args.index),
        boxsize=args.boxsize,
        url=args.dest,
    )
    print(f"{dict(cube.sizes)} -> {args.dest}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from cloudlab import dre, storage

    root = args.root.rstrip("/")
    models = dre.load_models(args.models)
    with cluster_context(args):
        shared = None
        if args.psf:  # one PSF for every tile: convolve the grid once, as DRE does
            (shared,) = _persist(args, dre.convolve_models(models, args.psf))
        for name in _progress(_names(args, "Cuts/*_cuts.h5", "_cuts.h5"), "fit"):
            psf = args.psf or f"{root}/PSF/{name}.psf"
            fs, path = storage.resolve(psf)
            if not fs.exists(path):
                warnings.warn(f"{name}: no PSF at {psf}; tile skipped", stacklevel=1)
                continue
            cuts = dre.read_cuts_hdf5(f"{root}/Cuts/{name}_cuts.h5")
            tile_models, tile_psf = (models, psf) if shared is None else (shared, None)
            on_gpu = nullcontext()
            if args.gpu:
                from cloudlab.backend import gpu_tasks

                on_gpu = gpu_tasks() if args.cluster else nullcontext()
            with on_gpu:  # GPU work lands on GPU workers only
                if args.gpu:
                    cuts, tile_models = _to_gpu(cuts, tile_models)
                result = dre.fit(cuts, tile_models, tile_psf)
            chi, flag = _persist(args, result["chi"], result["flag"])  # χ computed once
            result = result.assign(chi=chi, flag=flag)
            n = dre.write_chi_hdf5(
                result, f"{root}/Chi/{name}_chi.h5", compression=args.compression
            )
            table = _with_catalog(dre.summarize(result), f"{root}/Sextracted/{name}/{name}")
            dre.write_summary(table, f"{root}/Summary/{name}_dre.fits")
            if args.zarr:
                dre.write_chi_zarr(result, f"{root}/Chi/{name}_chi.zarr")
            if args.mosaics:
                dre.write_mosaics(
                    dre.mosaics(result, cuts), f"{root}/Mosaics/{name}", prefix=f"{name}_"
                )
            print(f"{name}: {n} chi cubes, summary of {len(table)} rows")
    return 0


def _persist(args: argparse.Namespace, *collections):
    """Compute dask collections once, keeping them chunked, with a progress bar."""
    return (
        run_graph(*collections, persist=True)
        if len(collections) > 1
        else (run_graph(*collections, persist=True),)
    )


def _to_gpu(cuts, models):
    from cloudlab.backend import to_gpu

    cuts = cuts.copy()
    for var in ("obj", "seg", "rms", "flag"):
        cuts[var] = cuts[var].copy(data=to_gpu(cuts[var].data))
    return cuts, models.copy(data=to_gpu(models.data))


def _with_catalog(table, prefix: str):
    """Inner-join a Summary table with the tile's SExtractor catalogue, as DRE does."""
    from astropy.table import join

    from cloudlab import storage
    from cloudlab.io.galaxies import read_catalog

    fs, path = storage.resolve(f"{prefix}_cat.fits")
    if not fs.exists(path):
        return table
    catalog = read_catalog(f"{prefix}_cat.fits")
    catalog.remove_columns([c for c in catalog.colnames if catalog[c].ndim > 1])
    keys = [k for k in ("EXT_NUMBER", "NUMBER") if k in catalog.colnames]
    catalog.remove_columns([c for c in catalog.colnames if c in table.colnames and c not in keys])
    return join(table, catalog, keys=keys, join_type="inner")
