"""Exact memorization measurement: blocked nearest-neighbour search, ratio with a Wilson interval;
the per-sample table and copy ranking by name; the held-out baseline and the data-copying test."""

from diffmem.measure.core import MIN_SAMPLES, Measurement, StreamingMeasurer, measure, validate_measure
from diffmem.measure.heldout import HeldoutReference, prepare_heldout
from diffmem.measure.knn import Neighbours, search
from diffmem.measure.outputs import full_summary, write_measurement
from diffmem.measure.stats import wilson_interval
from diffmem.measure.tables import TableNames
from diffmem.measure.vectors import TrainIndex, prepare_train

__all__ = [
    "MIN_SAMPLES", "HeldoutReference", "Measurement", "Neighbours", "StreamingMeasurer", "TableNames", "TrainIndex",
    "full_summary", "measure", "prepare_heldout", "prepare_train", "search", "validate_measure", "wilson_interval",
    "write_measurement",
]
