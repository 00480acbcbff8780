"""AstroNet: light curves → global/local views → TFRecords → AstroCNN, at catalog scale.

TensorFlow is imported only by the TFRecord, model and training functions.
"""

from cloudlab.astronet.catalog import predict_catalog, read_tces, views, write_predictions
from cloudlab.astronet.shipped import shipped_models
from cloudlab.astronet.tfrecords import read_tfrecords, write_tfrecords
from cloudlab.astronet.views import (
    EmptyLightCurveError,
    SparseLightCurveError,
    batch_views,
    views_for,
)

__all__ = [
    "EmptyLightCurveError",
    "SparseLightCurveError",
    "batch_views",
    "predict_catalog",
    "read_tces",
    "read_tfrecords",
    "shipped_models",
    "views",
    "views_for",
    "write_predictions",
    "write_tfrecords",
]
