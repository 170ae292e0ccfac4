"""The dataset artefact: build it from a :class:`~diffmem.config.DataConfig`, load it back.

A dataset artefact is a directory with ``dataset.npz`` (``images`` uint8 N×C×H×W, ``labels``
int64 N (−1 = unlabeled), ``source_ids`` int64 N — each image's index in its source —, ``names``
str N — each image's relative path in the folder or zip it came from, ``KIND:INDEX`` (``digits:1234``)
for sources without file names, prefixed ``mix:`` for ``data.mix`` images — and ``origin`` uint8 N:
0 = ``data.source``, 1 = ``data.mix``) and ``manifest.json`` (stage ``dataset``, the
config, content hashes, the integer ``label_classes`` and the ``duplicates`` report).
Images are stored in priority order: for one seed, the dataset of size N₁ is the first N₁
images of the dataset of size N₂ > N₁ (see :mod:`diffmem.data.subsets`).

``data.classes`` C keeps the first C classes (label values 0..C−1 of the source, whose labels are
numbered in sorted order of its own class ids). With ``data.mix``, when both sources are labeled the
classes are matched by that index (class c of the mix fills class c) and the mix images are
downsampled to the target resolution; when either is unlabeled the two are pooled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.artefacts import array_hash, atomic_dir, check_new_dir, is_complete, read_manifest, write_manifest
from diffmem.config import DataConfig
from diffmem.data.duplicates import duplicate_report
from diffmem.data.resize import RESAMPLE_FILTERS, downsample
from diffmem.data.source import Source
from diffmem.data.sources import check_spec, load_source
from diffmem.data.subsets import assign_labels, priority_order
from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet, load_images, load_npz, names_array, save_image_set
from diffmem.progress import progress_bar

log = logging.getLogger(__name__)

STAGE = "dataset"
LABEL_MODES = ("true", "none", "random", "unique")


@dataclass(frozen=True)
class BuiltDataset:
    """A dataset in memory, before it is written: the arrays and the manifest's extra fields."""

    images: np.ndarray
    labels: np.ndarray
    source_ids: np.ndarray
    origin: np.ndarray
    info: dict[str, Any]
    inputs: dict[str, Any]
    names: np.ndarray | None = None  # str N: each image's name in its source (``data.mix`` images: ``mix:NAME``)


