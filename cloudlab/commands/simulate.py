"""``cloudlab simulate KIND ...``: write seeded synthetic data sets with known truth.

Each kind is one function ``_add_<kind>(kinds)`` registered in :data:`KINDS`; adding a kind is
writing such a function and appending it there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must be ROWSxCOLS, got {text!r}") from exc
    return rows, cols


def _add_tess(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "tess",
        help="a synthetic TESS sector: SPOC-like FFIs and the astrocut-layout cube",
        description="Simulate one TESS sector/camera/CCD (stars with injected transits, "
        "scattered light with straps, photon noise, quality flags) and write its calibrated "
        "FFIs and cutout cube to DEST (any fsspec URL).",
    )
    parser.add_argument("dest", help="destination directory (local path or fsspec URL)")
    parser.add_argument("--sector", type=int, default=55)
    parser.add_argument("--camera", type=int, default=1)
    parser.add_argument("--ccd", type=int, default=1)
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


KINDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_tess]
"""One function per ``cloudlab simulate`` kind."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` sub-command and its kinds."""
    parser = subparsers.add_parser("simulate", help="write synthetic data with known truth")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for add in KINDS:
        add(kinds)
