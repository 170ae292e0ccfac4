"""Datasets: sources (digits, shapes, cifar10, zip, folder, npz) → subsets → the dataset artefact.

Public API: :func:`build_dataset` writes the artefact of a :class:`~diffmem.config.DataConfig`,
:func:`load_dataset` reads it back as ``(ImageSet, label_classes)``; :func:`make_dataset` builds
it in memory; :func:`load_source` reads every image of one source specification.
"""

from diffmem.data.build import BuiltDataset, build_dataset, check_config, load_dataset, make_dataset
from diffmem.data.source import Source
from diffmem.data.sources import SOURCE_KINDS, load_source

__all__ = [
    "SOURCE_KINDS",
    "BuiltDataset",
    "Source",
    "build_dataset",
    "check_config",
    "load_dataset",
    "load_source",
    "make_dataset",
]
