"""Frozen dataclasses for every stage, their JSON round-trip, and the presets.

Each dataclass is the single source of defaults for its stage. ``from_dict`` rejects unknown
keys with a clear message, converts JSON lists back to tuples and nests sub-configs, so a
``config.json`` written by one run rebuilds exactly the same config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from diffmem.artefacts import to_jsonable
from diffmem.errors import UsageError, bad

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DataConfig:
    """How a dataset artefact is built (``diffmem data``)."""

    source: str = "digits"  # digits | shapes[:k=v,…] | cifar10:PATH | zip:PATH | folder:PATH | npz:PATH
    size: int | None = None  # images to keep (class-balanced); None = all
    classes: int | None = None  # keep only this many classes of the source
    labels: str = "none"  # true | none | random | unique
    label_classes: int | None = None  # K for labels=random
    resolution: int | None = None  # downsample to R×R; None = the source's
    resample: str = "box"  # box | lanczos antialiasing filter for --resolution
    mix: str | None = None  # second source for the intra-class diversity factor
    mix_rate: float = 0.0  # fraction of images taken from ``mix``
    seed: int = 0
    nested: bool = True  # subsets for one seed are nested across sizes (False: independent draws)
    near_dup_threshold: float = 2.0  # near duplicates: RMS pixel distance ‖a − b‖₂/√D ≤ this (0–255 scale)


# ----------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, preconditioner and the loss that goes with it (DDPM++ / NCSN++ family, VP / VE / EDM).

    ``precond`` chooses the preconditioning and its training loss together, as the reference code's ``--precond``
    does; the fields after it are their parameters, all in this one place. The training σ distribution
    (EDM paper 2022, Table 1): EDM ln σ ~ N(``P_mean``, ``P_std``²); VP σ = σ(t), t ~ U(``vp_epsilon_t``, 1);
    VE ln σ ~ U(ln ``ve_sigma_min``, ln ``ve_sigma_max``). The VP and VE values also bound the σ range the
    preconditioner supports (the sampler's schedule is pulled into it), with the same defaults as the reference's
    separate loss and preconditioner objects.
    """

    arch: str = "ddpmpp"  # ddpmpp (box filter [1,1]) | ncsnpp (FIR [1,3,3,1], 2C noise channels, residual encoder)
    resolution: int = 32  # image side, filled in from the dataset
    in_channels: int = 3  # filled in from the dataset
    channels: int = 128  # base channel count (width)
    channel_mult: tuple[int, ...] = (2, 2, 2)  # per resolution level
    blocks: int = 2  # residual blocks per resolution (depth)
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.13
    embedding: str = "positional"  # positional | fourier time embedding
    encoder: str | None = None  # standard | residual (NCSN++ progressive input); None = the arch's
    channel_mult_noise: int | None = None  # noise-embedding channels ÷ C; None = the arch's (ddpmpp 1, ncsnpp 2)
    skip_mask: tuple[bool, ...] | None = None  # one flag per encoder→decoder skip; None = all on
    label_dim: int = 0  # number of label classes; 0 = unconditional
    precond: str = "vp"  # vp | ve | edm: the preconditioning and its loss
    sigma_data: float = 0.5  # EDM: σ_data (preconditioning and loss weight)
    P_mean: float = -1.2  # EDM loss: ln σ ~ N(P_mean, P_std²)
    P_std: float = 1.2
    vp_beta_d: float = 19.9  # VP: σ(t) = √(exp(½β_d t² + β_min t) − 1)
    vp_beta_min: float = 0.1
    vp_M: int = 1000  # VP: c_noise = (M − 1)·t
    vp_epsilon_t: float = 1e-5  # VP loss: t ~ U(ε_t, 1); the supported σ starts at σ(ε_t)
    ve_sigma_min: float = 0.02  # VE loss: ln σ ~ U(ln σ_min, ln σ_max); also the supported σ range
    ve_sigma_max: float = 100.0


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainConfig:
    """Training procedure (``diffmem train``). Duration: ``kimg`` or ``epochs`` (one of them).

    The defaults are the reference study's training script as the study ran it (docs/PARITY.md): Adam
    with coupled L2, the loss summed over pixels, a warm-up of 200 epochs, the data-ratio-compensated
    EMA with a half-life of 10 epochs, one fixed data order. Epoch-based warm-up and half-life become
    whole kimg, rounded down, as there.
    """

    kimg: float | None = None  # training duration in thousands of images
    epochs: float | None = None  # or in passes over the dataset
    batch: int = 512  # total batch size
    batch_per_device: int | None = None  # gradient accumulation down to this; None = no accumulation
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_kimg: float | None = None  # linear lr warm-up in kimg (0 = none) …
    warmup_epochs: float | None = 200.0  # … or in epochs (whole kimg, rounded down); exactly one of the two
    weight_decay: float = 0.0  # Adam's coupled L2 (as the reference study used)
    loss_norm: str = "sum"  # the loss of an image: sum | mean over its pixels (then averaged over the batch)
    ema_mode: str = "compensated"  # constant | halflife | compensated | final (diffmem.train.ema)
    ema_decay: float | None = None  # constant: the per-step decay; final: the decay it settles at
    ema_halflife_kimg: float | None = None  # half-life modes: the half-life in kimg …
    ema_halflife_epochs: float | None = 10.0  # … or in epochs (whole kimg, rounded down); exactly one of the two
    ema_rampup_ratio: float | None = 0.05  # EDM's ramp-up of the half-life; None = off
    data_order: str = "fixed"  # fixed: one permutation (from the seed) every epoch | reshuffle: a new one per epoch
    snapshot_kimg: float | None = None  # EMA snapshot every this many kimg; None = final only
    log_kimg: float | None = None  # stats.jsonl line every this many kimg; None = ~100 lines
    state_kimg: float | None = None  # resumable state every this many kimg; None = at snapshots
    precision: str = "fp32"  # fp32 (no TF32 on GPUs) | bf16 (autocast)
    compile: bool = False  # torch.compile the denoiser (minutes of warm-up; faster steps; not bit-equal to eager)
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


