"""The trained AstroCNN ensemble shipped with cloudlab, and the compact weight format it uses.

A ``.keras`` checkpoint holds the architecture, float32 weights and the optimiser state (24 MB
for a ``local_global`` model).  The shipped form keeps only the weights, in float16, in one
compressed NumPy ``.npz`` archive per ensemble, together with a small JSON header (configuration
name, member names, weight shapes, provenance).  Loading rebuilds each member with
:func:`cloudlab.astronet.model.build` and sets the weights back to float32.

:func:`shipped_models` returns the ensemble packaged under ``cloudlab/data/astronet/``;
:func:`export` (``cloudlab astronet export``) writes the compact form of any checkpoints.
"""

from __future__ import annotations

import io
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cloudlab import storage
from cloudlab.astronet.model import build, get_config
from cloudlab.errors import InputError, NotFoundError

__all__ = [
    "FORMAT",
    "SHIPPED",
    "SHIPPED_CONFIG",
    "compare",
    "export",
    "load_compact",
    "read_header",
    "shipped_models",
]

FORMAT = "cloudlab-astronet-weights/1"
"""Identifier stored in every compact weight archive."""

SHIPPED_CONFIG = "local_global"
"""Configuration of the shipped ensemble: the Astronet-Triage model (201/61-bin views)."""

SHIPPED = Path(str(resources.files("cloudlab") / "data" / "astronet" / "triage_ensemble.npz"))
"""Path of the packaged ensemble."""

