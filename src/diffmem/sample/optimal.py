"""The closed-form optimal denoiser of a finite training set, streamed in blocks.

For training images {y_i} the minimiser of the denoising loss is the posterior mean

    D*(x; σ) = Σ_i w_i y_i,   w = softmax_i(−‖x − y_i‖² / 2σ²)

(with labels, the sum runs over the images that carry the requested label). It is computed by
streaming the training set in blocks with an online log-sum-exp: no matrix larger than one
N_batch × block is ever formed, and σ = 0.002 gives neither NaN nor overflow. The term ‖x‖²/2σ² is
the same for every i and cancels in the softmax, so the logits are (x·y_i − ½‖y_i‖²)/σ².

:func:`dataset_optimum` builds the optimum of a dataset (conditional when it has label classes) and
:func:`sample_optimum` samples it: the one way ``diffmem sample --optimal`` and every sweep job do it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from diffmem.config import SampleConfig
from diffmem.devices import resolve_device
from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet
from diffmem.sample.generate import DEFAULT_CONFIG, generate
from diffmem.sample.labels import as_labels, present_classes

log = logging.getLogger(__name__)


class OptimalDenoiser(torch.nn.Module):
    """D*(x; σ, labels) of a uint8 training set; the same call signature and attributes as a trained denoiser.

    Called as ``D(x, sigma, labels=None)`` with ``x`` float N×C×H×W in model scale, ``sigma`` of
    shape (N,) or a scalar (> 0), ``labels`` int (N,) when ``label_dim > 0``. Computes in ``dtype``
    and returns the input's dtype. Attributes: ``sigma_min`` 0, ``sigma_max`` inf, ``label_dim``,
    ``resolution``, ``in_channels``, ``n_train``.
    """

    def __init__(
        self,
        images_uint8: np.ndarray | torch.Tensor,  # training images, uint8 N×C×H×W
        labels: np.ndarray | torch.Tensor | None = None,  # int (N,) in [0, label_dim); used when label_dim > 0
        label_dim: int = 0,                       # number of classes; 0 = unconditional optimum
        dtype: torch.dtype = torch.float64,       # compute dtype (float64 or float32)
        *,
        memory_mb: float = 256.0,                 # budget for one block of logits (N_batch × block)
        block_size: int | None = None,            # training images per block; None = from memory_mb
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        u = torch.as_tensor(np.asarray(images_uint8)) if not isinstance(images_uint8, torch.Tensor) else images_uint8
        if u.dtype != torch.uint8 or u.ndim != 4 or u.shape[0] == 0:
            raise bad("images", u, "uint8 N×C×H×W with N >= 1", shown=f"dtype {u.dtype} shape {tuple(u.shape)}")
        if dtype not in (torch.float64, torch.float32):
            raise bad("dtype", dtype, "torch.float64 or torch.float32", shown=str(dtype))
        if block_size is not None and block_size < 1:
            raise bad("block_size", block_size, "an integer >= 1 or None")
        if isinstance(label_dim, bool) or not isinstance(label_dim, (int, np.integer)) or label_dim < 0:
            raise bad("label_dim", label_dim, "an integer >= 0 (0 = unconditional)")
        if not memory_mb > 0:
            raise bad("memory_mb", memory_mb, "a number > 0")
        n = u.shape[0]
        self.label_dim = int(label_dim)
        self.in_channels = int(u.shape[1])
        self.resolution = int(u.shape[-1])
        self.n_train = int(n)
        self.sigma_min = 0.0
        self.sigma_max = math.inf
        self.compute_dtype = dtype
        self.memory_mb = float(memory_mb)
        self.block_size = block_size

        # class c's images are rows offsets[c]:offsets[c+1] of the label-sorted training set
        order = torch.arange(n)
        counts = torch.tensor([n])
        if self.label_dim > 0:
            if labels is None:
                raise UsageError(f"labels: none given for a conditional optimum (label_dim={self.label_dim}); "
                                 "expected one label per training image")
            lab = as_labels(labels, n, self.label_dim, per="image")
            order = torch.argsort(lab, stable=True)
            counts = torch.bincount(lab, minlength=self.label_dim)
        self.offsets = [0, *torch.cumsum(counts, 0).tolist()]
        self.class_counts = counts.tolist()
        self.register_buffer("order", order, persistent=False)  # row r of Y is training image order[r]
        # model scale y = u / 127.5 − 1 in float64, then cast; built in row blocks so that setup needs no
        # full-size temporaries
        flat = u.reshape(n, -1)
        Y = torch.empty(flat.shape, dtype=dtype, device=device)
        half_sq = torch.empty(n, dtype=dtype, device=device)
        step = max(1, 2**20 // flat.shape[1])  # 8 MB float64 blocks (heap-reused, no fresh pages)
        for j in range(0, n, step):
            rows = flat[j:j + step] if self.label_dim == 0 else flat[order[j:j + step]]
            y64 = rows.to(device=device, dtype=torch.float64).div_(127.5).sub_(1.0)
            Y[j:j + step] = y64
            half_sq[j:j + step] = 0.5 * (y64 * y64).sum(1)
        self.register_buffer("Y", Y, persistent=False)
        self.register_buffer("half_sq", half_sq, persistent=False)
        log.debug("optimum of %d training images, %d classes, %s on %s", n, self.label_dim, dtype, device)

    def extra_repr(self) -> str:
        return (f"n_train={self.n_train}, shape=({self.in_channels}, {self.resolution}, {self.resolution}), "
                f"label_dim={self.label_dim}, dtype={self.compute_dtype}")

    def _rows_per_block(self, batch: int) -> int:
        if self.block_size is not None:
            return self.block_size
        itemsize = torch.finfo(self.compute_dtype).bits // 8
        return max(1, int(self.memory_mb * 2**20) // (itemsize * max(batch, 1)))

    def _stream(self, x: torch.Tensor, inv_two_sigma2: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Σ_i softmax_i(logits) y_i over rows start:stop of Y, one block at a time (online log-sum-exp)."""
        b = x.shape[0]
        rows = self._rows_per_block(b)
        m = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)  # running max of the logits
        s = torch.zeros(b, dtype=x.dtype, device=x.device)  # running Σ exp(logit − m)
        acc = torch.zeros_like(x)  # running Σ exp(logit − m) y_i
        two_inv = 2 * inv_two_sigma2[:, None]  # 1/σ²
        for j in range(start, stop, rows):
            Yb = self.Y[j:min(j + rows, stop)]
            # log w_i + const = (x·y_i − ½‖y_i‖²)/σ²  (= −‖x − y_i‖²/2σ² + ‖x‖²/2σ²)
            logits = torch.addmm(self.half_sq[j:j + Yb.shape[0]], x, Yb.T, beta=-1).mul_(two_inv)
            m_new = torch.maximum(m, logits.amax(1))
            scale = torch.exp(m - m_new)  # rescales the earlier blocks' sums to the new max (0 at the start)
            p = logits.sub_(m_new[:, None]).exp_()
            s = s * scale + p.sum(1)
            acc = torch.addmm(acc * scale[:, None], p, Yb)
            m = m_new
        return acc / s[:, None]

    def _gathered(self, x: torch.Tensor, inv_two_sigma2: torch.Tensor, lab: torch.Tensor, counts: torch.Tensor,
                  k_max: int) -> torch.Tensor:
        """The conditional optimum for small classes: each sample's class rows gathered into one padded batch."""
        offsets = torch.tensor(self.offsets[:-1], device=x.device)
        k = torch.arange(k_max, device=x.device)
        valid = k[None, :] < counts[lab][:, None]  # N_batch × k_max
        idx = torch.where(valid, offsets[lab][:, None] + k[None, :], 0)
        Yg = self.Y[idx]  # N_batch × k_max × D
        # log w_i + const = (x·y_i − ½‖y_i‖²)/σ² over the sample's class; padding gets −inf
        logits = (torch.bmm(Yg, x[:, :, None]).squeeze(2) - self.half_sq[idx]) * (2 * inv_two_sigma2[:, None])
        w = torch.softmax(logits.masked_fill(~valid, -math.inf), dim=1)
        return torch.bmm(w[:, None, :], Yg).squeeze(1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D*(x; σ) for a batch; returns a tensor of ``x``'s shape, dtype and device."""
        b = x.shape[0]
        if tuple(x.shape[1:]) != (self.in_channels, self.resolution, self.resolution):
            raise bad("x", x, f"N×{self.in_channels}×{self.resolution}×{self.resolution}",
                      shown=f"shape {tuple(x.shape)}")
        dev = self.Y.device
        xf = x.reshape(b, -1).to(device=dev, dtype=self.compute_dtype)
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=dev).reshape(-1).expand(b)
        if not bool((sig > 0).all()) or not bool(torch.isfinite(sig).all()):
            raise UsageError(f"sigma: values in [{float(sig.min())}, {float(sig.max())}] are not valid; "
                             "expected finite σ > 0")
        inv_two_sigma2 = (0.5 / sig**2).to(self.compute_dtype)
        if self.label_dim == 0:
            out = self._stream(xf, inv_two_sigma2, 0, self.n_train)
        else:
            if labels is None:
                raise UsageError(f"labels: none given to a conditional optimum (label_dim={self.label_dim}); "
                                 "expected one label per sample")
            lab = as_labels(labels, b, self.label_dim, device=dev)
            counts = torch.tensor(self.class_counts, device=dev)
            empty = (counts[lab] == 0).nonzero()
            if len(empty):
                raise UsageError(f"labels: class {int(lab[empty[0, 0]])} has no training images (label_dim="
                                 f"{self.label_dim}, classes with images: {sum(k > 0 for k in self.class_counts)}); "
                                 "expected a label that some training image carries")
            k_max = int(counts[lab].max())
            itemsize = torch.finfo(self.compute_dtype).bits // 8
            if k_max <= self._rows_per_block(b) and b * k_max * xf.shape[1] * itemsize <= self.memory_mb * 2**20:
                out = self._gathered(xf, inv_two_sigma2, lab, counts, k_max)
            else:
                out = torch.empty_like(xf)
                # the conditional optimum: the softmax runs over the images that carry each sample's label
                for c in torch.unique(lab).tolist():
                    rows = (lab == c).nonzero().squeeze(1)
                    out[rows] = self._stream(xf[rows], inv_two_sigma2[rows], self.offsets[c], self.offsets[c + 1])
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def dataset_optimum(
    train: ImageSet,                      # the training images (uint8) and their labels
    label_classes: int,                   # the dataset's label classes; 0: the unconditional optimum
    *,
    dtype: torch.dtype = torch.float64,   # compute dtype of the optimum
    device: torch.device | str = "cpu",
) -> tuple[OptimalDenoiser, np.ndarray | None]:
    """The closed-form optimum of a dataset — conditional on its labels when it has label classes — and the
    classes conditional samples draw their labels from: those some training image carries (None when
    unconditional), so that no sample asks for a class without images."""
    conditional = label_classes > 0
    denoiser = OptimalDenoiser(train.images, train.labels if conditional else None, label_dim=label_classes,
                               dtype=dtype, device=device)
    return denoiser, present_classes(train.labels) if conditional else None


def sample_optimum(
    train: ImageSet,
    label_classes: int,
    n: int,                               # samples, with seeds seed … seed + n − 1
    seed: int,
    cfg: SampleConfig = DEFAULT_CONFIG,   # the sampler (its device runs the optimum)
    *,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> ImageSet:
    """``n`` samples of the closed-form optimum of a dataset (:func:`dataset_optimum`), labels drawn per seed."""
    device = resolve_device(cfg.device, "sample.device")
    denoiser, classes = dataset_optimum(train, label_classes, dtype=dtype, device=device)
    return generate(denoiser, n, seed, cfg, classes=classes, progress=progress)