# ----------------------------------------------------------------------------------------------
# Sampling and measurement


@dataclass(frozen=True)
class SampleConfig:
    """EDM sampler settings (``diffmem sample``)."""

    solver: str = "heun"  # heun | euler
    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    batch: int = 1000  # samples per forward pass (does not change any sample)
    device: str = "auto"


@dataclass(frozen=True)
class MeasureConfig:
    """Memorization measurement (``diffmem measure``)."""

    threshold: float = 1 / 3  # memorized when d1 / d2 < threshold
    confidence: float = 0.95  # Wilson interval
    backend: str = "torch"  # torch | faiss
    device: str = "auto"
    memory_mb: int = 1024  # working-memory budget of the search
    candidates: int = 8  # rows per sample kept by the fast float32 stage for the exact re-rank
    copying_cells: int = 0  # k-means cells of the data-copying test (held-out baseline); 0 = auto
    copying_tau: float | None = None  # fraction of the samples a cell needs to count; None = 20 / samples
    copying_seed: int = 0  # seed of the k-means cells


# ----------------------------------------------------------------------------------------------
# EMM search and studies


@dataclass(frozen=True)
class EMMConfig:
    """One EMM search: a data distribution, a model, a training procedure (``diffmem emm``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    n_samples: int = 10_000  # generated samples per measurement
    epsilon: float = 0.1  # memorizes when ratio ≥ 1 − ε
    size_min: int = 64
    size_max: int = 1024
    grid_factor: float = 2.0  # geometric bracketing grid
    bracket_factor: float = 1.25  # stop when the bracket's sizes are within this factor
    repeats: int = 1  # independent dataset draws and training seeds per size
    optimal: bool = True  # also measure the closed-form optimum at each size
    sizes: tuple[int, ...] | None = None  # fixed sizes instead of the search (the study's table mode)
    parallel: int = 1  # sizes measured per search round (1 = binary search; more keeps Ray workers busy)
    measure_ends: bool = False  # measure size_min and size_max first: both ends of the transition
    refine_repeats: int = 0  # extra repeats for bracket sizes whose interval straddles 1 − ε
    sample_seed: int = 0  # seed of the first generated sample of every measurement
    heldout: int = 1000  # held-out images per size (those after the subset in the source's order); 0 = none
    frontier: bool = False  # EMM at every snapshot budget up to train.kimg: sizes and run lengths chosen for it


@dataclass(frozen=True)
class StudyConfig:
    """EMM (or ratio at fixed sizes) across the values of one or more factors (``diffmem study``)."""

    base: EMMConfig = field(default_factory=EMMConfig)
    factors: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # "model.channels": (16, 32, 64)
    mode: str = "emm"  # emm | ratio
    name: str = "study"


# ----------------------------------------------------------------------------------------------
# JSON round-trip


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples at any depth (a study's factor values, e.g. skip masks, are lists of lists)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _convert(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise UsageError(f"{where}: null is not allowed here")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(where, value, "a list")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        return tuple(_convert(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad(where, value, "an object")
        return {str(k): _tuples(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad(where, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad(where, value, "an integer")
        return value
    if tp is float:
        if value in ("inf", "-inf"):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(where, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad(where, value, "a string")
        return value
    return value


def from_dict(cls: type[T], d: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise bad(where, d, "an object")
    if cls is EMMConfig and "preset" in d:
        d = _over_preset(d, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    if cls is TrainConfig:  # a partial training config reads over the defaults as a preset override does
        kwargs = implied_train_fields(TrainConfig(), kwargs)
    return cls(**kwargs)


def _over_preset(d: dict[str, Any], where: str) -> dict[str, Any]:
    """An EMM config dict ``{"preset": name, …}``: the preset's fields with the other keys merged over them (the
    training fields as :func:`implied_train_fields` reads them over the preset's)."""
    name = d["preset"]
    if not isinstance(name, str) or name not in EMM_PRESETS:
        raise UsageError(f"{where}.preset: {name!r} is not an EMM preset; expected one of {sorted(EMM_PRESETS)}")

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    over = {k: v for k, v in d.items() if k != "preset"}
    if isinstance(over.get("train"), dict):  # a training field given clears the preset's fields it replaces
        over["train"] = implied_train_fields(EMM_PRESETS[name].train, over["train"])
    return merge(to_dict(EMM_PRESETS[name]), over)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON values (tuples as lists)."""
    return to_jsonable(cfg)


def replace_path(cfg: T, dotted: str, value: Any) -> T:
    """``cfg`` with the field at ``dotted`` (e.g. ``"model.channels"``) set to ``value`` (type-checked)."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    if head not in names:
        raise UsageError(f"factor {dotted!r}: unknown key {head!r}; expected one of {sorted(names)}")
    if rest:
        return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})  # type: ignore
    hints = typing.get_type_hints(type(cfg))
    return dataclasses.replace(cfg, **{head: _convert(value, hints[head], dotted)})  # type: ignore


