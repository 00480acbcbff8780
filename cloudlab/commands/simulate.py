"""``cloudlab simulate KIND ...``: write seeded synthetic data sets with known truth.

Each kind is one function ``_add_<kind>(kinds)`` registered in :data:`KINDS`; adding a kind is
writing such a function and appending it there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cloudlab.commands.timelag import add_simulate_arguments

__all__ = ["KINDS", "register"]


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must be ROWSxCOLS, got {text!r}") from exc
    return rows, cols


def _add_pointing(parser: argparse.ArgumentParser, *, sector: int) -> None:
    """``--sector``, ``--camera`` and ``--ccd`` of a simulated TESS data set."""
    parser.add_argument("--sector", type=int, default=sector)
    parser.add_argument("--camera", type=int, default=1)
    parser.add_argument("--ccd", type=int, default=1)


def _add_tess(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "tess",
        help="a synthetic TESS sector: SPOC-like FFIs and the astrocut-layout cube",
        description="Simulate one TESS sector/camera/CCD (stars with injected transits, "
        "scattered light with straps, photon noise, quality flags) and write its calibrated "
        "FFIs and cutout cube to DEST (any fsspec URL).",
    )
    parser.add_argument("dest", help="destination directory (local path or fsspec URL)")
    _add_pointing(parser, sector=55)
    parser.add_argument("--frames", type=int, default=48, help="number of FFIs (default 48)")
    parser.add_argument(
        "--shape",
        type=_shape,
        default=(208, 214),
        help="ROWSxCOLS (default 208x214; full 2078x2136)",
    )
    parser.add_argument("--stars", type=int, default=None, help="number of stars")
    parser.add_argument("--cadence", type=float, default=200.0, help="cadence in s (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ffis", action="store_true", help="write only the cube")
    parser.add_argument("--no-cube", action="store_true", help="write only the FFIs")
    parser.add_argument(
        "--catalog", help="also write the true star catalog as CSV to this path or URL"
    )
    parser.set_defaults(func=_run_tess)


def _run_tess(args: argparse.Namespace) -> int:
    from cloudlab import storage
    from cloudlab.simulate import tess_sector

    sim = tess_sector(
        args.dest,
        sector=args.sector,
        camera=args.camera,
        ccd=args.ccd,
        n_frames=args.frames,
        shape=args.shape,
        n_stars=args.stars,
        cadence_s=args.cadence,
        seed=args.seed,
        ffis=not args.no_ffis,
        cube=not args.no_cube,
        progress=True,
    )
    if args.catalog:
        storage.write_bytes(args.catalog, sim.stars.to_csv(index=False).encode())
    print(f"sector {sim.sector} camera {sim.camera} ccd {sim.ccd}: {len(sim.tstart)} frames "
          f"of {sim.shape[0]}x{sim.shape[1]}, {len(sim.stars)} stars")  # fmt: skip
    if sim.cube_url:
        print(f"cube: {sim.cube_url}")
    if sim.ffi_urls:
        print(f"FFIs: {len(sim.ffi_urls)} files, first {sim.ffi_urls[0]}")
    if args.catalog:
        print(f"star catalog: {args.catalog}")
    return 0


def _add_vetting(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "vetting",
        help="a TESS sector for vetting: TCEs of planets, binaries and look-alikes, with truth",
        description="Simulate 27 days of one CCD's cube over a small area with planets, "
        "eclipsing binaries, noise TCEs, variable stars and blended neighbours, and write the "
        "cube, a TCE bulk CSV (for 'cloudlab vet --catalog') and the truth to DEST.",
    )
    parser.add_argument("dest", help="destination directory (local path or fsspec URL)")
    _add_pointing(parser, sector=55)
    defaults = {"planets": 4, "ebs": 4, "noise": 4, "variables": 3, "blends": 3}
    for kind, default in defaults.items():
        parser.add_argument(f"--{kind}", type=int, default=default, help=f"default {default}")
    parser.add_argument("--days", type=float, default=27.0, help="sector length (default 27)")
    parser.add_argument("--cadence", type=float, default=1800.0, help="in s (default 1800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_vetting)


def _run_vetting(args: argparse.Namespace) -> int:
    from cloudlab.simulate import vetting_sector

    sim = vetting_sector(
        args.dest, n_planets=args.planets, n_ebs=args.ebs, n_noise=args.noise,
        n_variables=args.variables, n_blends=args.blends, days=args.days,
        cadence_s=args.cadence, sector=args.sector, camera=args.camera, ccd=args.ccd,
        seed=args.seed, progress=True,
    )  # fmt: skip
    counts = sim.tces["kind"].value_counts()
    print(f"{len(sim.tces)} TCEs: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    print(f"cube: {sim.cube_url}\ncatalog: {sim.catalog_url}\ntruth: {sim.truth_url}")
    return 0


def _add_aia(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "aia",
        help="multi-channel AIA FITS series with a known timelag per pixel",
        description="Write one FITS series per AIA channel (JSOC-like headers, RICE-compressed "
        "HDU 1 unless --uncompressed) with known per-pixel timelags between channels "
        "(the same as `cloudlab timelag simulate`).",
    )
    add_simulate_arguments(parser)


def _add_ffis(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "ffis",
        help="a TESS FFI stack with a known scattered-light background (for backdrop)",
        description="Write SPOC-layout calibrated FFIs whose smooth background is known and is "
        "not from the BackDrop model family, with stars and saturated bleed columns.",
    )
    parser.add_argument("dest", help="destination directory (local path or fsspec URL)")
    parser.add_argument("--frames", type=int, default=8, help="number of FFIs (default 8)")
    parser.add_argument(
        "--shape", type=_shape, default=(2048, 2048), help="science ROWSxCOLS (default 2048x2048)"
    )
    _add_pointing(parser, sector=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_ffis)


def _run_ffis(args: argparse.Namespace) -> int:
    from cloudlab.simulate import ffi_stack

    truth = ffi_stack(
        args.dest,
        n_frames=args.frames,
        shape=args.shape,
        sector=args.sector,
        camera=args.camera,
        ccd=args.ccd,
        seed=args.seed,
    )
    print(f"{truth.n_frames} FFIs of sector {truth.sector} camera {truth.camera} ccd {truth.ccd}, "
          f"first {truth.urls[0]}")  # fmt: skip
    return 0


def _add_galaxies(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "galaxies",
        help="a galaxy tile with Sérsic galaxies of known parameters (for dre)",
        description="Write a FITS tile with Sérsic galaxies, stars, a PSF, sky and noise, and "
        "its truth table (FITS) beside it, or in ROOT/Truth/ for a tile in ROOT/Tiles/.",
    )
    parser.add_argument("dest", help="FITS file to write (local path or fsspec URL)")
    parser.add_argument("--shape", type=_shape, default=(512, 512), help="ROWSxCOLS (default 512)")
    parser.add_argument("--galaxies", type=int, default=12, help="number of galaxies (default 12)")
    parser.add_argument("--stars", type=int, default=6, help="number of stars (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_galaxies)


def _run_galaxies(args: argparse.Namespace) -> int:
    import io

    from cloudlab import storage
    from cloudlab.simulate import galaxy_tile
    from cloudlab.simulate.galaxies import truth_url as galaxy_truth_url

    tile = galaxy_tile(
        args.dest, shape=args.shape, n_galaxies=args.galaxies, n_stars=args.stars, seed=args.seed
    )
    truth_url = galaxy_truth_url(args.dest)
    buffer = io.BytesIO()
    tile.truth.write(buffer, format="fits")
    storage.write_bytes(truth_url, buffer.getvalue())
    print(f"tile {args.dest}: {len(tile.truth)} sources; truth {truth_url}")
    return 0


def _add_lightcurves(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "lightcurves",
        help="light curves with injected transits and eclipses, and their TCE table (astronet)",
        description="Write QLP-HDF5 (or FITS) light curves of planets, eclipsing binaries and "
        "junk with known period, epoch, duration and depth, plus tces.csv.",
    )
    parser.add_argument("dest", help="destination directory (local path or fsspec URL)")
    parser.add_argument("--planets", type=int, default=4)
    parser.add_argument("--ebs", type=int, default=4, help="eclipsing binaries (default 4)")
    parser.add_argument("--junk", type=int, default=4, help="non-astrophysical TCEs (default 4)")
    parser.add_argument("--format", choices=("qlp", "fits"), default="qlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_lightcurves)


def _run_lightcurves(args: argparse.Namespace) -> int:
    from cloudlab.simulate import lightcurves

    _, tces = lightcurves(
        args.planets, args.ebs, args.junk, dest=args.dest, fmt=args.format, seed=args.seed
    )
    print(f"{len(tces)} light curves and tces.csv in {args.dest}")
    return 0


KINDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_tess,
    _add_vetting,
    _add_aia,
    _add_ffis,
    _add_galaxies,
    _add_lightcurves,
]
"""One function per ``cloudlab simulate`` kind."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` sub-command and its kinds."""
    parser = subparsers.add_parser("simulate", help="write synthetic data with known truth")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for add in KINDS:
        add(kinds)