_DTYPES = ("float16", "float32")


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def export(
    checkpoints,
    url: str,
    *,
    dtype: str = "float16",
    notes: str = "",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Write the compact (weights-only) form of an ensemble of checkpoints.

    Parameters
    ----------
    checkpoints : str, keras.Model or sequence of them
        ``.keras`` checkpoint URLs (from ``cloudlab astronet train``) or models built with
        :func:`cloudlab.astronet.model.build`; every member must have the same configuration.
    url : str
        Destination ``.npz`` (any fsspec URL).
    dtype : {"float16", "float32"}
        Storage precision of the weights.
    notes : str
        Free text kept in the header (for example the training command).
    overwrite : bool
        Replace an existing file.
    storage_options : dict, optional
        fsspec options (keyword only; never written to the file).

    Returns
    -------
    dict
        The header written (``format``, ``config``, ``dtype``, ``members``, ``shapes``,
        ``notes``) plus ``bytes``, the size of the archive.

    Raises
    ------
    InputError
        No checkpoint, an unknown ``dtype``, or members of different architectures.
    OverwriteError
        ``url`` exists and ``overwrite`` is False (raised before any checkpoint is read).
    """
    if dtype not in _DTYPES:
        raise InputError(f"export: dtype={dtype!r}; choose one of {_DTYPES}")
    members = list(checkpoints) if isinstance(checkpoints, list | tuple) else [checkpoints]
    if not members:
        raise InputError("export: no checkpoint given; pass at least one .keras checkpoint URL")
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    from cloudlab.astronet.train import load

    arrays: dict[str, np.ndarray] = {}
    names, shapes, config = [], None, None
    rebuilt: dict[str, list] = {}
    for k, member in enumerate(members):
        if isinstance(member, str | os.PathLike):
            name = Path(str(member)).name
            model = load(str(member), storage_options=storage_options)
        else:
            name, model = getattr(member, "name", f"member_{k}"), member
        member_config = model.name.removeprefix("astro_cnn_")
        weights = _weights(model)
        member_shapes = [list(w.shape) for w in weights]
        if member_config not in rebuilt:
            get_config(member_config)  # an unknown configuration is refused here
            rebuilt[member_config] = [list(w.shape) for w in build(member_config).get_weights()]
        if member_shapes != rebuilt[member_config]:
            raise InputError(
                f"export: {name} has other weight shapes than cloudlab's {member_config!r} model "
                "(trained with configuration overrides?); only unmodified configurations can be "
                "rebuilt from weights"
            )
        if shapes is None:
            shapes, config = member_shapes, member_config
        elif member_shapes != shapes or member_config != config:
            raise InputError(
                f"export: {name} is a {member_config!r} model with other weight shapes than the "
                f"first member ({config!r}); an ensemble needs one architecture"
            )
        for i, w in enumerate(weights):
            arrays[f"m{k}_w{i:02d}"] = w.astype(dtype)
        names.append(name)
    header = {
        "format": FORMAT,
        "config": config,
        "dtype": dtype,
        "members": names,
        "shapes": shapes,
        "notes": notes,
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.array(json.dumps(header)), **arrays)
    data = buffer.getvalue()
    storage.write_bytes(url, data, overwrite=overwrite, storage_options=storage_options)
    return {**header, "bytes": len(data)}


def _open(url: str, storage_options: dict | None):
    try:
        data = storage.read_bytes(url, storage_options=storage_options)
    except FileNotFoundError as err:
        raise NotFoundError(
            f"AstroNet weights not found: {url}; write them with 'cloudlab astronet export'"
        ) from err
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        header = json.loads(str(archive["header"]))
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as err:
        raise InputError(
            f"{url} is not a cloudlab AstroNet weight archive ({err}); "
            "make one with 'cloudlab astronet export'"
        ) from err
    if header.get("format") != FORMAT:
        raise InputError(
            f"{url} has format {header.get('format')!r}, expected {FORMAT!r}; re-export it with "
            "'cloudlab astronet export'"
        )
    return archive, header


def read_header(url: str = str(SHIPPED), *, storage_options: dict | None = None) -> dict:
    """The JSON header of a compact weight archive (the shipped one by default).

    Parameters
    ----------
    url : str
        Archive written by :func:`export`.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    dict
        ``format``, ``config``, ``dtype``, ``members``, ``shapes``, ``notes``.
    """
    return _open(url, storage_options)[1]


def load_compact(url: str, *, storage_options: dict | None = None) -> list:
    """Rebuild the ensemble stored in a compact weight archive.

    Parameters
    ----------
    url : str
        Archive written by :func:`export`.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    list of keras.Model
        One compiled model per member, with float32 weights.

    Raises
    ------
    NotFoundError
        ``url`` does not exist.
    InputError
        Not an archive of this format, or weights that do not fit the configuration's model.
    """
    archive, header = _open(url, storage_options)
    models = []
    for k, name in enumerate(header["members"]):
        model = build(header["config"])
        expected = [list(w.shape) for w in model.get_weights()]
        if expected != header["shapes"]:
            raise InputError(
                f"{url}: the stored weights of {name} do not fit cloudlab's "
                f"{header['config']!r} model; re-export the checkpoints with this version"
            )
        model.set_weights(
            [archive[f"m{k}_w{i:02d}"].astype(np.float32) for i in range(len(expected))]
        )
        models.append(model)
    return models


def compare(checkpoints, url: str, views, *, threshold: float = 0.5) -> dict[str, Any]:
    """How closely an exported archive reproduces its checkpoints on labelled views.

    Parameters
    ----------
    checkpoints : str, keras.Model or sequence of them
        The ensemble as exported (checkpoint URLs or models).
    url : str
        Archive written by :func:`export` from those checkpoints.
    views : xarray.Dataset
        Views with ``label`` (:func:`cloudlab.astronet.read_tfrecords`).
    threshold : float
        Operating point of the metrics.

    Returns
    -------
    dict
        ``max_probability_difference`` (ensemble mean probabilities, archive against
        checkpoints) and the metrics of both (``checkpoints``, ``exported``; see
        :func:`cloudlab.astronet.train.metrics`).
    """
    from cloudlab.astronet.train import evaluate, load, predict

    members = list(checkpoints) if isinstance(checkpoints, list | tuple) else [checkpoints]
    checkpoints = [load(str(m)) if isinstance(m, str | os.PathLike) else m for m in members]
    exported = load_compact(url)
    difference = np.abs(predict(exported, views) - predict(checkpoints, views))
    return {
        "max_probability_difference": float(difference.max(initial=0.0)),
        "checkpoints": evaluate(checkpoints, views, threshold=threshold),
        "exported": evaluate(exported, views, threshold=threshold),
    }


@lru_cache(maxsize=1)
def _shipped() -> tuple:
    if not SHIPPED.exists():
        raise NotFoundError(
            f"the trained AstroNet ensemble is missing from this installation ({SHIPPED}); "
            "reinstall cloudlab or pass your own checkpoints"
        )
    return tuple(load_compact(str(SHIPPED)))


def shipped_models() -> list:
    """The trained Astronet-Triage ensemble shipped with cloudlab (loaded once, then cached).

    Three ``local_global`` models trained on the Astronet-Triage TFRecords (seeds 1, 2, 3),
    stored as float16 weights; predictions are their mean probability.  They take the
    ``kind="triage"`` views (201-bin global, 61-bin local).

    Returns
    -------
    list of keras.Model

    Raises
    ------
    NotFoundError
        The packaged weights are missing (a broken installation).
    """
    return list(_shipped())
