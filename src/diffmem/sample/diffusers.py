"""Samples of a locally saved Hugging Face diffusers model (``diffmem sample --diffusers DIR``).

DIR is either a pipeline folder written by ``save_pretrained`` (``unet/`` and ``scheduler/`` sub-folders,
as DDPMPipeline and DDIMPipeline write) or a folder holding a ``UNet2DModel`` (``config.json`` and
``diffusion_pytorch_model.safetensors``) with its ``scheduler_config.json`` beside it. The scheduler is
the saved one (DDPM, DDIM or EDM Euler) or another of these built from the saved config.

Safety: nothing is fetched from a hub (DIR must be a local folder; ``local_files_only``), weights are
read from safetensors only (pickled ``.bin`` weights are refused before diffusers sees the folder), and
no code from the folder runs: the model class is always ``UNet2DModel`` and the scheduler class one of a
fixed list, whatever ``model_index.json`` names; pipelines, custom or not, are never loaded.

Per-sample seeds: sample k's initial noise, then its label (class-conditional models), then any noise a
scheduler step draws all come from one ``torch.Generator`` seeded with its seed, so sample k does not
depend on the other samples of its batch. The UNet's float32 kernels may round differently for different
batch sizes, which can move a pixel by one uint8 level; with ``dtype="float64"`` the samples are
bit-identical whatever the batch size. The model is taken to work on images scaled to [−1, 1], as diffusers'
training examples do; outputs are quantised to uint8 like every diffmem sampler.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmem.devices import resolve_device
from diffmem.errors import RunError, UsageError, bad
from diffmem.extras import require
from diffmem.io import ImageSet
from diffmem.sample.generate import check_request, run_batches
from diffmem.sample.labels import draw_labels
from diffmem.sample.noise import SeedNoise

log = logging.getLogger(__name__)

# --scheduler name → diffusers class; the EDM family samples EDM-parametrised models only
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "edm-euler": "EDMEulerScheduler"}
EDM_FAMILY = {"EDMEulerScheduler"}
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
UNET_CLASS = "UNet2DModel"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class DiffusersConfig:
    """How a diffusers model is sampled."""

    scheduler: str = "saved"  # saved | ddpm | ddim | edm-euler
    steps: int = 50  # scheduler steps (UNet evaluations per sample)
    eta: float = 0.0  # DDIM's η (0: deterministic)
    batch: int = 256  # samples per pass (float64: does not change any sample; float32: by ≤ 1 level, rarely)
    device: str = "auto"
    dtype: str = "float32"  # the UNet's compute dtype: float32 | float64


def _read_json(path: Path, option: str) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{option}: {path} is not readable JSON ({e})") from e
    if not isinstance(d, dict):
        raise UsageError(f"{option}: {path} holds {type(d).__name__}; expected a JSON object")
    return d


def locate(folder: str | os.PathLike, option: str = "--diffusers") -> tuple[Path, Path | None]:
    """(the UNet's folder, the scheduler config or None) of a saved pipeline or model folder."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{option}: {str(folder)!r} is not a directory; expected a locally saved diffusers model "
                         "(nothing is fetched from a hub)")
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet / "config.json").is_file():
        raise UsageError(f"{option}: {str(folder)!r} holds neither unet/config.json nor config.json; expected a "
                         "folder written by save_pretrained (a pipeline or a UNet2DModel)")
    sched = next((p for p in (root / "scheduler" / "scheduler_config.json", unet / "scheduler_config.json",
                              root / "scheduler_config.json") if p.is_file()), None)
    return unet, sched


def check_weights(unet: Path, option: str = "--diffusers") -> None:
    """Safetensors weights only: a single file, or shards named by the safetensors index, inside ``unet``."""
    if (unet / WEIGHTS).is_file():
        return
    if (unet / WEIGHTS_INDEX).is_file():
        index = _read_json(unet / WEIGHTS_INDEX, option)
        files = set((index.get("weight_map") or {}).values())
        for f in files:
            if not (isinstance(f, str) and f.endswith(".safetensors") and Path(f).name == f and (unet / f).is_file()):
                raise UsageError(f"{option}: {unet / WEIGHTS_INDEX} names shard {f!r}; expected .safetensors files "
                                 "inside the same folder")
        if files:
            return
    pickles = sorted(p.name for p in unet.glob("*.bin")) + sorted(p.name for p in unet.glob("*.pt*"))
    if pickles:
        raise UsageError(f"{option}: {unet} has weights only as {pickles[0]} (a pickle), which is never loaded; "
                         f"expected {WEIGHTS} (re-save with save_pretrained(..., safe_serialization=True))")
    raise UsageError(f"{option}: {unet} holds no {WEIGHTS}; expected the weights saved by save_pretrained")


