"""An image encoder given as an ONNX file: its preprocessing and batched embedding of uint8 images.

``diffmem measure --features MODEL.onnx`` runs any image-to-vector model (an SSCD, DINO or CLIP image
encoder exported by the user) with onnxruntime (the ``[onnx]`` extra). Input and output names, ranks
and fixed dimensions are read from the session. Preprocessing comes from :class:`Preprocess`: a JSON
file beside the model (``MODEL.json`` for ``MODEL.onnx``), then ``--preprocess KEY=VALUE`` flags.

Loading runs no code from the file: an ONNX model is a protobuf graph of standard operators run by
onnxruntime's own kernels. No custom-operator library is ever registered (a graph that needs one is
refused by onnxruntime), and only the CPU provider (or CUDA, when asked for and installed) is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.artefacts import file_hash
from diffmem.config import from_dict
from diffmem.errors import RunError, UsageError, bad
from diffmem.extras import require
from diffmem.progress import progress_bar

log = logging.getLogger(__name__)

RESAMPLE = ("bilinear", "bicubic", "nearest")
LAYOUTS = ("auto", "nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: RGB images for a one-channel model


@dataclass(frozen=True)
class Preprocess:
    """How uint8 images become the model's input (keys of ``MODEL.json`` and of ``--preprocess``)."""

    size: tuple[int, ...] | None = None  # (H, W) the model takes; default: its fixed input size, else as given
    resample: str = "bilinear"  # bilinear | bicubic (antialiased when shrinking) | nearest
    value_range: tuple[float, ...] = (0.0, 1.0)  # pixel values 0..255 mapped linearly onto [lo, hi]
    mean: tuple[float, ...] = (0.0,)  # subtracted per channel, in the model's channel order (one value or one each)
    std: tuple[float, ...] = (1.0,)  # then divided per channel
    channels: str = "rgb"  # rgb | bgr: the channel order the model takes
    layout: str = "auto"  # auto (from the model's input shape) | nchw | nhwc
    input: str | None = None  # input name (default: the model's only input)
    output: str | None = None  # output name (default: the only output, else the first of rank 2)
    batch: int = 64  # images per run (a fixed batch dimension in the model wins)


def _normalise_keys(d: dict[str, Any]) -> dict[str, Any]:
    """One number where a list is expected becomes a list (``size=224`` → [224, 224], ``std=0.5`` → [0.5])."""
    out = dict(d)
    size = out.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        out["size"] = [size, size]
    elif isinstance(size, list) and len(size) == 1:
        out["size"] = size * 2
    for k in ("mean", "std", "value_range"):
        if isinstance(out.get(k), (int, float)) and not isinstance(out.get(k), bool):
            out[k] = [out[k]]
    return out


def check_preprocess(p: Preprocess, where: str) -> Preprocess:
    """Refuse invalid settings with one line naming ``where`` and the key (e.g. ``--preprocess mean``)."""
    if p.size is not None and (len(p.size) != 2 or min(p.size) < 1):
        raise bad(f"{where} size", list(p.size), "one or two positive integers (H or H, W)")
    if p.resample not in RESAMPLE:
        raise bad(f"{where} resample", p.resample, f"one of {', '.join(RESAMPLE)}")
    if len(p.value_range) != 2 or not all(math.isfinite(v) for v in p.value_range) or \
            p.value_range[0] >= p.value_range[1]:
        raise bad(f"{where} value_range", list(p.value_range), "two finite numbers lo < hi, e.g. 0,1 or -1,1")
    if not p.mean or not all(math.isfinite(v) for v in p.mean):
        raise bad(f"{where} mean", list(p.mean), "finite numbers, one or one per channel")
    if not p.std or not all(math.isfinite(v) and v > 0 for v in p.std):
        raise bad(f"{where} std", list(p.std), "numbers > 0, one or one per channel")
    if p.channels not in CHANNEL_ORDERS:
        raise bad(f"{where} channels", p.channels, "rgb or bgr")
    if p.layout not in LAYOUTS:
        raise bad(f"{where} layout", p.layout, f"one of {', '.join(LAYOUTS)}")
    if p.batch < 1:
        raise bad(f"{where} batch", p.batch, "an integer >= 1")
    return p