def replace_fields(cfg: T, fields: dict[str, Any]) -> T:
    """``cfg`` with the field at each dotted path of ``fields`` set (type-checked, :func:`replace_path`), and the
    training fields they make meaningless cleared as a preset override clears them (:func:`implied_train_fields`)
    unless ``fields`` sets them too: how a study's factor value changes its base."""
    fields = dict(fields)
    given: dict[str, dict[str, Any]] = {}  # path of a TrainConfig in cfg → its fields that are set
    for path, value in list(fields.items()):
        parent, _, name = path.rpartition(".")
        if parent and isinstance(_at(cfg, parent), TrainConfig):
            given.setdefault(parent, {})[name] = value
    for parent, train_fields in given.items():
        for name, value in implied_train_fields(_at(cfg, parent), train_fields).items():
            fields.setdefault(f"{parent}.{name}", value)
    for path, value in fields.items():
        cfg = replace_path(cfg, path, value)
    return cfg


def _at(cfg: Any, dotted: str) -> Any:
    """The value at a dotted path of ``cfg``, or None where the path does not exist."""
    for name in dotted.split("."):
        if not dataclasses.is_dataclass(cfg) or name not in {f.name for f in dataclasses.fields(cfg)}:
            return None
        cfg = getattr(cfg, name)
    return cfg


def load_json_config(cls: type[T], path: str | Path) -> T:
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError as e:
        raise UsageError(f"config: {str(path)!r} does not exist") from e
    except (OSError, ValueError) as e:
        raise UsageError(f"config: {str(path)!r} is not readable JSON ({e})") from e
    return from_dict(cls, d, where=str(path))


# ----------------------------------------------------------------------------------------------
# Presets: model + training recipes (``diffmem train --preset``) and EMM experiments


MODEL_PRESETS: dict[str, ModelConfig] = {
    # the reference study's basic setup (DDPM++ at 32×32, VP)
    "paper-basic": ModelConfig(),
    # a small two-level U-Net for 8×8 images (8×8: 16, 4×4: 32 channels; 180k parameters) that memorizes
    # small subsets in minutes on 2 cores: 0.988 of 256 samples memorized at |D| = 64 after 3,000 steps
    "digits": ModelConfig(
        resolution=8, in_channels=1, channels=16, channel_mult=(1, 2), blocks=1, attn_resolutions=(),
        dropout=0.0, precond="edm",
    ),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # the reference study's basic run: 40,000 epochs of batch 512 at lr 2e-4, warm-up 200 epochs, the compensated
    # EMA with a 10-epoch half-life, a snapshot every 2,500 kimg (its 50 ticks of 50 kimg); the rest are defaults
    "paper-basic": TrainConfig(epochs=40_000, batch=512, lr=2e-4, snapshot_kimg=2_500.0),
    # 3,000 steps of batch 64, 200 warm-up steps; EMA 0.99 (0.999 lags ~1,000 steps behind on runs this short)
    "digits": TrainConfig(
        kimg=192.0, batch=64, lr=2e-3, warmup_kimg=12.8, warmup_epochs=None, ema_mode="constant", ema_decay=0.99,
        ema_halflife_epochs=None, ema_rampup_ratio=None, snapshot_kimg=64.0,
    ),
}


