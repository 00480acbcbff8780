"""Train, evaluate and predict with AstroCNN models; checkpoints; ensembles.

From the shell, ``cloudlab astronet train`` runs :func:`train` on a TFRecord directory::

    cloudlab astronet train --data TRIAGE_DIR \\
        --out /tmp/astronet/model_{seed}.keras --steps 14000 --metrics /tmp/astronet/metrics.json
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cloudlab import storage
from cloudlab.astronet.model import Config, build, get_config
from cloudlab.astronet.shipped import shipped_models
from cloudlab.astronet.tensorflow_import import load_tensorflow
from cloudlab.astronet.tfrecords import to_tf_dataset
from cloudlab.errors import InputError, NotFoundError

__all__ = [
    "average_precision",
    "evaluate",
    "load",
    "metrics",
    "predict",
    "roc_auc",
    "save",
    "train",
]


def train(
    train_views: xr.Dataset,
    val_views: xr.Dataset | None = None,
    *,
    config: str | Config = "local_global",
    steps: int | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
    verbose: int = 0,
    **overrides: Any,
):
    """Train one AstroCNN model with the reference's recipe.

    Parameters
    ----------
    train_views, val_views : xarray.Dataset
        Views with ``label`` (see :func:`cloudlab.astronet.read_tfrecords`).
    config : str or Config
        Model configuration; ``overrides`` replace its fields (e.g. ``learning_rate``).
    steps : int, optional
        Training steps (batches); the configuration's ``train_steps`` (14,000) by default,
        rounded up to a whole number of evaluation intervals.
    eval_every : int, optional
        Steps between validation passes; one epoch of ``train_views`` by default (207 steps
        for the Triage training set, as in the reference).
    seed : int
        Seed for initialisation, shuffling and time reversal (ensemble members differ by seed).
    checkpoint : str, optional
        URL to save the model to (``.keras``) after every validation pass and at the end.
    verbose : int
        0: silent; 1: a tqdm progress bar over steps; 2: one JSON line per validation pass.

    Returns
    -------
    (keras.Model, dict)
        The trained model and its history (``step``, ``loss``, ``val_accuracy``, ``val_auc``,
        ``seconds``).
    """
    load_tensorflow()  # keras' backend, imported quietly
    import keras

    cfg = get_config(config, **overrides)
    steps = cfg.train_steps if steps is None else int(steps)
    if steps <= 0:
        raise InputError(f"train: steps must be positive, got {steps}")
    n = train_views.sizes["tce"]
    if n == 0:
        raise InputError("train: train_views holds no TCEs; check the TFRecord glob")
    eval_every = max(1, min(steps, eval_every or int(np.ceil(n / cfg.batch_size))))
    keras.utils.set_random_seed(seed)
    model = build(cfg)
    data = to_tf_dataset(
        train_views,
        features=cfg.features,
        batch_size=cfg.batch_size,
        shuffle=True,
        reverse_prob=cfg.reverse_prob,
        seed=seed,
        repeat=True,
    )
    val = None
    if val_views is not None:
        val = to_tf_dataset(val_views, features=cfg.features, batch_size=256)
    history: dict[str, list] = {"step": [], "seconds": []}
    start = time.perf_counter()

    bar = None
    if verbose == 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training", unit="step")

    class _Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if bar is not None:
                bar.update(1)
                if logs and batch % 50 == 0:
                    bar.set_postfix(loss=f"{float(logs.get('loss', np.nan)):.4f}")

        def on_epoch_end(self, epoch, logs=None):
            history["step"].append((epoch + 1) * eval_every)
            history["seconds"].append(time.perf_counter() - start)
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            if verbose == 2:
                print(json.dumps({k: v[-1] for k, v in history.items()}), flush=True)
            if checkpoint is not None:
                save(self.model, checkpoint)

    model.fit(
        data,
        steps_per_epoch=eval_every,
        epochs=int(np.ceil(steps / eval_every)),
        validation_data=val,
        callbacks=[_Clock()],
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=0,
    )
    if bar is not None:
        bar.close()
    return model, history


def save(model, url: str, *, storage_options: dict | None = None) -> None:
    """Save a model (architecture, weights, optimiser state) to any URL, atomically.

    Parameters
    ----------
    model : keras.Model
        The model.
    url : str
        Destination; a ``.keras`` zip archive is written there.
    storage_options : dict, optional
        fsspec options.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        storage.write_bytes(url, path.read_bytes(), storage_options=storage_options)