def parse_preprocess_flags(items: list[str] | None) -> dict[str, Any]:
    """``["size=224", "mean=0.485,0.456,0.406", "channels=bgr"]`` → a dict of JSON-like values."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise bad("--preprocess", item, "KEY=VALUE, e.g. size=224 or mean=0.485,0.456,0.406")
        try:
            value: Any = json.loads(text)
        except ValueError:
            parts = text.replace("x", ",").split(",") if key == "size" else text.split(",")
            try:
                value = [json.loads(v) for v in parts] if len(parts) > 1 else text
            except ValueError:
                value = text
        out[key.strip()] = value
    return out


def sidecar_path(model: str | Path) -> Path:
    """The preprocessing JSON read beside a model: ``MODEL.json`` for ``MODEL.onnx``."""
    return Path(model).with_suffix(".json")


def load_preprocess(model: str | Path, flags: dict[str, Any] | None = None) -> Preprocess:
    """The JSON beside ``model`` (when there is one) with ``flags`` (``--preprocess``) over it, checked."""
    p = Preprocess()
    side = sidecar_path(model)
    if side.is_file():
        try:
            d = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{side}: not readable JSON ({e}); expected the preprocessing of {model}") from e
        p = check_preprocess(from_dict(Preprocess, _normalise_keys(d), where=str(side)), str(side))
        log.info("preprocessing of %s read from %s", model, side)
    if flags:
        over = from_dict(Preprocess, _normalise_keys(flags), where="--preprocess")
        p = dataclasses.replace(p, **{k: getattr(over, k) for k in flags})
    return check_preprocess(p, "--preprocess")


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxEncoder:
    """Embeds uint8 N×C×H×W images with an ONNX image encoder: ``encoder(images) -> float32 N×D``."""

    def __init__(
        self,
        path: str | Path,                  # the .onnx file
        preprocess: Preprocess | None = None,  # default: Preprocess()
        *,
        device: str = "cpu",               # cpu, or cuda when onnxruntime's CUDA provider is installed
        threads: int | None = None,        # onnxruntime intra-op threads (default: torch's thread count)
        option: str = "--features",        # named in error messages
    ) -> None:
        ort = require("onnxruntime", "onnx", option)
        import torch

        self.path, self.pre, self.option = Path(path), preprocess or Preprocess(), option
        if not self.path.is_file():
            raise UsageError(f"{option}: {str(path)!r} does not exist; expected an .onnx image encoder")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())  # it takes every core by default
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise UsageError(f"{option}: {str(path)!r} is not a model onnxruntime can load "
                             f"({' '.join(str(e).split())[:300]}); expected an ONNX image encoder") from e
        self._resolve_io()

    def _resolve_io(self) -> None:
        opt, p = self.option, self.pre
        inputs = self.session.get_inputs()
        if p.input is not None:
            match = [i for i in inputs if i.name == p.input]
            if not match:
                raise bad(f"{opt} input", p.input, f"one of the model's inputs {[i.name for i in inputs]}")
            inp = match[0]
        elif len(inputs) == 1:
            inp = inputs[0]
        else:
            raise UsageError(f"{opt}: the model has {len(inputs)} inputs {[i.name for i in inputs]}; expected "
                             "one image input (name it with --preprocess input=NAME)")
        if len(inp.shape) != 4 or inp.type not in INPUT_DTYPES:
            raise UsageError(f"{opt}: input {inp.name!r} is {inp.type} of shape {inp.shape}; expected a float "
                             "image batch of rank 4 (N×C×H×W or N×H×W×C)")
        shape = list(inp.shape)
        layout = p.layout
        if layout == "auto":
            layout = "nhwc" if _static(shape[3]) in (1, 3) and _static(shape[1]) not in (1, 3) else "nchw"
        c_dim, hw = (shape[1], shape[2:4]) if layout == "nchw" else (shape[3], shape[1:3])
        self.channels = _static(c_dim)
        if self.channels not in (None, 1, 3):
            raise UsageError(f"{opt}: input {inp.name!r} takes {self.channels} channels ({layout}); expected 1 or "
                             "3 (set --preprocess layout=nchw|nhwc if the layout was guessed wrong)")
        fixed = (_static(hw[0]), _static(hw[1]))
        size = tuple(p.size) if p.size is not None else (fixed if None not in fixed else None)
        if size is not None and None not in fixed and tuple(size) != fixed:
            raise bad(f"{opt} size", list(size), f"the model's fixed input size {list(fixed)}")
        self.size: tuple[int, int] | None = size  # type: ignore[assignment]
        self.fixed_batch = _static(shape[0])
        self.batch = self.fixed_batch or p.batch
        self.layout, self.input_name, self.dtype = layout, inp.name, INPUT_DTYPES[inp.type]
        outputs = self.session.get_outputs()
        if p.output is not None:
            if p.output not in [o.name for o in outputs]:
                raise bad(f"{opt} output", p.output, f"one of the model's outputs {[o.name for o in outputs]}")
            self.output_name = p.output
        else:
            rank2 = [o for o in outputs if len(o.shape) == 2]
            self.output_name = (outputs[0] if len(outputs) == 1 or not rank2 else rank2[0]).name
        for key, values in (("mean", p.mean), ("std", p.std)):
            if self.channels is not None and len(values) not in (1, self.channels):
                raise bad(f"{opt} {key}", list(values), f"1 or {self.channels} values (the model takes "
                                                         f"{self.channels} channels)")

    def describe(self) -> dict[str, Any]:
        """What the features are, for the summary: the model (with its hash), its input and the preprocessing."""
        return {"model": str(self.path), "model_sha256": file_hash(self.path, length=64), "input": self.input_name,
                "output": self.output_name, "layout": self.layout, "channels": self.channels,
                "size": list(self.size) if self.size else None, "batch": self.batch,
                "preprocess": dataclasses.asdict(self.pre)}

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 n×C×H×W → the model's input batch (channels, size, value range, mean/std, order, layout)."""
        import torch
        import torch.nn.functional as F

        p = self.pre
        x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float64)
        c = x.shape[1]
        want = self.channels or (1 if c == 1 else 3)
        if c == 4:  # RGBA: alpha dropped
            x, c = x[:, :3], 3
        if c == 1 and want == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and want == 1:
            x = (x * torch.tensor(LUMA, dtype=x.dtype)[None, :, None, None]).sum(1, keepdim=True)
        if self.size is not None and tuple(x.shape[2:]) != tuple(self.size):
            if p.resample == "nearest":  # nearest-exact: the pixel whose centre is nearest, as image libraries do
                x = F.interpolate(x, size=self.size, mode="nearest-exact")
            else:
                x = F.interpolate(x, size=self.size, mode=p.resample, antialias=True, align_corners=False)
        lo, hi = p.value_range
        x = lo + (hi - lo) * x / 255.0
        if p.channels == "bgr":
            x = x.flip(1)
        ch = x.shape[1]
        if len(p.mean) not in (1, ch) or len(p.std) not in (1, ch):
            raise bad(f"{self.option} mean/std", [list(p.mean), list(p.std)], f"1 or {ch} values each")
        mean = torch.tensor(p.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = torch.tensor(p.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        x = (x - mean) / std
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy().astype(self.dtype))

    def __call__(self, images: np.ndarray, *, what: str = "images", progress: bool = False) -> np.ndarray:
        """Embeddings of uint8 N×C×H×W ``images``: float32 N×D (float64 when the model outputs float64)."""
        n = images.shape[0]
        parts: list[np.ndarray] = []
        bar = progress_bar(-(-n // self.batch), f"embedding {n} {what} with {self.path.name}", "batch",
                           enabled=None if progress else False)
        try:
            for i in range(0, n, self.batch):
                x = self.prepare(images[i:i + self.batch])
                real = x.shape[0]
                if self.fixed_batch and real < self.fixed_batch:  # pad a short last batch, drop its rows after
                    x = np.concatenate([x, np.zeros((self.fixed_batch - real, *x.shape[1:]), x.dtype)])
                try:
                    (out,) = self.session.run([self.output_name], {self.input_name: x})
                except Exception as e:
                    raise RunError(f"{self.option}: {self.path.name} failed on {what} {i}..{i + real - 1} "
                                   f"({' '.join(str(e).split())[:300]})") from e
                out = np.asarray(out)
                if out.ndim < 1 or out.shape[0] != x.shape[0]:
                    raise RunError(f"{self.option}: output {self.output_name!r} has shape {out.shape} for a batch "
                                   f"of {x.shape[0]}; expected one vector per image (name another output with "
                                   "--preprocess output=NAME)")
                parts.append(out[:real].reshape(real, -1))
                bar.update(1)
        finally:
            bar.close()
        feats = np.concatenate(parts)
        feats = feats.astype(np.float32) if feats.dtype != np.float64 else feats
        if not np.isfinite(feats).all():
            raise RunError(f"{self.option}: {self.path.name} produced NaN or inf for some {what}; expected finite "
                           "embeddings (check the preprocessing)")
        return feats
