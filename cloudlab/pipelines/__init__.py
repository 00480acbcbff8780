"""Pipelines: chains of workflows as one lazy graph (a TCE catalog to ranked planet candidates)."""

from cloudlab.pipelines.products import write_vetting
from cloudlab.pipelines.vetting import read_catalog, threshold_aperture, vet_tces

__all__ = ["read_catalog", "threshold_aperture", "vet_tces", "write_vetting"]
