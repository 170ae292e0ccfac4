"""What every data source gives back, and the helpers the loaders share.

A loader (:mod:`diffmem.data.sources` keeps the table of them) reads every image of one source into a
:class:`Source`; the loaders import this module, and the table imports the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffmem.io import names_array


@dataclass(frozen=True)
class Source:
    """All images of one source, before any subset is drawn."""

    images: np.ndarray  # uint8 M×C×H×W
    labels: np.ndarray | None  # int64 M with values 0..len(class_names)-1, or None (unlabeled)
    class_names: tuple[str, ...] = ()  # one per label value; () when unlabeled
    spec: str = ""  # the specification it was loaded from
    inputs: dict = field(default_factory=dict)  # content hashes of the files read
    names: np.ndarray | None = None  # str M: relative path in the folder or zip; None: no file names

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image_names(self) -> np.ndarray:
        """Each image's name: its file name where it has one, else ``KIND:INDEX`` (``digits:1234``)."""
        if self.names is not None:
            return self.names
        kind = self.spec.partition(":")[0] or "source"
        return names_array([f"{kind}:{i}" for i in range(len(self))])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labels is not None else 0


def relabel(raw: np.ndarray, names: list[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map arbitrary integer labels to 0..C−1 in sorted order; names default to the original values."""
    values, labels = np.unique(raw, return_inverse=True)
    if names is None:
        names = [str(int(v)) for v in values]
    else:
        names = [names[int(v)] if 0 <= int(v) < len(names) else str(int(v)) for v in values]
    return labels.astype(np.int64).reshape(-1), tuple(names)
