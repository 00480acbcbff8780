"""AstroNet TFRecords: write views with the reference's feature names and sharding, read them back.

The record layout follows Astronet-Triage's ``generate_input_records``: one ``tf.train.Example``
per TCE with ``global_view`` (float[201]), ``local_view`` (float[61]), optionally
``secondary_view`` (Vetting), every TCE column typed by value (integers → int64, numbers →
float, text → bytes) and ``is_multi`` (float, 0.0).  The shuffle is
``numpy.random.RandomState(seed).permutation(n)`` split 80/10/10 by position, with the training
part written to 8 shards whose boundaries are ``linspace(0, n_train, 9).astype(int)``.

Records are framed by hand (length, masked CRC-32C, payload, masked CRC-32C) so any fsspec URL
can be read or written; the protobuf messages come from TensorFlow, imported only when needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cloudlab import storage
from cloudlab.astronet.tensorflow_import import load_tensorflow
from cloudlab.errors import REASON, STATUS, InputError, NotFoundError

__all__ = [
    "POSITIVE_DISPOSITIONS",
    "VIEW_FEATURES",
    "frame_records",
    "iter_records",
    "labels",
    "read_tfrecords",
    "split_indices",
    "to_tf_dataset",
    "write_tfrecords",
]

VIEW_FEATURES = ("global_view", "local_view", "secondary_view")
POSITIVE_DISPOSITIONS = {"triage": ("PC", "EB"), "vetting": ("PC",)}

_MASK_DELTA = 0xA282EAD8


def _tf():
    return load_tensorflow()


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_records(payloads: Iterable[bytes]) -> bytes:
    """Frame serialised records in the TFRecord container format.

    Parameters
    ----------
    payloads : iterable of bytes
        Serialised ``tf.train.Example`` messages.

    Returns
    -------
    bytes
        The file contents: for each record its length (uint64), the masked CRC-32C of the
        length, the payload and the masked CRC-32C of the payload.
    """
    out = bytearray()
    for payload in payloads:
        header = struct.pack("<Q", len(payload))
        out += header + struct.pack("<I", _masked_crc(header))
        out += payload + struct.pack("<I", _masked_crc(payload))
    return bytes(out)


def iter_records(data: bytes, *, name: str = "<bytes>", check_crc: bool = False) -> Iterator[bytes]:
    """Split a TFRecord file's contents into record payloads.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        Name used in error messages.
    check_crc : bool
        Verify the payload checksums as well as the framing.

    Yields
    ------
    bytes
        Each record's payload.

    Raises
    ------
    ValueError
        If the file is truncated or a checksum does not match.
    """
    pos, size = 0, len(data)
    index = 0
    while pos < size:
        if pos + 12 > size:
            raise InputError(
                f"{name}: truncated TFRecord header at record {index} (byte {pos}); "
                "the file is incomplete: write it again"
            )
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        if _masked_crc(data[pos : pos + 8]) != len_crc:
            raise InputError(
                f"{name}: corrupt TFRecord length at record {index} (byte {pos}); "
                "the file is damaged or not a TFRecord file"
            )
        start, end = pos + 12, pos + 12 + length
        if end + 4 > size:
            raise InputError(
                f"{name}: truncated TFRecord payload at record {index} (byte {pos}); "
                "the file is incomplete: write it again"
            )
        payload = data[start:end]
        if check_crc:
            (crc,) = struct.unpack_from("<I", data, end)
            if _masked_crc(payload) != crc:
                raise InputError(
                    f"{name}: TFRecord checksum mismatch at record {index}; the file is damaged"
                )
        yield payload
        pos = end + 4
        index += 1


def _feature(value: Any):
    """One ``tf.train.Feature`` typed as the reference types CSV values."""
    tf = _tf()
    if isinstance(value, np.ndarray):
        return tf.train.Feature(float_list=tf.train.FloatList(value=value.astype(np.float32)))
    if isinstance(value, bool | np.bool_):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    if isinstance(value, int | np.integer):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    try:
        number = float(value)
    except (TypeError, ValueError):
        text = str(value).encode("latin-1")
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[number]))


def _examples(views: xr.Dataset, index: np.ndarray) -> Iterator[bytes]:
    tf = _tf()
    series = [name for name in VIEW_FEATURES if name in views]
    columns = [
        name
        for name, var in views.data_vars.items()
        if var.dims == ("tce",) and name not in ("valid", STATUS, REASON)
    ]
    columns += [name for name, coord in views.coords.items() if coord.dims == ("tce",)]
    table = {name: views[name].values for name in columns}
    arrays = {name: np.asarray(views[name].values) for name in series}
    for i in index:
        feature = {name: _feature(np.asarray(arrays[name][i], np.float64)) for name in series}
        for name in columns:
            value = table[name][i]
            if name == "tce" or (isinstance(value, float) and not np.isfinite(value)):
                continue
            feature[name] = _feature(value)
        feature.setdefault("is_multi", _feature(0.0))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        yield example.SerializeToString()


def split_indices(
    n: int, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 123, train_shards: int = 8
) -> dict[str, np.ndarray]:
    """Assign ``n`` records to the reference's shards.

    Parameters
    ----------
    n : int
        Number of records.
    split : (float, float, float)
        Train, validation and test fractions; they must sum to 1.
    seed : int
        Seed of the legacy ``RandomState`` permutation (the reference uses 123).
    train_shards : int
        Number of training shards (8 in the reference).

    Returns
    -------
    dict
        Shard file name → record indices, e.g. ``"train-00000-of-00008"``.
    """
    if len(split) != 3 or min(split) < 0 or not np.isclose(sum(split), 1.0):
        raise InputError(
            f"split={split}: give three non-negative train/validation/test fractions summing to 1"
        )
    order = np.random.RandomState(seed).permutation(n)
    train_cut = int(split[0] * n)
    val_cut = int((split[0] + split[1]) * n)
    bounds = np.linspace(0, train_cut, train_shards + 1).astype(int)
    shards = {
        f"train-{i:05d}-of-{train_shards:05d}": order[bounds[i] : bounds[i + 1]]
        for i in range(train_shards)
    }
    shards["val-00000-of-00001"] = order[train_cut:val_cut]
    shards["test-00000-of-00001"] = order[val_cut:]
    return shards


def write_tfrecords(
    views: xr.Dataset,
    dest: str,
    *,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 123,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write views to AstroNet TFRecord shards (a sink: computes ``views``).

    Follows :mod:`cloudlab.storage`'s overwrite policy: existing shards are refused (naming them)
    before anything is computed unless ``overwrite``; each shard is written in one step.

    Parameters
    ----------
    views : xarray.Dataset
        Output of :func:`cloudlab.astronet.views` (dims ``tce``, ``global_bin``, ``local_bin``);
        TCEs with ``valid == False`` are left out, as the reference skips sparse TCEs.
    dest : str
        Directory URL (any fsspec URL) for ``train-0000i-of-00008``, ``val-00000-of-00001``
        and ``test-00000-of-00001``.
    split : (float, float, float)
        Train, validation and test fractions.
    seed : int
        Shuffle seed (123 in the reference).
    overwrite : bool
        Replace existing shards.
    storage_options : dict, optional
        fsspec options for ``dest``.
    progress : bool
        Progress bar (stderr) while lazy views are computed.

    Returns
    -------
    dict
        Shard name → number of records written.
    """
    from cloudlab.cluster import compute

    for name in ("global_view", "local_view"):
        if name not in views:
            raise InputError(
                f"write_tfrecords: views has no {name!r} variable; got {list(views.data_vars)}"
            )
    shards = list(split_indices(1, split, seed))  # the names only depend on the split
    urls = {shard: f"{dest.rstrip('/')}/{shard}" for shard in shards}
    storage.check_writable([*urls.values()], overwrite=overwrite, storage_options=storage_options)
    (views,) = compute(views, progress=progress and bool(views.chunks))
    if "valid" in views:
        views = views.isel(tce=np.flatnonzero(views["valid"].values))
    counts = {}
    for shard, index in split_indices(views.sizes["tce"], split, seed).items():
        data = frame_records(_examples(views, index))
        storage.write_bytes(urls[shard], data, overwrite=overwrite, storage_options=storage_options)
        counts[shard] = len(index)
    return counts


