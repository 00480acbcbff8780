"""``cloudlab dre sextract|psfex|cuts|models|fit``: DRE's scripts over its directory layout.

Every action works on a root URL holding DRE's folders (see :mod:`cloudlab.dre.pipeline`, which
does the work; this module only parses arguments and prints).
"""

from __future__ import annotations

import argparse

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
)

__all__ = [
    "register",
]


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
    add_overwrite_argument(models)
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
    add_overwrite_argument(parser)


def _tool_args(parser: argparse.ArgumentParser, tool: str) -> None:
    """``--option KEY=VALUE`` (repeatable) and ``--config`` for an external tool."""
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help=f"{tool} parameter"
    )
    parser.add_argument("--config", help=f"{tool} configuration file instead of cloudlab's")


def _options(pairs: list[str]) -> dict[str, str]:
    from cloudlab.errors import InputError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _check(args: argparse.Namespace, step: str, **extras: bool) -> None:
    """Refuse existing products of ``step`` for the tiles it would process, before any work."""
    from cloudlab.dre.pipeline import Layout, step_products

    layout = Layout(args.root)
    check_products(step_products(layout, step, layout.names(step, args.tile), **extras), args)


def _sextract(args: argparse.Namespace) -> int:
    from cloudlab.dre.pipeline import sextract_tiles

    options = _options(args.option)  # a malformed option is named before anything else
    _check(args, "sextract")
    done = sextract_tiles(
        args.root,
        tiles=args.tile,
        config=args.config,
        options=options,
        overwrite=args.overwrite,
    )
    for name, result in done.items():
        print(f"{name}: {len(result.table)} objects -> {result.catalog}")
    return 0


def _psfex(args: argparse.Namespace) -> int:
    from cloudlab.dre.pipeline import psfex_tiles

    options = _options(args.option)  # a malformed option is named before anything else
    _check(args, "psfex")
    done = psfex_tiles(
        args.root,
        tiles=args.tile,
        config=args.config,
        options=options,
        overwrite=args.overwrite,
    )
    for name, result in done.items():
        print(f"{name}: PSF {result.psf.shape} -> {result.url}")
    return 0


def _cuts(args: argparse.Namespace) -> int:
    from cloudlab.dre.pipeline import cut_tiles

    _check(args, "cuts")
    done = cut_tiles(
        args.root,
        tiles=args.tile,
        size=args.size,
        margin=args.margin,
        max_stellarity=args.max_stellarity,
        filters={p: (float(lo), float(hi)) for p, lo, hi in args.filter},
        compression=args.compression,
        overwrite=args.overwrite,
    )
    for name, (written, selected) in done.items():
        print(f"{name}: {written} cuts of {selected} selected")
    return 0


def _models(args: argparse.Namespace) -> int:
    from cloudlab.dre import model_grid
    from cloudlab.errors import InputError

    def axis(values, option):
        if values is None:
            return None
        start, step, count = values
        if not float(count).is_integer() or count < 1:
            raise InputError(f"{option} START STEP N: N must be a positive integer, got {count:g}")
        return start, step, int(count)

    check_products([args.dest], args)

    cube = model_grid(
        ax_ratio=axis(args.ax_ratio, "--ax-ratio"),
        angle=axis(args.angle, "--angle"),
        log_r=axis(args.log_r, "--log-r"),
        index=axis(args.index, "--index"),
        boxsize=args.boxsize,
        url=args.dest,
    )
    print(f"{dict(cube.sizes)} -> {args.dest}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from cloudlab.dre.pipeline import fit_tiles

    _check(args, "fit", zarr=args.zarr, mosaics=args.mosaics)
    with cluster_context(args):
        done = fit_tiles(
            args.root,
            args.models,
            tiles=args.tile,
            psf=args.psf,
            gpu=args.gpu,
            mosaics=args.mosaics,
            zarr=args.zarr,
            compression=args.compression,
            overwrite=args.overwrite,
        )
    for name, record in done.items():
        if record.status == "ok":
            print(f"{name}: {record.n_chi} chi cubes, summary of {record.n_summary} rows")
        else:
            print(f"{name}: FAILED, {record.status} ({record.reason})")
    failed = sum(record.status != "ok" for record in done.values())
    print(f"{len(done) - failed} of {len(done)} tiles fitted, {failed} failed")
    return 1 if failed else 0
