"""The AstroCNN model of Astronet-Triage / Astronet-Vetting / exoplanet-ml, in tf.keras.

One convolutional column per time series: *B* blocks of two ``Conv1D`` (16·2^i filters, kernel 5,
``same`` padding, ReLU) followed by ``MaxPool1D`` (pool *p*, stride 2, ``valid``), then flatten.
Columns are concatenated in the order of their sorted feature names, auxiliary scalars last,
followed by four ``Dense(512, relu)`` layers and one logit.  Kernels are Glorot-uniform and biases
zero (the TF1 ``tf.layers`` defaults).  The ``local_global`` (Triage) model has 2,026,721
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cloudlab.astronet.tensorflow_import import load_tensorflow
from cloudlab.errors import InputError

__all__ = ["CONFIGS", "Column", "Config", "build", "compile_model", "get_config"]


@dataclass(frozen=True)
class Column:
    """One convolutional column of the AstroCNN model.

    Attributes
    ----------
    length : int
        Input length (number of bins).
    blocks : int
        Number of conv blocks.
    pool : int
        Max-pool size (stride 2).
    filters : int
        Filters of the first block; doubled at each block.
    kernel : int
        Convolution kernel size.
    convs_per_block : int
        Conv layers per block.
    """

    length: int
    blocks: int
    pool: int
    filters: int = 16
    kernel: int = 5
    convs_per_block: int = 2


@dataclass(frozen=True)
class Config:
    """Model and training settings of one AstroNet configuration.

    Attributes
    ----------
    name : str
        Configuration name.
    columns : dict
        Time-series feature name → :class:`Column`.
    aux : tuple of str
        Scalar features fed directly to the head.
    dense_layers, dense_units : int
        Fully connected head.
    learning_rate, epsilon : float
        Adam settings (TF1 defaults for the betas).
    batch_size, train_steps : int
        Training schedule.
    reverse_prob : float
        Probability of time-reversal augmentation.
    label : str
        Label mapping (``"triage"``: PC, EB → 1; ``"vetting"``: PC → 1).
    """

    name: str
    columns: dict[str, Column]
    aux: tuple[str, ...] = ()
    dense_layers: int = 4
    dense_units: int = 512
    learning_rate: float = 1e-5
    epsilon: float = 1e-8
    batch_size: int = 64
    train_steps: int = 14000
    reverse_prob: float = 0.5
    label: str = "triage"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        """Model inputs in the reference's order: sorted time series, then auxiliary features."""
        return tuple(sorted(self.columns)) + tuple(sorted(self.aux))


CONFIGS: dict[str, Config] = {
    "local_global": Config(
        "local_global",
        {"global_view": Column(201, 5, 5), "local_view": Column(61, 2, 7)},
    ),
    "vetting": Config(
        "vetting",
        {
            "global_view": Column(201, 5, 5),
            "local_view": Column(61, 2, 7),
            "secondary_view": Column(61, 2, 7),
        },
        aux=("depth_change",),
        label="vetting",
    ),
    "kepler": Config(
        "kepler",
        {"global_view": Column(2001, 5, 5), "local_view": Column(201, 2, 7)},
        label="triage",
    ),
}


def get_config(config: str | Config = "local_global", **overrides: Any) -> Config:
    """Look up a configuration by name, optionally overriding fields.

    Parameters
    ----------
    config : str or Config
        ``"local_global"`` (Triage), ``"vetting"`` or ``"kepler"``, or a Config.
    **overrides
        Field replacements, e.g. ``learning_rate=1e-4`` or a smaller ``dense_units``.

    Returns
    -------
    Config
    """
    if isinstance(config, str):
        if config not in CONFIGS:
            raise InputError(f"unknown AstroNet config {config!r}; choose one of {sorted(CONFIGS)}")
        config = CONFIGS[config]
    return replace(config, **overrides) if overrides else config


def build(config: str | Config = "local_global", **overrides: Any):
    """Build (and compile) the AstroCNN model.

    Parameters
    ----------
    config : str or Config
        Configuration name or object (see :data:`CONFIGS`).
    **overrides
        Config field overrides (for tiny test models: ``dense_units=8``, ...).

    Returns
    -------
    keras.Model
        Inputs: one per feature (shape ``(length,)`` or ``(1,)``); output: one logit.  Compiled
        with Adam(lr, ε), sigmoid cross-entropy on logits, accuracy and AUC (1000 thresholds).
    """
    load_tensorflow()  # keras' backend, imported quietly
    import keras
    from keras import layers

    cfg = get_config(config, **overrides)
    inputs, towers = {}, []
    for name in sorted(cfg.columns):
        col = cfg.columns[name]
        x = inputs[name] = keras.Input((col.length,), name=name)
        x = layers.Reshape((col.length, 1), name=f"{name}_reshape")(x)
        for b in range(col.blocks):
            for c in range(col.convs_per_block):
                x = layers.Conv1D(
                    col.filters * 2**b,
                    col.kernel,
                    padding="same",
                    activation="relu",
                    name=f"{name}_block_{b + 1}_conv_{c + 1}",
                )(x)
            x = layers.MaxPool1D(col.pool, strides=2, name=f"{name}_block_{b + 1}_pool")(x)
        towers.append(layers.Flatten(name=f"{name}_flatten")(x))
    for name in sorted(cfg.aux):
        towers.append(inputs.setdefault(name, keras.Input((1,), name=name)))
    x = layers.Concatenate(name="pre_logits_concat")(towers) if len(towers) > 1 else towers[0]
    for i in range(cfg.dense_layers):
        x = layers.Dense(cfg.dense_units, activation="relu", name=f"fully_connected_{i + 1}")(x)
    logits = layers.Dense(1, name="logits")(x)
    model = keras.Model(inputs, logits, name=f"astro_cnn_{cfg.name}")
    compile_model(model, cfg)
    return model


def compile_model(model, config: str | Config = "local_global") -> None:
    """Compile ``model`` with the reference's optimiser, loss and metrics.

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build`.
    config : str or Config
        Supplies the learning rate and Adam epsilon.
    """
    load_tensorflow()  # keras' backend, imported quietly
    import keras

    cfg = get_config(config)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.epsilon),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"),
            keras.metrics.AUC(num_thresholds=1000, from_logits=True, name="auc"),
        ],
    )
