"""Exact memorization measurement: blocked nearest-neighbour search, ratio with a Wilson interval."""

from diffmem.measure.core import MIN_SAMPLES, Measurement, StreamingMeasurer, measure
from diffmem.measure.knn import Neighbours, search
from diffmem.measure.outputs import write_measurement
from diffmem.measure.stats import wilson_interval
from diffmem.measure.vectors import TrainIndex, prepare_train

__all__ = [
    "MIN_SAMPLES", "Measurement", "Neighbours", "StreamingMeasurer", "TrainIndex", "measure", "prepare_train",
    "search", "wilson_interval", "write_measurement",
]