@dataclass
class DiffusersModel:
    """A loaded ``UNet2DModel`` with the scheduler class and config it is sampled with."""

    unet: Any  # diffusers.UNet2DModel, in eval mode on its device
    scheduler_class: str  # e.g. DDIMScheduler
    scheduler_config: dict[str, Any]
    folder: Path

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return self.in_channels, int(h), int(w)

    @property
    def label_dim(self) -> int:
        """Classes of a class-conditional model (``num_class_embeds``); 0 for an unconditional one."""
        return int(self.unet.config.num_class_embeds or 0)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def variance_channels_dropped(self) -> bool:
        """True for a UNet with a learned variance (twice the channels out) sampled by a scheduler that does not
        use it: only DDPM with ``variance_type`` learned or learned_range splits the output itself; every other
        scheduler gets the first half, the ε (or x₀, v) prediction, as diffusers' own pipelines pass it."""
        learned = self.scheduler_class == "DDPMScheduler" and \
            self.scheduler_config.get("variance_type") in ("learned", "learned_range")
        return int(self.unet.config.out_channels) == 2 * self.in_channels and not learned

    def make_scheduler(self):
        """A fresh scheduler (schedulers keep a step counter, so each batch gets its own)."""
        import diffusers

        return getattr(diffusers, self.scheduler_class).from_config(self.scheduler_config)


def _scheduler_choice(saved: dict[str, Any] | None, scheduler: str, option: str) -> tuple[str, dict[str, Any]]:
    if scheduler != "saved" and scheduler not in SCHEDULERS:
        raise bad("--scheduler", scheduler, f"saved or one of {', '.join(SCHEDULERS)}")
    if saved is None:
        if scheduler == "saved":
            raise UsageError(f"{option}: no scheduler_config.json (in scheduler/ or beside the UNet); expected one, "
                             f"or --scheduler {'|'.join(SCHEDULERS)} for that scheduler's default settings")
        log.warning("no saved scheduler config: %s with its default settings", SCHEDULERS[scheduler])
        return SCHEDULERS[scheduler], {}
    saved_class = str(saved.get("_class_name", ""))
    if scheduler == "saved":
        if saved_class not in SCHEDULERS.values():
            raise UsageError(f"{option}: the saved scheduler is {saved_class or 'unnamed'!r}; expected one of "
                             f"{', '.join(SCHEDULERS.values())} (or choose one with --scheduler)")
        return saved_class, saved
    wanted = SCHEDULERS[scheduler]
    if (wanted in EDM_FAMILY) != (saved_class in EDM_FAMILY):
        raise UsageError(f"--scheduler: {scheduler!r} cannot sample a model saved with {saved_class} (another noise "
                         f"parametrisation); expected {'edm-euler' if saved_class in EDM_FAMILY else 'ddpm or ddim'}")
    return wanted, saved


def load_diffusers_model(
    folder: str | os.PathLike,
    scheduler: str = "saved",  # saved | ddpm | ddim | edm-euler
    device: str = "auto",
    dtype: str = "float32",  # float32 | float64: the UNet's compute dtype
    option: str = "--diffusers",
) -> DiffusersModel:
    """Load a locally saved ``UNet2DModel`` (safetensors only, offline, no code from the folder)."""
    unet_dir, sched_path = locate(folder, option)
    config = _read_json(unet_dir / "config.json", option)
    cls = config.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise UsageError(f"{option}: {unet_dir / 'config.json'} describes a {cls}; expected a {UNET_CLASS} "
                         "(unconditional or class-conditional image model)")
    if config.get("class_embed_type") is not None:
        raise UsageError(f"{option}: class_embed_type {config['class_embed_type']!r} is not supported; expected "
                         "none (plain class labels through num_class_embeds) or an unconditional model")
    check_weights(unet_dir, option)
    saved = _read_json(sched_path, option) if sched_path is not None else None
    sched_class, sched_config = _scheduler_choice(saved, scheduler, option)
    if dtype not in DTYPES:
        raise bad("--dtype", dtype, f"one of {', '.join(DTYPES)}")
    dev = resolve_device(device, "--device")
    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported: no hub access, ever
    diffusers = require("diffusers", "diffusers", option)
    if not hasattr(diffusers, sched_class):
        raise UsageError(f"--scheduler: {sched_class} is not in the installed diffusers {diffusers.__version__}; "
                         "expected a newer diffusers (pip install -U diffusers) or another --scheduler")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, local_files_only=True,
                                                     low_cpu_mem_usage=False, torch_dtype=DTYPES[dtype])
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise UsageError(f"{option}: cannot load the UNet2DModel in {unet_dir} ({' '.join(str(e).split())[:300]})") \
            from e
    unet.to(dev).eval()
    out_ch, in_ch = int(unet.config.out_channels), int(unet.config.in_channels)
    if out_ch not in (in_ch, 2 * in_ch):
        raise UsageError(f"{option}: the UNet maps {in_ch} channels to {out_ch}; expected {in_ch} (or {2 * in_ch} "
                         "with a learned variance)")
    return DiffusersModel(unet=unet, scheduler_class=sched_class, scheduler_config=sched_config, folder=Path(folder))


