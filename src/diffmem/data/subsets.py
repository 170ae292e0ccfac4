"""Drawing subsets: class-balanced, nested across sizes, with an optional second source mixed in.

Every candidate image gets a place in one seeded *priority order*; the subset of size N is the
first N images of that order. The order is built so that every prefix is as class-balanced as the
class counts allow: round r takes the r-th image (in a seeded per-class permutation) of every
class that still has one, in a seeded class order. A prefix of length N therefore gives each
class ⌊N/C⌋ or ⌈N/C⌉ images while every class has enough, and fills up from the larger classes
when some run out ("water filling").

Nested (the default): the order depends on the seed only, so for one seed the subset of size N₁
is contained in — and is the prefix of — the subset of size N₂ > N₁. Independent: the order is
seeded by (seed, N), so different sizes are independent draws.

Mixing at rate A: within each class, slot k of the class's sequence comes from the second source
when ⌊(k+1)A + ½⌋ > ⌊kA + ½⌋, so any prefix of n images of a class holds ⌊nA + ½⌋ mixed ones.
"""

from __future__ import annotations

import numpy as np

from diffmem.seeds import RANDOM_LABELS, SUBSET_ORDER


def subset_rng(seed: int, size: int | None, nested: bool, stream: int) -> np.random.Generator:
    """The generator of one random stream (:data:`~diffmem.seeds.SUBSET_ORDER` or
    :data:`~diffmem.seeds.RANDOM_LABELS`) of one draw."""
    if nested or size is None:
        return np.random.default_rng([seed, stream])
    return np.random.default_rng([seed, stream, size])


def mix_pattern(n: int, rate: float) -> np.ndarray:
    """Boolean slot pattern of length n: True where the slot takes an image of the second source."""
    k = np.arange(n + 1, dtype=np.float64)
    cum = np.floor(k * rate + 0.5)  # mixed images among the first k slots
    return np.diff(cum) > 0


def class_sequence(primary: np.ndarray, mixed: np.ndarray, rate: float) -> np.ndarray:
    """Interleave two already-permuted index lists at ``rate``; stop where a needed list runs out."""
    if rate <= 0.0:
        return primary
    n_max = primary.size + mixed.size
    pattern = mix_pattern(n_max, rate)
    take_mix = np.cumsum(pattern)  # mixed images used up to and including each slot
    take_primary = np.arange(1, n_max + 1) - take_mix
    ok = (take_mix <= mixed.size) & (take_primary <= primary.size)
    n = int(np.argmin(ok)) if not ok.all() else n_max  # first slot that would overdraw a list
    pattern = pattern[:n]
    seq = np.empty(n, dtype=np.int64)
    seq[pattern] = mixed[: int(pattern.sum())]
    seq[~pattern] = primary[: n - int(pattern.sum())]
    return seq


def class_sequences(
    class_of: np.ndarray,              # class index (0..C−1) of each primary candidate
    mix_class_of: np.ndarray | None,   # class index of each mix candidate, or None (no mixing)
    mix_rate: float,                   # fraction A of each class taken from the mix
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Per class, the seeded sequence of candidate indices (mix candidates offset by len(class_of))."""
    n_primary = class_of.size
    classes = int(class_of.max()) + 1 if class_of.size else 0
    seqs = []
    for c in range(classes):
        primary = rng.permutation(np.flatnonzero(class_of == c))
        if mix_class_of is None:
            seqs.append(primary)
            continue
        mixed = rng.permutation(np.flatnonzero(mix_class_of == c)) + n_primary
        seqs.append(class_sequence(primary, mixed, mix_rate))
    return seqs


def interleave(seqs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Round-robin over the class sequences with a seeded class order in every round."""
    lengths = np.array([s.size for s in seqs], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    tiebreak = rng.random((int(lengths.max()), len(seqs)))  # key of class c in round r
    items = np.concatenate(seqs)
    cls = np.repeat(np.arange(len(seqs)), lengths)
    rank = np.concatenate([np.arange(n) for n in lengths])
    order = np.lexsort((tiebreak[rank, cls], rank))  # by round, then by the round's class order
    return items[order]


def priority_order(
    class_of: np.ndarray,
    *,
    seed: int,
    size: int | None,
    nested: bool = True,
    mix_class_of: np.ndarray | None = None,
    mix_rate: float = 0.0,
) -> np.ndarray:
    """All drawable candidates in priority order; the first N form the subset of size N."""
    rng = subset_rng(seed, size, nested, stream=SUBSET_ORDER)
    return interleave(class_sequences(class_of, mix_class_of, mix_rate, rng), rng)


def assign_labels(
    mode: str,
    true_labels: np.ndarray,   # class index of each chosen image (in subset order)
    *,
    label_classes: int | None,
    seed: int,
    size: int | None,
    nested: bool,
    order_length: int,
) -> tuple[np.ndarray, int]:
    """Labels of the chosen images and ``label_classes`` (0 = unlabeled) for a label mode.

    ``random`` draws uniform labels from K classes for the whole priority order and keeps the
    prefix, so nested subsets keep their labels.
    """
    n = true_labels.size
    if mode == "true":
        return true_labels.astype(np.int64), int(label_classes or 0)
    if mode == "none":
        return np.full(n, -1, dtype=np.int64), 0
    if mode == "random":
        rng = subset_rng(seed, size, nested, stream=RANDOM_LABELS)
        return rng.integers(0, label_classes, size=order_length, dtype=np.int64)[:n], int(label_classes)
    if mode == "unique":
        return np.arange(n, dtype=np.int64), n
    raise ValueError(f"unknown label mode {mode!r}")
