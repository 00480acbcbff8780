"""numcodecs codecs that decode FITS pixels: scaling keywords and tile compression.

Importing this module (``import cloudlab.fits`` does it) registers two codecs with
``numcodecs.register_codec``, so that zarr can read the virtual references written by
:func:`cloudlab.fits.references.references`:

- ``cloudlab.fits_scale`` (:class:`FITSScale`): BLANK → NaN, then ``BSCALE * raw + BZERO``,
  giving the dtype astropy gives (pseudo-unsigned integers become ``uint16/32/64``);
- ``cloudlab.fits_tile`` (:class:`FITSTile`): one tile of a tile-compressed image HDU
  (RICE_1, GZIP_1, GZIP_2, HCOMPRESS_1, PLIO_1, NOCOMPRESS), decompressed with astropy's own
  compression functions.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numcodecs
import numpy as np
from astropy.io.fits.hdu.compressed import _tiled_compression as _tiled
from numcodecs.abc import Codec

from cloudlab.errors import FITSFormatError

__all__ = ["COMPRESSIONS", "FITSScale", "FITSTile"]

_RAW_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

#: ZCMPTYPE values :class:`FITSTile` decodes
COMPRESSIONS = ("RICE_1", "RICE_ONE", "GZIP_1", "GZIP_2", "HCOMPRESS_1", "PLIO_1", "NOCOMPRESS")


class FITSScale(Codec):
    """BSCALE/BZERO/BLANK of a FITS image as a numcodecs filter, exactly as astropy applies them.

    Parameters
    ----------
    bscale, bzero : float
        Scaling keywords (``physical = bscale * raw + bzero``).
    blank : int or None
        BLANK of an integer image: those raw values become NaN (not for pseudo-unsigned
        integers, which astropy leaves as they are).
    astype : str
        The stored (raw, big-endian) dtype, e.g. ``">i2"``.
    dtype : str
        The decoded dtype astropy gives, e.g. ``"<f4"`` or ``"<u2"``.
    """

    codec_id = "cloudlab.fits_scale"

    def __init__(
        self,
        bscale: float = 1,
        bzero: float = 0,
        blank: int | None = None,
        *,
        astype: str,
        dtype: str,
    ) -> None:
        self.bscale = bscale
        self.bzero = bzero
        self.blank = None if blank is None else int(blank)
        self.astype = np.dtype(astype).str
        self.dtype = np.dtype(dtype).str

    def get_config(self) -> dict[str, Any]:
        """The codec's JSON configuration."""
        return {
            "id": self.codec_id,
            "bscale": self.bscale,
            "bzero": self.bzero,
            "blank": self.blank,
            "astype": self.astype,
            "dtype": self.dtype,
        }

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """Raw big-endian pixels (bytes or array) → physical values."""
        raw = np.frombuffer(memoryview(np.ascontiguousarray(buf)).cast("B"), dtype=self.astype)
        dtype = np.dtype(self.dtype)
        if dtype.kind == "u" and raw.dtype.kind == "i":  # pseudo-unsigned: BLANK ignored
            data = np.array(raw, dtype=dtype)
            data -= np.uint64(1 << (dtype.itemsize * 8 - 1))
        else:
            blanks = (
                raw == self.blank if self.blank is not None and raw.dtype.kind in "iu" else None
            )
            data = np.array(raw, dtype=dtype)
            if self.bscale != 1:
                np.multiply(data, self.bscale, data)
            if self.bzero != 0:
                data += self.bzero
            if self.blank and blanks is not None and data.dtype.kind == "f":
                data[blanks] = np.nan  # astropy tests ``if self._blank``: BLANK = 0 is ignored
        if out is not None:
            np.copyto(np.asarray(out).reshape(-1).view(dtype), data)
            return out
        return data

    def encode(self, buf: Any) -> bytes:
        """Physical values → raw big-endian pixels (the inverse of :meth:`decode`)."""
        data = np.asarray(buf).reshape(-1).astype(self.dtype, copy=False)
        raw_dtype = np.dtype(self.astype)
        if data.dtype.kind == "u" and raw_dtype.kind == "i":
            shifted = data - np.uint64(1 << (data.dtype.itemsize * 8 - 1))
            return (
                shifted.astype(data.dtype)
                .view(raw_dtype.newbyteorder("="))
                .astype(raw_dtype)
                .tobytes()
            )
        values = (data.astype(np.float64) - self.bzero) / self.bscale
        if raw_dtype.kind in "iu":
            nan = np.isnan(values)
            values = np.round(np.where(nan, 0, values))
            raw = values.astype(raw_dtype)
            if self.blank is not None:
                raw[nan] = self.blank
            return raw.tobytes()
        return values.astype(raw_dtype).tobytes()