def validate_data(cfg: DataConfig, *, where: str = "data", sources: bool = True) -> None:
    """Refuse the first field of a data config that is wrong whatever the source holds, in one line naming it by its
    config path (``data.labels``; ``where`` is the prefix); ``sources``: also check that the source (and the mix)
    are written as a known kind and that their files exist, without reading them."""
    def p(name: str) -> str:
        return f"{where}.{name}"

    if cfg.labels not in LABEL_MODES:
        raise bad(p("labels"), cfg.labels, f"one of {', '.join(LABEL_MODES)}")
    if cfg.labels == "random":
        if cfg.label_classes is None or cfg.label_classes < 1:
            raise bad(p("label_classes"), cfg.label_classes, f"a number of classes K ≥ 1 with {p('labels')} random")
    elif cfg.label_classes is not None:
        raise bad(p("label_classes"), cfg.label_classes, f"null: it is only used with {p('labels')} random (not "
                  f"{cfg.labels})")
    for name in ("size", "classes", "resolution"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise bad(p(name), value, "a positive integer")
    if cfg.seed < 0:
        raise bad(p("seed"), cfg.seed, "an integer ≥ 0")
    if cfg.resample not in RESAMPLE_FILTERS:
        raise bad(p("resample"), cfg.resample, f"one of {', '.join(RESAMPLE_FILTERS)}")
    if cfg.mix is None and cfg.mix_rate != 0.0:
        raise bad(p("mix_rate"), cfg.mix_rate, f"0 without a second source ({p('mix')})")
    if cfg.mix is not None and not 0.0 < cfg.mix_rate <= 1.0:
        raise bad(p("mix_rate"), cfg.mix_rate, f"a fraction in (0, 1] with {p('mix')}")
    if not cfg.near_dup_threshold >= 0.0:
        raise bad(p("near_dup_threshold"), cfg.near_dup_threshold, "an RMS pixel distance ≥ 0")
    if sources:
        check_spec(cfg.source, p("source"))
        if cfg.mix is not None:
            check_spec(cfg.mix, p("mix"))


def _kept_classes(src: Source, classes: int | None, option: str) -> np.ndarray:
    """Indices of the candidates of ``src`` after ``data.classes`` (the first C classes are kept)."""
    if classes is None:
        return np.arange(len(src))
    if src.labels is None:
        raise UsageError(f"data.classes: {classes} needs a labeled source; {option} {src.spec!r} is unlabeled "
                         "(no classes)")
    if classes > src.num_classes:
        raise UsageError(f"data.classes: {classes} is more than the {src.num_classes} classes of {option} "
                         f"{src.spec!r}")
    return np.flatnonzero(src.labels < classes)


def _resized(src: Source, idx: np.ndarray, target: tuple[int, int], method: str, option: str) -> np.ndarray:
    """``src.images[idx]`` brought to ``target`` (H, W) by antialiased downsampling."""
    images = src.images[idx]
    if images.shape[2:] == target:
        return images
    h, w = images.shape[2:]
    if target[0] != target[1] or h < target[0] or w < target[1]:
        raise UsageError(f"{option}: {src.spec!r} has {h}×{w} images; expected {target[0]}×{target[1]} "
                         "or larger square ones")
    return downsample(images, target[0], method, option)


@dataclass(frozen=True)
class _Plan:
    """A config's sources and the priority order of their candidates (indices ≥ len(keep) are the mix's)."""

    src: Source
    mix: Source | None
    keep: np.ndarray  # candidates of data.source (after data.classes)
    mix_keep: np.ndarray | None  # candidates of data.mix
    order: np.ndarray  # every drawable candidate in priority order
    target: tuple[int, int]  # H, W of the dataset's images
    n_classes: int


def _plan(cfg: DataConfig) -> _Plan:
    """Load and check the sources of ``cfg`` and draw the priority order (every check happens here)."""
    validate_data(cfg, sources=False)
    src = load_source(cfg.source, "data.source")
    n_src, c_src, h_src, w_src = src.images.shape
    r = cfg.resolution if cfg.resolution is not None else h_src
    target = (r, r) if cfg.resolution is not None else (h_src, w_src)
    if cfg.resolution is not None:
        if r > min(h_src, w_src):
            raise UsageError(f"data.resolution: {r} is larger than the source's {h_src}×{w_src} images; expected "
                             f"at most {min(h_src, w_src)} (only downsampling is supported)")
        if h_src != w_src and r != h_src:
            raise UsageError(f"data.resolution: the source's images are {h_src}×{w_src}, not square; expected "
                             "square images to resize to R×R")
    if cfg.labels == "true" and src.labels is None:
        raise UsageError(f"data.labels: 'true' needs a labeled source; data.source {cfg.source!r} is unlabeled "
                         "(use none, random or unique)")
    keep = _kept_classes(src, cfg.classes, "data.source")
    n_classes = cfg.classes if cfg.classes is not None else src.num_classes
    class_of = src.labels[keep] if src.labels is not None else np.zeros(keep.size, dtype=np.int64)

    mix, mix_keep, mix_class_of = None, None, None
    if cfg.mix is not None:
        mix = load_source(cfg.mix, "data.mix")
        if mix.images.shape[1] != c_src:
            raise UsageError(f"data.mix: {cfg.mix!r} has {mix.images.shape[1]} channels, the source has {c_src}; "
                             "expected the same channel count")
        mh, mw = mix.images.shape[2:]
        if (mh, mw) != target and (target[0] != target[1] or mh != mw or mh < target[0]):
            raise UsageError(f"data.mix: {cfg.mix!r} has {mh}×{mw} images; expected {target[0]}×{target[1]} or "
                             "larger square ones")
        if cfg.labels == "true" and mix.labels is None:
            raise UsageError(f"data.mix: {cfg.mix!r} is unlabeled; data.labels true needs a labeled second source")
        if src.labels is not None and mix.labels is not None:  # class-matched mixing
            if mix.num_classes < n_classes:
                raise UsageError(f"data.mix: {cfg.mix!r} has {mix.num_classes} classes; the source's {n_classes} "
                                 "classes need a match in it")
            mix_keep = np.flatnonzero(mix.labels < n_classes)
            mix_class_of = mix.labels[mix_keep]
        else:  # no classes to match: the two sources are pooled
            mix_keep = np.arange(len(mix))
            mix_class_of = np.zeros(mix_keep.size, dtype=np.int64)
            class_of = np.zeros(keep.size, dtype=np.int64)

    order = priority_order(class_of, seed=cfg.seed, size=cfg.size, nested=cfg.nested,
                           mix_class_of=mix_class_of, mix_rate=cfg.mix_rate if mix is not None else 0.0)
    if cfg.size is not None and cfg.size > order.size:
        where = f"data.source {cfg.source!r}" + (f" in its {cfg.classes} kept classes" if cfg.classes else "")
        if mix is not None:
            where += f" mixed with {cfg.mix!r} at rate {cfg.mix_rate:g}"
        raise UsageError(f"data.size: {cfg.size} is more than {where} can give ({order.size} images)")
    return _Plan(src=src, mix=mix, keep=keep, mix_keep=mix_keep, order=order, target=target, n_classes=n_classes)


@dataclass(frozen=True)
class _Drawn:
    images: np.ndarray
    source_ids: np.ndarray
    true: np.ndarray  # class index of each image in its source (−1 when unlabeled)
    from_mix: np.ndarray  # bool
    names: np.ndarray


def _gather(plan: _Plan, chosen: np.ndarray, cfg: DataConfig) -> _Drawn:
    """The images, source ids, true classes and names of the ``chosen`` candidates, at the target size."""
    src, mix, keep = plan.src, plan.mix, plan.keep
    from_mix = chosen >= keep.size
    n = chosen.size
    images = np.empty((n, src.images.shape[1], *plan.target), dtype=np.uint8)
    source_ids = np.empty(n, dtype=np.int64)
    true = np.full(n, -1, dtype=np.int64)
    names = np.empty(n, dtype=object)
    p_idx = keep[chosen[~from_mix]]
    images[~from_mix] = _resized(src, p_idx, plan.target, cfg.resample, "data.source")
    source_ids[~from_mix] = p_idx
    names[~from_mix] = src.image_names()[p_idx]
    if src.labels is not None:
        true[~from_mix] = src.labels[p_idx]
    if mix is not None and from_mix.any():
        m_idx = plan.mix_keep[chosen[from_mix] - keep.size]
        images[from_mix] = _resized(mix, m_idx, plan.target, cfg.resample, "data.mix")
        source_ids[from_mix] = m_idx
        names[from_mix] = [f"mix:{x}" for x in mix.image_names()[m_idx]]
        if mix.labels is not None:
            true[from_mix] = mix.labels[m_idx]
    return _Drawn(images=images, source_ids=source_ids, true=true, from_mix=from_mix, names=names_array(names))


def make_dataset(cfg: DataConfig, *, progress: bool = False) -> BuiltDataset:
    """Build the dataset of ``cfg`` in memory (every check happens here, before anything is written)."""
    plan = _plan(cfg)
    src, mix, order, n_classes = plan.src, plan.mix, plan.order, plan.n_classes
    chosen = order[: cfg.size] if cfg.size is not None else order
    d = _gather(plan, chosen, cfg)
    images, source_ids, true, from_mix, n = d.images, d.source_ids, d.true, d.from_mix, chosen.size

    labels, label_classes = assign_labels(cfg.labels, true, label_classes=cfg.label_classes or n_classes,
                                          seed=cfg.seed, size=cfg.size, nested=cfg.nested, order_length=order.size)
    bar = _bar(n if progress and n >= 2048 else 0, "duplicates")
    dups = duplicate_report(images, cfg.near_dup_threshold, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()

    kept_names = list(src.class_names[:n_classes]) if src.labels is not None else []
    info: dict[str, Any] = {
        "n_images": int(n),
        "shape": [int(s) for s in images.shape[1:]],
        "label_classes": int(label_classes),
        "label_mode": cfg.labels,
        "source_images": int(len(src)),
        "available_images": int(order.size),
        "class_names": kept_names,
        "class_counts": [int(np.sum(true == c)) for c in range(len(kept_names))] if kept_names else [],
        "from_mix": int(from_mix.sum()),
        "duplicates": dups,
        "hashes": {"images": array_hash(images), "labels": array_hash(labels), "source_ids": array_hash(source_ids)},
    }
    inputs = {"source": src.inputs, **({"mix": mix.inputs} if mix is not None else {})}
    return BuiltDataset(images=images, labels=labels, source_ids=source_ids, origin=from_mix.astype(np.uint8),
                        info=info, inputs=inputs, names=d.names)


def heldout_set(cfg: DataConfig, n: int) -> ImageSet:
    """Up to ``n`` images of the same distribution that the dataset of ``cfg`` does not hold: the candidates
    that follow its subset in the priority order (same classes, resolution and mixing; class-balanced as
    any prefix of the order is). Labels are the source's classes (−1 when unlabeled); none when no image
    is left (``cfg.size`` is everything the source holds)."""
    plan = _plan(cfg)
    start = cfg.size if cfg.size is not None else plan.order.size
    chosen = plan.order[start:start + max(int(n), 0)]
    d = _gather(plan, chosen, cfg)
    return ImageSet(images=d.images, labels=d.true, source_ids=d.source_ids, names=d.names)


def _bar(total: int, desc: str):
    if total <= 0:
        return None
    return progress_bar(total, desc, "img")


def build_dataset(cfg: DataConfig, out: str | Path, *, progress: bool = False) -> Path:
    """Write the dataset artefact of ``cfg`` to ``out`` atomically and return ``out``.

    A complete artefact of the same config already in ``out`` is reused as it is; any other
    non-empty ``out`` is refused. On any error nothing is left in ``out``.
    """
    out = Path(out)
    if is_complete(out, STAGE, cfg) and (out / "dataset.npz").is_file():
        log.info("%s: reusing the complete dataset artefact", out)
        return out
    check_new_dir(out, expected="a new directory, or one holding the dataset artefact of this config")
    built = make_dataset(cfg, progress=progress)
    with atomic_dir(out, overwrite=True) as tmp:
        s = ImageSet(images=built.images, labels=built.labels, source_ids=built.source_ids, names=built.names)
        save_image_set(tmp / "dataset.npz", s, origin=built.origin)
        write_manifest(tmp, STAGE, cfg, inputs=built.inputs, **built.info)
    return out


def load_dataset(path: str | Path) -> tuple[ImageSet, int]:
    """Images of a dataset artefact (or any image set) and its ``label_classes`` (0 = unlabeled).

    ``path`` is a dataset artefact directory, its ``dataset.npz``, or anything
    :func:`diffmem.io.load_images` reads; without a manifest, ``label_classes`` is
    max(label) + 1 (0 when there are no labels ≥ 0).
    """
    p = Path(path)
    m = read_manifest(p) if p.is_dir() else None
    if m is not None:
        if m.get("stage") != STAGE or m.get("status") != "complete":
            raise UsageError(f"{path}: holds a {m.get('stage')!r} artefact with status {m.get('status')!r}; "
                             "expected a complete dataset artefact")
        s = load_npz(p / "dataset.npz")
        k = m.get("label_classes")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise UsageError(f"{path}: manifest 'label_classes' is {k!r}; expected an integer ≥ 0")
        return s, k
    s = load_images(p)
    if s.labels is None or not np.any(s.labels >= 0):
        return s, 0
    return s, int(s.labels.max()) + 1
