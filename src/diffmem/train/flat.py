"""Parameters, Adam moments and EMA weights in single flat buffers: one kernel per update, not one per tensor.

The digits model has 130 parameter tensors of 16 – 9,216 values. ``torch.optim.Adam``'s default
(for-loop) update runs ~10 small kernels per tensor, and the EMA one per tensor: ~1,400 kernel
launches per step that cost 10–15 % of a CPU training step. Here every parameter of a module is made
a view into one contiguous buffer (:func:`flatten_parameters`), so the same elementwise arithmetic
runs once over the buffer:

- :class:`FlatAdam` is ``torch.optim.Adam`` (coupled L2 weight decay, no AMSGrad) applied to the
  flat buffer through torch's own single-tensor Adam; element by element it is the same arithmetic as
  the default per-tensor update, and its ``state_dict`` has the layout of ``torch.optim.Adam``'s, so
  training states stay interchangeable;
- :class:`FlatEMA` is :class:`~diffmem.train.ema.EMAUpdater` (ema ← lerp(model, ema, β)) on the buffers.

Both are bit-identical to the per-tensor versions on the CPU (tests hold them to it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam as adam_update


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Make every parameter of ``module`` a view into one new contiguous buffer (values kept); return it.

    Call it after the module is on its device: ``module.to(...)`` would give the parameters their own
    storage again (in-place copies such as ``load_state_dict`` keep the views).
    """
    params = list(module.parameters())
    if not params:
        return torch.empty(0)
    dtypes = {(p.dtype, p.device) for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"parameters of several dtypes or devices {sorted(map(str, dtypes))}; expected one")
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for p in params:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            offset += n
    return flat


def views_of(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like ``params``, in order (the layout :func:`flatten_parameters` makes)."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def backs(flat: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """True when ``params`` are, in order, the consecutive views of ``flat`` that :func:`flatten_parameters` made."""
    if sum(p.numel() for p in params) != flat.numel():
        return False
    base, offset = flat.data_ptr(), 0
    for p in params:
        if p.data_ptr() != base + offset * flat.element_size() or not p.is_contiguous():
            return False
        offset += p.numel()
    return True


class FlatAdam(torch.optim.Optimizer):
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` for parameters that view one flat buffer.

    Every parameter must have a gradient at every step (diffmem's networks use all their parameters).
    The gradients are gathered into one buffer (one ``cat``), then one single-tensor Adam update runs.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        flat: torch.Tensor,                   # the buffer the parameters view (from flatten_parameters)
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,            # coupled L2 (added to the gradient), as torch.optim.Adam
    ) -> None:
        params = list(params)
        if not backs(flat, params):
            raise ValueError("params are not the consecutive views of flat; call flatten_parameters first")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.params = params
        self.flat = flat
        self.grad = torch.zeros_like(flat)  # the gathered gradient
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.step_t = torch.tensor(0.0)  # float32 step count, as torch.optim.Adam keeps it

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer.step)
        if closure is not None:
            raise ValueError("FlatAdam.step: closures are not supported")
        grads = [p.grad for p in self.params]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(f"FlatAdam: parameter {missing[0]} has no gradient; every parameter must have one")
        torch.cat([g.reshape(-1) for g in grads], out=self.grad)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        # torch's single-tensor Adam (Kingma & Ba 2015, Alg. 1, with L2 added to the gradient) on the buffers
        adam_update([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.step_t],
                    foreach=False, fused=None, capturable=False, differentiable=False, grad_scale=None,
                    found_inf=None, has_complex=False, decoupled_weight_decay=False, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=False)
        return None

    def state_dict(self) -> dict:
        """The layout of ``torch.optim.Adam.state_dict()``: per parameter ``step``, ``exp_avg``, ``exp_avg_sq``."""
        sd = super().state_dict()
        if float(self.step_t) > 0:
            ea, es = views_of(self.exp_avg, self.params), views_of(self.exp_avg_sq, self.params)
            sd["state"] = {i: {"step": self.step_t.clone(), "exp_avg": ea[i].clone(), "exp_avg_sq": es[i].clone()}
                           for i in range(len(self.params))}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``torch.optim.Adam`` or :class:`FlatAdam` state dict into the flat buffers."""
        super().load_state_dict(state_dict)
        states = [self.state.get(p) for p in self.params]
        self.state.clear()
        if not any(states):
            self.exp_avg.zero_()
            self.exp_avg_sq.zero_()
            self.step_t.zero_()
            return
        if not all(states):
            raise ValueError("optimizer state covers only some parameters; expected all or none")
        steps = {float(s["step"]) for s in states}
        if len(steps) != 1:
            raise ValueError(f"optimizer state has parameters at different steps {sorted(steps)}; expected one")
        with torch.no_grad():
            for buf, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
                for v, s in zip(views_of(buf, self.params), states):
                    v.copy_(s[key])
            self.step_t.fill_(steps.pop())


class FlatEMA:
    """ema ← β·ema + (1 − β)·model, for an EMA module and a model whose parameters view flat buffers.

    The same arithmetic as :class:`~diffmem.train.ema.EMAUpdater` (``lerp(model, ema, β)`` per
    element, buffers copied) in one kernel over the whole buffer.
    """

    def __init__(self, ema: nn.Module, ema_flat: torch.Tensor, model: nn.Module, model_flat: torch.Tensor) -> None:
        if not (backs(ema_flat, list(ema.parameters())) and backs(model_flat, list(model.parameters()))):
            raise ValueError("FlatEMA: the parameters do not view the given buffers; call flatten_parameters")
        self.ema_flat, self.model_flat = ema_flat, model_flat
        self.ema_buffers = list(ema.buffers())
        self.model_buffers = list(model.buffers())

    @torch.no_grad()
    def __call__(self, beta: float) -> None:
        torch.lerp(self.model_flat, self.ema_flat, beta, out=self.ema_flat)
        for be, bm in zip(self.ema_buffers, self.model_buffers):
            be.copy_(bm)
