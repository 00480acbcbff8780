"""``cloudlab references``: virtual Zarr (kerchunk JSON) references to FITS images."""

from __future__ import annotations

import argparse
import json

from cloudlab.commands._common import add_overwrite_argument, check_products

__all__ = ["register"]


def _chunks(text: str) -> str | int | tuple[int, ...]:
    if text == "auto":
        return text
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"chunks must be 'auto', an int or comma-separated ints (e.g. 1,100,2048), got {text!r}"
        ) from exc
    return values[0] if len(values) == 1 else values


def _hdu(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``references`` sub-command."""
    p = subparsers.add_parser(
        "references",
        help="write virtual Zarr (kerchunk JSON) references to a FITS image HDU",
        description="Read the headers of one FITS file (or many, stacked along --concat-dim) "
        "and write kerchunk-format references: zarr metadata plus the byte range of every "
        "chunk in the FITS files, so that xarray/zarr read the images with ranged requests. "
        "Readers must `import cloudlab.fits` (it registers the FITS codecs).",
    )
    p.add_argument("urls", nargs="+", metavar="URL_or_GLOB", help="FITS file(s), URLs or globs")
    p.add_argument("--hdu", type=_hdu, default=0, help="HDU index or EXTNAME (default 0)")
    p.add_argument(
        "--chunks",
        type=_chunks,
        default="auto",
        help="'auto' (default), rows/planes per chunk (int), or a full chunk shape (a,b,c); "
        "tile-compressed images always get one chunk per tile",
    )
    p.add_argument("--concat-dim", help="stack the files along this new dimension (e.g. time)")
    p.add_argument(
        "--keys",
        nargs="+",
        default=(),
        metavar="KEY",
        help="with --concat-dim: header keywords that become coordinates (e.g. TSTART DATE-OBS)",
    )
    p.add_argument("--name", default="data", help="name of the array (default 'data')")
    p.add_argument("--out", required=True, help="output JSON (local path or URL)")
    add_overwrite_argument(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cloudlab.fits import references, write_references

    check_products([args.out], args)
    urls = args.urls[0] if len(args.urls) == 1 else args.urls
    refs = references(
        urls,
        args.hdu,
        chunks=args.chunks,
        concat_dim=args.concat_dim,
        name=args.name,
        keys=args.keys,
    )
    write_references(refs, args.out, overwrite=args.overwrite)
    zarray = json.loads(refs["refs"][f"{args.name}/.zarray"])
    chunks = sum(1 for key in refs["refs"] if not key.rsplit("/", 1)[-1].startswith("."))
    print(
        f"{args.out}: {args.name} shape {tuple(zarray['shape'])} dtype {zarray['dtype']}, "
        f"{chunks} chunks of {tuple(zarray['chunks'])}"
    )
    return 0