def _decode(example) -> dict[str, Any]:
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value
        if kind == "bytes_list":
            values = [v.decode("latin-1") for v in values]
        out[name] = values
    return out


def read_tfrecords(
    urls: str | Sequence[str],
    *,
    label: str | None = "triage",
    output: str = "xarray",
    features: Sequence[str] = ("global_view", "local_view"),
    batch_size: int = 64,
    storage_options: dict | None = None,
):
    """Read AstroNet TFRecord files into an xarray Dataset or a ``tf.data.Dataset``.

    Parameters
    ----------
    urls : str or sequence of str
        File URLs or a glob (any fsspec URL).
    label : {"triage", "vetting"} or None
        Add a ``label`` from ``Disposition`` (Triage: PC and EB → 1; Vetting: PC → 1).
    output : {"xarray", "tf"}
        ``"tf"`` streams ``(features, label)`` batches with ``tf.data`` (local files are parsed
        by TensorFlow directly; remote ones go through the xarray reader).
    features : sequence of str
        Time-series features of the ``tf.data`` output, with their lengths taken from the data.
    batch_size : int
        Batch size of the ``tf.data`` output.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    xarray.Dataset or tf.data.Dataset
        ``global_view`` (tce, global_bin), ``local_view`` (tce, local_bin), ``secondary_view``
        (tce, secondary_bin) where present, every scalar feature as a ``tce`` variable
        (mixed-type features such as ``toi_id`` as text) and ``file`` (the shard of each record).
    """
    tf = _tf()
    if output not in ("xarray", "tf"):
        raise InputError(f"output={output!r}: use 'xarray' or 'tf'")
    files = storage.expand(urls, storage_options=storage_options)
    if not files:
        raise NotFoundError(f"no TFRecord files match {urls!r}; check the URL or glob")
    if output == "tf":
        if label is None:
            raise InputError("output='tf' with label=None: pass label='triage' or 'vetting'")
        if all(storage.is_local(u) for u in files):
            return _stream(files, label, features, batch_size)
        ds = read_tfrecords(files, label=label, storage_options=storage_options)
        return to_tf_dataset(ds, features=features, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for url in files:
        data = storage.read_bytes(url, storage_options=storage_options)
        for payload in iter_records(data, name=url, check_crc=True):
            row = _decode(tf.train.Example.FromString(payload))
            row["file"] = [url.rsplit("/", 1)[-1]]
            rows.append(row)
    if not rows:
        raise InputError(f"no records in {files}: the files are empty; write them again")
    dims = {
        "global_view": "global_bin",
        "local_view": "local_bin",
        "secondary_view": "secondary_bin",
    }
    data_vars: dict[str, Any] = {}
    for name, dim in dims.items():
        if name in rows[0]:
            data_vars[name] = (("tce", dim), np.array([r[name] for r in rows], np.float32))
    scalars = sorted({k for r in rows for k in r} - set(dims))
    for name in scalars:
        values = [r[name][0] if r.get(name) else None for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int}:
            data_vars[name] = ("tce", np.array([-1 if v is None else v for v in values], np.int64))
        elif kinds <= {float, int}:
            data_vars[name] = ("tce", np.array([np.nan if v is None else v for v in values]))
        else:
            text = [
                "" if v is None else str(np.float32(v)) if isinstance(v, float) else str(v)
                for v in values
            ]
            data_vars[name] = ("tce", np.array(text))
    ds = xr.Dataset(data_vars)
    if label is not None and "Disposition" in ds:
        ds["label"] = ("tce", labels(ds["Disposition"].values, label))
    return ds


def _stream(files: Sequence[str], label: str, features: Sequence[str], batch_size: int):
    """``tf.data`` pipeline parsing local TFRecord files with TensorFlow."""
    tf = _tf()
    paths = [u.split("://", 1)[-1] for u in files]
    first = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(paths[:1]))).numpy())
    spec = {}
    for name in features:
        if name not in first.features.feature:
            raise InputError(
                f"{files[0]}: no feature {name!r}; choose features from those the records hold"
            )
        length = len(first.features.feature[name].float_list.value)
        spec[name] = tf.io.FixedLenFeature([length], tf.float32)
    spec["Disposition"] = tf.io.FixedLenFeature([], tf.string)
    positive = tf.constant(POSITIVE_DISPOSITIONS[label])

    def parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        disposition = tf.strings.strip(parsed.pop("Disposition"))
        target = tf.reduce_any(tf.equal(disposition, positive))
        return parsed, tf.reshape(tf.cast(target, tf.float32), [1])

    dataset = tf.data.TFRecordDataset(paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(2)


def labels(dispositions: Sequence[str], kind: str = "triage") -> np.ndarray:
    """Map TCE dispositions to 0/1 labels as the reference configurations do.

    Parameters
    ----------
    dispositions : sequence of str
        ``Disposition`` values (PC, EB, J, V, IS, O).
    kind : {"triage", "vetting"}
        Triage counts PC and EB as positive; Vetting only PC.

    Returns
    -------
    numpy.ndarray
        int64 labels.
    """
    if kind not in POSITIVE_DISPOSITIONS:
        raise InputError(f"label kind={kind!r}: use one of {sorted(POSITIVE_DISPOSITIONS)}")
    values = pd.Series(np.asarray(dispositions, dtype=str)).str.strip()
    return values.isin(POSITIVE_DISPOSITIONS[kind]).to_numpy().astype(np.int64)


def to_tf_dataset(
    ds: xr.Dataset,
    *,
    features: Sequence[str] = ("global_view", "local_view"),
    batch_size: int = 64,
    shuffle: bool = False,
    reverse_prob: float = 0.0,
    seed: int | None = None,
    repeat: bool = False,
):
    """Turn a views Dataset into a batched ``tf.data.Dataset`` of ``(features, label)``.

    Parameters
    ----------
    ds : xarray.Dataset
        Views with a ``label`` variable (see :func:`read_tfrecords`).
    features : sequence of str
        Model inputs taken from ``ds``.
    batch_size : int
        Batch size (64 in the reference).
    shuffle : bool
        Shuffle the whole set each pass (the reference's buffer of 15,000 exceeds the set).
    reverse_prob : float
        Probability of reversing all time series of an example together (0.5 when training).
    seed : int, optional
        Seed for shuffling and reversal.
    repeat : bool
        Repeat indefinitely.

    Returns
    -------
    tf.data.Dataset
    """
    tf = _tf()
    n = ds.sizes["tce"]
    inputs = {name: np.asarray(ds[name].values, np.float32).reshape(n, -1) for name in features}
    target = np.asarray(ds["label"].values, np.float32)[:, None]
    dataset = tf.data.Dataset.from_tensor_slices((inputs, target))
    if shuffle:
        dataset = dataset.shuffle(len(target), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if reverse_prob > 0:

        def _reverse(x, y):
            flip = tf.random.uniform((), seed=seed) < reverse_prob
            x = {k: tf.where(flip, tf.reverse(v, axis=[0]), v) for k, v in x.items()}
            return x, y

        dataset = dataset.map(_reverse)
    return dataset.batch(batch_size).prefetch(2)
