"""Datasets: sources (digits, shapes, cifar10, zip, folder, npz) → subsets → the dataset artefact.

Public API: :func:`build_dataset` writes the artefact of a :class:`~diffmem.config.DataConfig`,
:func:`load_dataset` reads it back as ``(ImageSet, label_classes)``; :func:`make_dataset` builds
it in memory; :func:`load_source` reads every image of one source specification; :func:`validate_data`
refuses a config that cannot be built before any source is read.
"""

from diffmem.data.build import BuiltDataset, build_dataset, load_dataset, make_dataset, validate_data
from diffmem.data.source import Source
from diffmem.data.sources import SOURCE_KINDS, load_source

__all__ = [
    "SOURCE_KINDS",
    "BuiltDataset",
    "Source",
    "build_dataset",
    "load_dataset",
    "load_source",
    "make_dataset",
    "validate_data",
]