def check_steps(model: DiffusersModel, steps: int, eta: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise bad("--steps", steps, "an integer >= 1")
    train_steps = int(model.scheduler_config.get("num_train_timesteps", 1000))
    if model.scheduler_class not in EDM_FAMILY and steps > train_steps:
        raise bad("--steps", steps, f"at most the {train_steps} timesteps the model was trained with")
    if not 0.0 <= eta <= 1.0:
        raise bad("--eta", eta, "a number in [0, 1] (DDIM's η)")
    if eta and model.scheduler_class != "DDIMScheduler":
        raise UsageError(f"--eta: {eta} applies to the DDIM scheduler only; {model.scheduler_class} is used")


def sample_diffusers_seeds(
    model: DiffusersModel,
    seeds: np.ndarray,
    steps: int = 50,
    *,
    eta: float = 0.0,
    labels: torch.Tensor | None = None,  # one per sample (class-conditional models); None: drawn per seed
    classes: torch.Tensor | None = None,  # labels are drawn from these; None: all num_class_embeds
    callback=None,  # called once per scheduler step
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch: final states in the model's scale ([−1, 1]) and the labels used, for these seeds."""
    device = model.device
    sched = model.make_scheduler()
    sched.set_timesteps(steps, device=device)
    noise = SeedNoise(seeds)
    # the scheduler's initial state x_T ~ N(0, init_noise_sigma² I): row k a float32 draw of generator k,
    # as diffusers' pipelines draw it from a list of generators (so both give the same samples)
    x = torch.cat([torch.randn((1, *model.image_shape), generator=g) for g in noise.generators])
    x = x.to(device=device, dtype=model.dtype) * float(sched.init_noise_sigma)
    labels = draw_labels(noise, model.label_dim, classes, labels)
    labels = labels.to(device) if labels is not None else None
    extra = {"eta": eta} if model.scheduler_class == "DDIMScheduler" else {}
    with torch.no_grad():
        for t in sched.timesteps:
            out = model.unet(sched.scale_model_input(x, t), t, class_labels=labels).sample
            if model.variance_channels_dropped:
                out = out[:, :model.in_channels]
            # per-step noise (DDPM, DDIM with η > 0) drawn row by row from the samples' own generators
            x = sched.step(out, t, x, generator=noise.generators, **extra).prev_sample
            if callback is not None:
                callback()
    if not torch.isfinite(x).all():
        raise RunError(f"--diffusers: sampling {model.folder} gave NaN or inf; expected finite images")
    return x, (labels.cpu() if labels is not None else None)


def generate_diffusers(
    model: DiffusersModel,
    n: int,
    seed: int,
    cfg: DiffusersConfig | None = None,
    *,
    labels: np.ndarray | torch.Tensor | int | None = None,  # per-sample labels, one for all, or None (drawn)
    classes: np.ndarray | torch.Tensor | None = None,  # classes drawn labels come from; None = all
    progress: bool = False,
) -> ImageSet:
    """``n`` samples with seeds ``seed + arange(n)`` in batches of ``cfg.batch``, as uint8 images with labels."""
    cfg = cfg or DiffusersConfig()
    if isinstance(cfg.batch, bool) or not isinstance(cfg.batch, int) or cfg.batch < 1:
        raise bad("--batch", cfg.batch, "an integer >= 1")
    check_steps(model, cfg.steps, cfg.eta)
    labels, classes = check_request(n, seed, model.label_dim, labels, classes)

    def sample_batch(seeds, lo, hi, callback):
        return sample_diffusers_seeds(model, seeds, cfg.steps, eta=cfg.eta, classes=classes, callback=callback,
                                      labels=None if labels is None else labels[lo:hi])

    return run_batches(n, seed, model.image_shape, cfg.batch, cfg.steps, sample_batch, progress=progress)
