"""Quantization-aware distillation: fine-tune a student with simulated int8 against its teacher, for the int8 export.

Used by ``export`` when post-training int8 misses the accuracy gate even with the accuracy-aware fallback (``budget.qat:
auto``), or when asked (``export --qat`` / ``budget.qat: on``). The run's student is never changed: a copy is trained.

What is simulated (what the exporters then do for real):

- **Weights**: every Conv1d/Conv2d/Linear weight is fake-quantized per output channel, symmetric int8 ([-127, 127]), the
  scheme of every exporter here. The scale of each channel is *learned* (LSQ, Esser et al. 2020: the gradient of the
  loss with respect to the step size, scaled by ``1 / sqrt(numel * 127)``; initialised to ``2 * mean|w| / sqrt(127)``),
  so a channel whose range is set by a few large weights can trade clipping them for resolution on the rest. The
  weights get the straight-through gradient. Per-channel symmetric quantization commutes with the per-channel scale
  that folding the following BatchNorm applies, so quantizing before the fold (here) and after it (the exporters)
  round the same way.
- **Activations**: the output of every ReLU/ReLU6 is fake-quantized per tensor to 8 bits over its observed range
  (an exponential moving average of the batch min/max, as the exporters' calibration takes min/max).
- BatchNorm statistics are frozen (eval mode) so the fold the exporters make is the one trained against.

The loss is the teacher's soft targets (KL at ``temperature``, weight ``alpha``) plus the labels' cross-entropy
(``1 - alpha``); a run whose method keeps no teacher (scratch) fine-tunes on the labels alone. At the end the
fake-quantized weights are written into the copy as plain fp32 values (each a multiple of its learned step; clipped
weights at the clip), so the exporters' post-training quantization of the result reproduces the trained grid: its
per-channel scale is the channel's largest baked weight / 127, the learned step where the channel clipped.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

QMAX = 127  # symmetric int8 weights: [-127, 127]
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class LearnedStepWeight(nn.Module):
    """Parametrization of a weight: per-output-channel symmetric fake quantization with a learned step (LSQ)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        dims = tuple(range(1, weight.dim()))
        init = 2 * weight.detach().abs().mean(dim=dims) / math.sqrt(QMAX)
        self.scale = nn.Parameter(init.clamp_min(1e-8))
        self.register_buffer("zero_point", torch.zeros_like(init))
        self.grad_factor = 1.0 / math.sqrt(weight[0].numel() * QMAX)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale.abs().clamp_min(1e-8)
        return torch._fake_quantize_learnable_per_channel_affine(w, scale, self.zero_point, 0, -QMAX, QMAX, self.grad_factor)


class _ActivationObserver:
    """Forward hook: 8-bit per-tensor fake quantization of a module's output over an EMA of its min/max."""

    def __init__(self, momentum: float = 0.1) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.momentum = momentum

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        lo, hi = min(float(output.detach().min()), 0.0), max(float(output.detach().max()), 0.0)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.momentum * (lo - self.lo)
            self.hi += self.momentum * (hi - self.hi)
        scale = max(self.hi - self.lo, 1e-8) / 255.0
        zero = int(round(-self.lo / scale))
        return torch.fake_quantize_per_tensor_affine(output, scale, zero, 0, 255)


@dataclass
class QATResult:
    """What the fine-tuning did (recorded in the int8 artifact's ``qat`` entry)."""

    steps: int
    epochs: int
    teacher: bool
    seconds: float
    val_accuracy_simulated_before: float
    val_accuracy_simulated_after: float

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _simulated(model: nn.Module) -> list:
    """Put the fake quantization into ``model`` (in place): weight parametrizations and activation hooks."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", LearnedStepWeight(m.weight))
    return [m.register_forward_hook(_ActivationObserver()) for m in model.modules() if isinstance(m, _ACTIVATIONS)]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch].to(device)).argmax(1).cpu() == y[i : i + batch]).sum())
    return correct / max(1, len(x))


def quantization_aware_distill(
    student: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    teacher: nn.Module | None = None,
    epochs: int = 3,
    min_steps: int = 300,
    batch_size: int = 128,
    lr: float = 1e-4,
    scale_lr: float = 1e-2,
    temperature: float = 4.0,
    alpha: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[nn.Module, QATResult]:
    """A copy of ``student`` fine-tuned with simulated int8 (module docstring) on ``train`` = (x, y) for ``epochs``
    epochs, raised to at least ``min_steps`` optimizer steps on small data; ``val`` = (x, y) is only measured (the
    simulated model's accuracy before and after). Returns the copy with its quantized weights written in, in eval
    mode, on the CPU."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(student).to(dev)
    hooks = _simulated(model)
    teach = copy.deepcopy(teacher).to(dev).eval() if teacher is not None else None
    x, y = train
    before = _accuracy(model, *val, dev)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    scales = [p for n, p in model.named_parameters() if n.endswith("scale") and "parametrizations" in n]
    weights = [p for n, p in model.named_parameters() if not (n.endswith("scale") and "parametrizations" in n)]
    opt = torch.optim.AdamW([{"params": weights, "lr": lr}, {"params": scales, "lr": scale_lr}], weight_decay=0.0)
    t0 = time.perf_counter()
    steps = 0
    for _ in range(epochs):
        model.train()
        for m in model.modules():  # the BatchNorm statistics the exporters fold stay as trained
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if teach is not None:
                with torch.no_grad():
                    soft = F.softmax(teach(xb) / temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean") * temperature**2
                loss = alpha * kd + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    after = _accuracy(model, *val, dev)
    for h in hooks:
        h.remove()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)  # the quantized values, as fp32
    model = model.cpu().eval()
    return model, QATResult(steps, epochs, teach is not None, round(time.perf_counter() - t0, 1), before, after)