def preset_names() -> list[str]:
    return sorted(MODEL_PRESETS)


def model_train_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    if name not in MODEL_PRESETS:
        raise UsageError(f"preset: {name!r} is not a preset; expected one of {preset_names()}")
    return MODEL_PRESETS[name], TRAIN_PRESETS[name]


def resolve_preset(name: str, model: dict[str, Any] | None = None,
                   train: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Preset ``name``'s model and training recipe with the given fields replaced, and the preset's fields that
    the given ones make meaningless cleared (:func:`implied_train_fields`)."""
    m, t = model_train_preset(name)
    return dataclasses.replace(m, **(model or {})), dataclasses.replace(t, **implied_train_fields(t, train or {}))


# a quantity that can be given in either of two units: giving one clears the other
UNIT_PAIRS = (("kimg", "epochs"), ("warmup_kimg", "warmup_epochs"), ("ema_halflife_kimg", "ema_halflife_epochs"))


def implied_train_fields(base: TrainConfig, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` training fields plus what they imply over ``base``: a duration, warm-up or EMA half-life given in
    one unit clears ``base``'s other unit; an EMA mode clears ``base``'s fields that the mode does not use (the
    decay for the half-life modes, the half-life for ``constant``) and, for a half-life mode where ``base`` has
    no half-life, takes the default one. Fields given explicitly are never changed."""
    t = dict(given)
    for a, b in UNIT_PAIRS:
        for one, other in ((a, b), (b, a)):
            if one in t and other not in t:
                t[other] = None
    if "ema_mode" in t:
        if t["ema_mode"] not in ("constant", "final") and "ema_decay" not in t:
            t["ema_decay"] = None
        if t["ema_mode"] == "constant":
            for name in ("ema_halflife_kimg", "ema_halflife_epochs"):
                t.setdefault(name, None)
        elif base.ema_halflife_kimg is None and base.ema_halflife_epochs is None and \
                "ema_halflife_kimg" not in t and "ema_halflife_epochs" not in t:
            t["ema_halflife_epochs"] = TrainConfig.ema_halflife_epochs
    return t


EMM_PRESETS: dict[str, EMMConfig] = {
    # The embedded default (`make demo`): scikit-learn's 8×8 digits, the whole EMM experiment on 2 CPU cores.
    # Training procedure (EMM is relative to it): a two-level U-Net with C=16 (8×8: 16, 4×4: 32 channels),
    # EDM preconditioning and loss, batch 64, Adam lr 2e-3, 200-step warm-up, EMA decay 0.99, 3,000 steps
    # (192 kimg), a snapshot every 1,000 steps; 1,000 samples per measurement (not the reference 10,000).
    "digits": EMMConfig(
        data=DataConfig(source="digits"),
        model=MODEL_PRESETS["digits"],
        train=TRAIN_PRESETS["digits"],
        n_samples=1_000, size_min=32, size_max=1024, grid_factor=2.0, bracket_factor=1.25, measure_ends=True,
    ),
    # The reference study's basic setup for GPU users: CIFAR-10 (the python archive in the working directory),
    # DDPM++ width 128, 2 blocks, VP, batch 512, lr 2e-4, 40k epochs, no augmentation, a snapshot every 2,500 kimg
    # (the best one counts), 10,000 samples.
    "cifar10": EMMConfig(
        data=DataConfig(source="cifar10:cifar-10-python.tar.gz"),
        model=MODEL_PRESETS["paper-basic"],
        train=TRAIN_PRESETS["paper-basic"],
        n_samples=10_000, size_min=500, size_max=8_000, grid_factor=2.0, bracket_factor=1.25,
    ),
}


# The frontier of the embedded default: the digits preset unchanged but for a 4× budget (768 kimg, 12,000 steps),
# the EMM bracketed at each of its 12 snapshot budgets (64, 128, …, 768 kimg) and the law τ_mem = a·|D|^α fitted.
EMM_PRESETS["digits-frontier"] = dataclasses.replace(
    EMM_PRESETS["digits"], frontier=True, train=dataclasses.replace(EMM_PRESETS["digits"].train, kimg=768.0))


def emm_preset(name: str) -> EMMConfig:
    """The EMM experiment preset ``name``."""
    if name not in EMM_PRESETS:
        raise UsageError(f"preset: {name!r} is not an EMM preset; expected one of {sorted(EMM_PRESETS)}")
    return EMM_PRESETS[name]
