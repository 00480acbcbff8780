"""Test and benchmark helpers: servers that stand in for cloud services on 127.0.0.1, sparse
full-size FITS files, and every workflow's graph over them (:mod:`cloudlab.testing.scale`).

Nothing in the library imports this package; tests and ``benchmarks/`` do.
"""

from cloudlab.testing.objectstore import ObjectStore, Shaper, aws_environment, place_object
from cloudlab.testing.sparse import sparse_fits, sparse_series

__all__ = [
    "ObjectStore",
    "Shaper",
    "aws_environment",
    "place_object",
    "sparse_fits",
    "sparse_series",
]
