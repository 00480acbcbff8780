"""``cloudlab astronet views|train|evaluate|predict|export``: AstroNet from the shell."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Callable

from cloudlab.commands._common import (
    add_cluster_argument,
    add_overwrite_argument,
    check_products,
    cluster_context,
    run_graph,
)
from cloudlab.errors import InputError

__all__ = [
    "register",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``astronet`` command group."""
    parser = subparsers.add_parser(
        "astronet",
        help="AstroNet: light curves -> views -> TFRecords -> CNN train/evaluate/predict",
    )
    sub = parser.add_subparsers(dest="astronet_command", metavar="ACTION", required=True)

    views = sub.add_parser("views", help="views of a TCE catalog, written as AstroNet TFRecords")
    _light_curve_args(views)
    views.add_argument("--dest", required=True, help="output directory (any fsspec URL)")
    views.add_argument("--seed", type=int, default=123, help="shuffle seed (default 123)")
    add_overwrite_argument(views)
    views.set_defaults(func=_views)

    train = sub.add_parser("train", help="train AstroCNN model(s) on TFRecords")
    train.add_argument("--data", required=True, help="directory with train-*, val-* (and test-*)")
    train.add_argument("--out", required=True, help="checkpoint URL; {seed} is replaced per model")
    train.add_argument("--config", default="local_global", help="model configuration")
    train.add_argument("--steps", type=int, default=None, help="training steps (default 14000)")
    train.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate")
    train.add_argument(
        "--eval-every", type=int, default=None, help="steps between validation passes (one epoch)"
    )
    train.add_argument("--seed", type=int, default=1, help="seed of the first model (default 1)")
    train.add_argument(
        "--ensemble", type=int, default=1, help="number of models (seeds SEED..SEED+N-1)"
    )
    train.add_argument(
        "--threshold", type=float, default=0.5, help="operating point of the metrics (0.5)"
    )
    train.add_argument(
        "--extra-threshold",
        type=float,
        nargs="*",
        default=[0.1],
        help="more operating points, reported as SPLIT_at_T (default 0.1)",
    )
    train.add_argument(
        "--log",
        choices=("progress", "json"),
        default="progress",
        help="a progress bar, or one JSON line per validation pass",
    )
    train.add_argument("--metrics", help="also write every model's results (JSON) to this URL")
    add_overwrite_argument(train)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="accuracy, AUC, precision/recall of checkpoints")
    evaluate.add_argument("--data", required=True, help="TFRecord file(s) or glob")
    evaluate.add_argument(
        "--checkpoints", nargs="+", help="ensemble members (default: the shipped Triage ensemble)"
    )
    evaluate.add_argument("--threshold", type=float, default=0.5, help="operating point")
    evaluate.set_defaults(func=_evaluate)

    predict = sub.add_parser("predict", help="ensemble predictions for TFRecords or a catalog")
    predict.add_argument(
        "--checkpoints", nargs="+", help="ensemble members (default: the shipped Triage ensemble)"
    )
    predict.add_argument("--data", help="TFRecord file(s) or glob (instead of light curves)")
    _light_curve_args(predict, required=False)
    predict.add_argument(
        "--out", required=True, help="CSV of predictions, or a .zarr store (any fsspec URL)"
    )
    add_overwrite_argument(predict)
    predict.set_defaults(func=_predict)

    export = sub.add_parser(
        "export", help="compact float16 weights of trained checkpoints (the shipped form)"
    )
    export.add_argument("--checkpoints", nargs="+", required=True, help=".keras checkpoints")
    export.add_argument("--out", required=True, help="destination .npz (any fsspec URL)")
    export.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="weight precision"
    )
    export.add_argument("--notes", default="", help="text kept in the file (training command)")
    export.add_argument(
        "--check",
        help="TFRecords (file or glob): report the largest probability difference between the "
        "checkpoints and the exported weights, and the metrics of both",
    )
    add_overwrite_argument(export)
    export.set_defaults(func=_export)


def _quiet_tensorflow(func: Callable[[argparse.Namespace], int]):
    """Silence TensorFlow's C++ start-up lines (oneDNN, CUDA, absl) unless ``--debug``.

    The variable is read when TensorFlow is first imported, which the actions do lazily, so
    it is set here, before any of them runs; a value the user exported is kept.
    """

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "debug", False):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return func(args)

    return run


def _refuse_if_all_skipped(reasons, what: str) -> None:
    """One line when no TCE is usable, so that nothing empty is written."""
    reasons = [str(r) for r in reasons]
    if reasons and all(reasons):
        common, count = Counter(reasons).most_common(1)[0]
        raise InputError(
            f"all {len(reasons)} TCEs were skipped, nothing {what}; most common reason "
            f"({count}x): {common}"
        )


def _light_curve_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--lightcurves", required=required, help="light-curve files (glob)")
    parser.add_argument("--tces", required=required, help="TCE table (tces.csv)")
    parser.add_argument("--reader", default="qlp", choices=("qlp", "qlp-vetting", "kepler"))
    parser.add_argument("--kind", default="triage", choices=("triage", "vetting", "kepler"))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="TCEs per task (default: from dask's array.chunk-size and the workers' memory)",
    )
    add_cluster_argument(parser)


def _catalog(args: argparse.Namespace):
    from cloudlab import storage
    from cloudlab.astronet import read_tces
    from cloudlab.io.lightcurves import read_lightcurves

    files = storage.expand(args.lightcurves)
    if not files:
        raise FileNotFoundError(f"no light curves match {args.lightcurves}")
    lightcurves = read_lightcurves(files, reader=args.reader)
    return lightcurves, read_tces(args.tces, vetting=args.kind == "vetting")