class FITSTile(Codec):
    """One tile of a tile-compressed FITS image, decompressed with astropy's functions.

    Lossless tiles only: quantized floating-point tiles carry per-tile ZSCALE/ZZERO and dither
    seeds that a codec (which does not know which tile it decodes) cannot hold. Tiles at the
    image edge that are smaller than ``tile_shape`` are recognised from their content (the
    HCOMPRESS_1 stream header, the length of a gzip stream) and returned zero-padded to the
    full tile, as zarr expects of edge chunks; RICE_1 and PLIO_1 streams do not say their
    length, so those need tiles that divide the image (:meth:`check_edges`).

    Parameters
    ----------
    compression : str
        ZCMPTYPE (one of :data:`COMPRESSIONS`).
    tile_shape : sequence of int
        Shape of the tiles (numpy order).
    bitpix : int
        ZBITPIX of the image.
    shape : sequence of int, optional
        Shape of the image (default: ``tile_shape``), for the edge tiles.
    heap_dtype : str
        dtype of the COMPRESSED_DATA heap array (``"u1"`` for 1PB, ``">i2"`` for 1PI, ...).
    blocksize, bytepix : int, optional
        RICE_1 settings (ZVALn of BLOCKSIZE and BYTEPIX).
    scale, smooth : int, optional
        HCOMPRESS_1 settings.
    """

    codec_id = "cloudlab.fits_tile"

    def __init__(
        self,
        compression: str,
        tile_shape: Any,
        bitpix: int,
        *,
        shape: Any = None,
        heap_dtype: str = "u1",
        blocksize: int = 32,
        bytepix: int = 4,
        scale: int = 0,
        smooth: int = 0,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"FITSTile: compression {compression!r} unknown; expected one of {COMPRESSIONS}"
            )
        self.compression = compression
        self.tile_shape = tuple(int(n) for n in tile_shape)
        self.shape = tuple(int(n) for n in shape) if shape is not None else self.tile_shape
        self.bitpix = int(bitpix)
        self.heap_dtype = np.dtype(heap_dtype).str
        self.blocksize = int(blocksize)
        self.bytepix = int(bytepix)
        self.scale = int(scale)
        self.smooth = int(smooth)

    def get_config(self) -> dict[str, Any]:
        """The codec's JSON configuration."""
        return {
            "id": self.codec_id,
            "compression": self.compression,
            "tile_shape": list(self.tile_shape),
            "bitpix": self.bitpix,
            "shape": list(self.shape),
            "heap_dtype": self.heap_dtype,
            "blocksize": self.blocksize,
            "bytepix": self.bytepix,
            "scale": self.scale,
            "smooth": self.smooth,
        }

    @property
    def _raw_dtype(self) -> np.dtype:
        return np.dtype(_RAW_DTYPES[self.bitpix])

    def _variants(self) -> list[tuple[int, ...]]:
        """Every tile shape in the image: full, or cut at the edge along some axes."""
        options = [
            sorted({t, n % t} - {0}, reverse=True)
            for n, t in zip(self.shape, self.tile_shape, strict=True)
        ]
        return [tuple(v) for v in itertools.product(*options)]

    def check_edges(self, where: str) -> None:
        """Raise unless every tile's shape can be told from its compressed bytes.

        Raises
        ------
        FITSFormatError
            RICE_1/PLIO_1 with tiles that do not divide the image, or gzip edge tiles of equal
            size but different shape; the message starts with ``where``.
        """
        variants = self._variants()
        if len(variants) == 1 or self.compression == "HCOMPRESS_1":
            return
        sizes = [math.prod(v) for v in variants]
        if self.compression in ("RICE_1", "RICE_ONE", "PLIO_1") or len(set(sizes)) < len(sizes):
            raise FITSFormatError(
                f"{where}: {self.compression} tiles of shape {self.tile_shape} do not divide the "
                f"image {self.shape}, and the size of the edge tiles cannot be told from their "
                "bytes; read it with cloudlab.fits.open_hdu, or rewrite it with tiles that divide "
                "the image (e.g. whole rows)"
            )

    def _actual_shape(self, data: np.ndarray) -> tuple[int, ...]:
        variants = self._variants()
        if len(variants) == 1:
            return variants[0]
        if self.compression == "HCOMPRESS_1":  # stream: magic, nx, ny (big-endian int32)
            nx, ny = np.frombuffer(data.view(np.uint8)[2:10].tobytes(), dtype=">i4")
            for v in variants:
                if [n for n in v if n != 1] == [nx, ny]:
                    return v
        else:
            unpacked = np.asarray(_tiled._decompress_tile(data, algorithm="GZIP_1"))
            for v in variants:
                if math.prod(v) * self._raw_dtype.itemsize == unpacked.size:
                    return v
        raise ValueError(f"FITSTile: a tile matches none of the tile shapes {variants}")

    def _settings(self, data: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
        """astropy's settings of the tile decompressor (as ``_header_to_settings`` and
        ``_update_tile_settings`` build them)."""
        size = math.prod(shape)
        if self.compression in ("RICE_1", "RICE_ONE"):
            return {"blocksize": self.blocksize, "bytepix": self.bytepix, "tilesize": size}
        if self.compression == "PLIO_1":
            return {"tilesize": size}
        if self.compression == "GZIP_2":  # the element size, as astropy finds it per tile
            unpacked = np.asarray(_tiled._decompress_tile(data, algorithm="GZIP_1"))
            return {"itemsize": unpacked.size // size}
        if self.compression == "HCOMPRESS_1":
            plane = [n for n in shape if n != 1]
            if len(plane) != 2:
                raise ValueError(f"HCOMPRESS_1 needs two-dimensional tiles, got {shape}")
            return {
                "bytepix": 8,
                "scale": self.scale,
                "smooth": self.smooth,
                "nx": plane[0],
                "ny": plane[1],
            }
        return {}

    def decode_tile(self, buf: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Compressed bytes of a tile whose shape is known → its pixels, in the ZBITPIX dtype
        (native byte order, read-only when astropy's decompressor hands back its buffer).

        Parameters
        ----------
        buf : bytes-like
            The tile's bytes in the heap.
        shape : tuple of int
            The tile's shape (smaller than ``tile_shape`` at the image edge).
        """
        data = np.frombuffer(memoryview(np.ascontiguousarray(buf)).cast("B"), self.heap_dtype)
        decoded = _tiled._decompress_tile(
            data, algorithm=self.compression, **self._settings(data, shape)
        )
        tile = _tiled._finalize_array(
            decoded,
            bitpix=self.bitpix,
            tile_shape=shape,
            algorithm=self.compression,
            lossless=True,
        )
        return np.asarray(tile).reshape(shape)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """Compressed tile bytes → the tile's raw pixels (big-endian, the ZBITPIX dtype),
        zero-padded to the full tile shape."""
        data = np.frombuffer(memoryview(np.ascontiguousarray(buf)).cast("B"), self.heap_dtype)
        shape = self._actual_shape(data)
        raw = self.decode_tile(buf, shape).astype(self._raw_dtype)
        if shape != self.tile_shape:
            full = np.zeros(self.tile_shape, dtype=self._raw_dtype)
            full[tuple(slice(0, n) for n in shape)] = raw
            raw = full
        raw = raw.reshape(-1)
        if out is not None:
            np.copyto(np.asarray(out).reshape(-1).view(self._raw_dtype), raw)
            return out
        return raw

    def encode(self, buf: Any) -> bytes:
        """A full tile's raw pixels → compressed bytes (as astropy writes them)."""
        data = np.asarray(buf).reshape(-1).view(self._raw_dtype).reshape(self.tile_shape)
        if self.compression == "GZIP_2":
            settings = {"itemsize": self._raw_dtype.itemsize}
        else:
            settings = self._settings(np.zeros(0, np.uint8), self.tile_shape)
        return bytes(_tiled._compress_tile(data, algorithm=self.compression, **settings))


numcodecs.register_codec(FITSScale)
numcodecs.register_codec(FITSTile)