def load(url: str, *, storage_options: dict | None = None):
    """Load a model saved by :func:`save`.

    Parameters
    ----------
    url : str
        Checkpoint URL.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    keras.Model
    """
    load_tensorflow()  # keras' backend, imported quietly
    import keras

    try:
        data = storage.read_bytes(url, storage_options=storage_options)
    except FileNotFoundError as err:
        raise NotFoundError(f"AstroNet checkpoint not found: {url}") from err
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            return keras.models.load_model(path)
        except (ValueError, OSError) as err:
            raise InputError(f"{url} is not a readable AstroNet checkpoint: {err}") from err


def _inputs(model, views: xr.Dataset) -> dict[str, np.ndarray]:
    names = [t.name.split(":")[0] for t in model.inputs]
    missing = [name for name in names if name not in views]
    if missing:
        raise InputError(
            f"views lack the model inputs {missing}; have {list(views.data_vars)}: make them with "
            "the model's configuration (kind=)"
        )
    return {
        name: np.asarray(views[name].values, np.float32).reshape(views.sizes["tce"], -1)
        for name in names
    }


def predict(models, views: xr.Dataset, *, batch_size: int = 256) -> np.ndarray:
    """Planet-candidate probabilities, averaged over an ensemble.

    Parameters
    ----------
    models : keras.Model, str, sequence of them, or None
        Models or checkpoint URLs; with several, the mean probability is returned (as the
        reference's ``batch_predict.py``).  ``None``: the ensemble shipped with cloudlab
        (:func:`cloudlab.astronet.shipped.shipped_models`, Triage views).
    views : xarray.Dataset
        Views holding the models' input features.
    batch_size : int
        Inference batch size.

    Returns
    -------
    numpy.ndarray
        Probability per TCE (float64).
    """
    if models is None:
        models = shipped_models()
    if not isinstance(models, list | tuple):
        models = [models]
    if not models:
        raise InputError("predict needs at least one model (a keras.Model or checkpoint URL)")
    n = views.sizes["tce"]
    if n == 0:
        return np.zeros(0)
    total = np.zeros(n)
    for model in models:
        if isinstance(model, str | os.PathLike):
            model = load(str(model))
        logits = model.predict(_inputs(model, views), batch_size=batch_size, verbose=0)
        total += 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64).ravel()))
    return total / len(models)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact area under the ROC curve (Mann-Whitney statistic, ties counted half).

    Parameters
    ----------
    labels : array of 0/1
    scores : array of float

    Returns
    -------
    float
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"AUC needs both positive and negative examples, got {int(n_pos)} positive and "
            f"{int(n_neg)} negative"
        )
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall step curve, as scikit-learn).

    Parameters
    ----------
    labels : array of 0/1
    scores : array of float

    Returns
    -------
    float
    """
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores, np.float64)[order]
    hits = np.cumsum(labels[order])
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = hits[last]
    precision = tp / (last + 1)
    recall = tp / max(labels.sum(), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Classification metrics at ``threshold``, plus threshold-free AUC and average precision.

    Parameters
    ----------
    labels : array of 0/1
    scores : array of float
        Probabilities.
    threshold : float
        Operating point (0.5 for accuracy as in the reference's metrics; the Triage
        ``find_incorrect.py`` operating point is 0.1).

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``auc``, ``average_precision`` (NaN unless both classes occur),
        ``precision``, ``recall``, ``confusion`` ({"tp", "fp", "fn", "tn"}) and ``threshold``.
    """
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int(np.sum(pred & labels)), int(np.sum(pred & ~labels))
    fn, tn = int(np.sum(~pred & labels)), int(np.sum(~pred & ~labels))
    both = 0 < labels.sum() < labels.size  # AUC and AP need both classes
    return {
        "n": int(labels.size),
        "threshold": threshold,
        "accuracy": (tp + tn) / max(labels.size, 1),
        "auc": roc_auc(labels, scores) if both else float("nan"),
        "average_precision": average_precision(labels, scores) if both else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def evaluate(models, views: xr.Dataset, *, threshold: float = 0.5) -> dict[str, Any]:
    """Evaluate a model or ensemble on labelled views.

    Parameters
    ----------
    models : keras.Model, str, sequence of them, or None
        Models or checkpoint URLs (ensemble mean probability); ``None``: the shipped ensemble.
    views : xarray.Dataset
        Views with ``label``.
    threshold : float
        Probability threshold for accuracy, precision, recall and the confusion matrix.

    Returns
    -------
    dict
        See :func:`metrics`.
    """
    if "label" not in views:
        raise InputError("views have no 'label' variable; read them with read_tfrecords(label=...)")
    return metrics(views["label"].values, predict(models, views), threshold)