def _compute(obj, args: argparse.Namespace):
    """Compute with a progress bar, on a cluster when ``--cluster`` is given."""
    with cluster_context(args):
        return run_graph(obj)


@_quiet_tensorflow
def _views(args: argparse.Namespace) -> int:
    from cloudlab.astronet import views, write_tfrecords
    from cloudlab.astronet.tfrecords import split_indices

    dest = args.dest.rstrip("/")
    check_products([f"{dest}/{shard}" for shard in split_indices(1, (0.8, 0.1, 0.1), args.seed)],
                   args)  # fmt: skip
    lightcurves, tces = _catalog(args)
    ds = _compute(views(lightcurves, tces, kind=args.kind, batch_size=args.batch_size), args)
    _refuse_if_all_skipped(ds["reason"].values, f"written to {args.dest}")
    skipped = ds.isel(tce=~ds["valid"].values)
    for tic, reason in zip(skipped["tic_id"].values, skipped["reason"].values, strict=True):
        print(f"skipped TIC {tic}: {reason}", file=sys.stderr)
    counts = write_tfrecords(ds, args.dest, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps({"written": counts, "skipped": int(skipped.sizes["tce"])}, indent=1))
    return 0


@_quiet_tensorflow
def _train(args: argparse.Namespace) -> int:
    from cloudlab import storage
    from cloudlab.astronet.tfrecords import read_tfrecords
    from cloudlab.astronet.train import evaluate, train

    data = args.data.rstrip("/")
    if args.ensemble > 1 and "{seed}" not in args.out:
        raise InputError("--out needs a {seed} placeholder when --ensemble > 1")
    seeds = range(args.seed, args.seed + args.ensemble)
    outs = [args.out.replace("{seed}", str(seed)) for seed in seeds]
    check_products(outs + ([args.metrics] if args.metrics else []), args)
    splits = {"val": read_tfrecords(f"{data}/val-*")}
    if storage.expand(f"{data}/test-*"):
        splits["test"] = read_tfrecords(f"{data}/test-*")
    train_views = read_tfrecords(f"{data}/train-*")
    overrides = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    results = []
    for seed, out in zip(seeds, outs, strict=True):
        model, history = train(
            train_views,
            splits["val"],
            config=args.config,
            steps=args.steps,
            eval_every=args.eval_every,
            seed=seed,
            checkpoint=out,
            verbose=2 if args.log == "json" else 1,
            **overrides,
        )
        result = {"checkpoint": out, "seed": seed, "train_seconds": history["seconds"][-1]}
        for split, views in splits.items():
            result[split] = evaluate(model, views, threshold=args.threshold)
            for extra in args.extra_threshold:
                result[f"{split}_at_{extra:g}"] = evaluate(model, views, threshold=extra)
        print(json.dumps(result, indent=1), flush=True)
        results.append({**result, "history": history})
    if args.metrics:
        document = results[0] if len(results) == 1 else results
        storage.write_bytes(
            args.metrics, json.dumps(document, indent=1).encode(), overwrite=args.overwrite
        )
    return 0


@_quiet_tensorflow
def _evaluate(args: argparse.Namespace) -> int:
    from cloudlab.astronet.tfrecords import read_tfrecords
    from cloudlab.astronet.train import evaluate

    result = evaluate(args.checkpoints, read_tfrecords(args.data), threshold=args.threshold)
    print(json.dumps(result, indent=1))
    return 0


@_quiet_tensorflow
def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from cloudlab import storage

    check_products([args.out], args)
    if args.lightcurves and args.tces and not args.data:
        from cloudlab.astronet import predict_catalog, write_predictions

        lightcurves, tces = _catalog(args)
        graph = predict_catalog(
            lightcurves, tces, args.checkpoints, kind=args.kind, batch_size=args.batch_size
        )
        columns = [c for c in ("row_id", "tic_id", "Disposition") if c in tces]
        with cluster_context(args):  # each batch's predictions written, never the whole catalog
            counts = write_predictions(graph, args.out, columns=columns, overwrite=args.overwrite)
        print(f"wrote {counts['written']} predictions to {args.out} "
              f"({counts['skipped']} TCEs skipped, with their reasons)")  # fmt: skip
        return 0
    if not args.data:
        raise InputError("give --data (TFRecords) or --lightcurves and --tces")
    from cloudlab.astronet.tfrecords import read_tfrecords
    from cloudlab.astronet.train import predict

    ds = read_tfrecords(args.data, label=None)
    ds["prediction"] = ("tce", predict(args.checkpoints, ds))
    columns = [c for c in ("row_id", "tic_id", "Disposition") if c in ds]
    table = pd.DataFrame({c: ds[c].values for c in columns})
    table["prediction"] = ds["prediction"].values
    storage.write_bytes(args.out, table.to_csv(index=False).encode(), overwrite=args.overwrite)
    print(f"wrote {len(table)} predictions to {args.out}")
    return 0


@_quiet_tensorflow
def _export(args: argparse.Namespace) -> int:
    from cloudlab.astronet.shipped import compare, export

    check_products([args.out], args)
    header = export(
        args.checkpoints, args.out, dtype=args.dtype, notes=args.notes, overwrite=args.overwrite
    )
    result = {k: header[k] for k in ("config", "dtype", "members", "bytes")}
    if args.check:
        from cloudlab.astronet.tfrecords import read_tfrecords

        result.update(compare(args.checkpoints, args.out, read_tfrecords(args.check)))
    print(json.dumps(result, indent=1))
    return 0
