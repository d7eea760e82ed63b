"""Quantization-aware distillation: fine-tune a student with simulated int8 against its teacher, for the int8 export.

Used by ``export`` when post-training int8 misses the accuracy gate even with the accuracy-aware fallback (``budget.qat:
auto``), or when asked (``export --qat`` / ``budget.qat: on``). The run's student is never changed: a copy is trained.

What is simulated (what the exporters then do for real):

- **Weights**: every Conv1d/Conv2d/Linear weight is fake-quantized per output channel, symmetric int8 ([-127, 127]),
  the scheme of every exporter here. The step of each channel is *learned* (LSQ, Esser et al. 2020: the
  straight-through gradient of the loss with respect to the step), so a channel whose range is set by a few large
  weights can trade clipping them for resolution on the rest; the weights get the straight-through gradient. Two
  deviations from LSQ, after LSQ's own settings made a 64 kB mobile student *worse* than post-training int8
  (docs/results.md, "the mobile family at 64 kB"):
  - the step starts at the clip with the least squared rounding error, each weight's error weighted by the mean
    square of the input it multiplies on the first ``calibration_samples`` training samples (:func:`mse_step`:
    a weight on a dead input costs nothing, so an outlier there is clipped at once). LSQ's ``2 * mean|w| /
    sqrt(127)`` is meant for 2-4 bits; at 8 bits it started 0.3 validation points below post-training int8;
  - the step is learned as its logarithm, so an Adam step changes it by a fraction (``scale_lr``) instead of an
    absolute amount, which at 1e-2 is larger than most channels' steps.

  Per-channel symmetric quantization commutes with the per-channel scale that folding the following BatchNorm
  applies, so quantizing before the fold (here) and after it (the exporters) round the same way.
- **Activations**: the output of every ReLU/ReLU6 is fake-quantized per tensor to 8 bits over its observed range
  (an exponential moving average of the batch min/max, as the exporters' calibration takes min/max).
- BatchNorm statistics are frozen (eval mode) so the fold the exporters make is the one trained against.

The loss is the teacher's soft targets (KL at ``temperature``, weight ``alpha``) plus the labels' cross-entropy
(``1 - alpha``); a run whose method keeps no teacher (scratch) fine-tunes on the labels alone. The batches get the
run's augmentation (the student was trained with it), and the simulated model is kept at its best validation
epoch, the start (epoch 0) included: the fine-tuning never returns a model that does worse on validation than where
it began (the old settings, without either, ended 0.9 validation points below their start). At the end the
fake-quantized weights are written into the copy as plain fp32 values (each a multiple of its learned step; clipped
weights at the clip), so the exporters' post-training quantization of the result reproduces the trained grid: its
per-channel scale is the channel's largest baked weight / 127, the learned step where the channel clipped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from prokt_deploy.train.augment import step_generator

QMAX = 127  # symmetric int8 weights: [-127, 127]
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class LearnedStepWeight(nn.Module):
    """Parametrization of a weight: per-output-channel symmetric fake quantization with a learned step (LSQ)."""

    def __init__(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> None:
        super().__init__()
        init = mse_step(weight.detach(), importance)
        self.log_scale = nn.Parameter(init.log())
        self.register_buffer("zero_point", torch.zeros_like(init))
        self.grad_factor = 1.0 / math.sqrt(weight[0].numel() * QMAX)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.exp()
        return torch._fake_quantize_learnable_per_channel_affine(w, scale, self.zero_point, 0, -QMAX, QMAX, self.grad_factor)


#: The clips tried per channel, as fractions of its largest |weight| (1: no clipping, post-training int8's step).
CLIP_FRACTIONS = torch.cat([torch.linspace(1.0, 0.5, 26), torch.logspace(math.log10(0.45), -2, 20)])


def mse_step(weight: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Per output channel, the int8 step (clip / 127) among ``CLIP_FRACTIONS`` of the channel's largest |weight| whose
    symmetric rounding with clipping has the least squared error, each weight's error times its ``importance`` (the
    shape of ``weight``; the mean square of the input it multiplies: the diagonal of the layer output's error, as in
    GPTQ's objective); ties go to the larger clip. A channel of normal weights keeps (nearly) its largest weight; a
    weight on an input that is always zero (a dead channel) costs nothing, so an outlier there is clipped."""
    w = weight.reshape(len(weight), -1).float()  # (C, N)
    imp = torch.ones_like(w) if importance is None else importance.reshape(w.shape).float()
    top = w.abs().amax(dim=1).clamp_min(1e-8)  # (C,)
    steps = top[None, :] * CLIP_FRACTIONS.to(w.device)[:, None] / QMAX  # (R, C)
    err = torch.stack(  # one clip at a time: a (C, N) temporary, not (R, C, N), for a large Linear
        [(((w / s[:, None]).round().clamp(-QMAX, QMAX) * s[:, None] - w).pow(2) * imp).sum(dim=1) for s in steps]
    )  # (R, C)
    return steps.gather(0, err.argmin(dim=0, keepdim=True))[0]  # argmin: the first (largest) clip on a tie


def input_power(model: nn.Module, x: torch.Tensor, batch: int = 256) -> dict[nn.Module, torch.Tensor]:
    """For every Conv/Linear of ``model``, the mean square of each input channel (features, for a Linear) over the
    samples ``x``, in eval mode: the weight of each weight's rounding error in :func:`mse_step`."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        t = inputs[0].detach().float()
        t = t.reshape(-1, t.shape[-1]) if isinstance(module, nn.Linear) else t.transpose(0, 1).reshape(t.shape[1], -1).T
        sums[module] = sums.get(module, 0) + t.pow(2).sum(dim=0)
        counts[module] = counts.get(module, 0) + len(t)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _WEIGHTED)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(x[i : i + batch])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: sums[m] / counts[m] for m in sums}


def _importance(module: nn.Module, power: torch.Tensor) -> torch.Tensor:
    """``power`` (per input channel) spread over ``module``'s weight: each weight gets its input channel's (grouped
    convolutions: the channel of its group)."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return power[None, :].expand_as(w)
    groups, out, per = module.groups, w.shape[0], w.shape[1]
    channel = (torch.arange(out)[:, None] // (out // groups)) * per + torch.arange(per)[None, :]  # (out, in/groups)
    return power[channel].reshape(out, per, *([1] * (w.dim() - 2))).expand_as(w)


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


def _simulated(model: nn.Module, power: dict[nn.Module, torch.Tensor] | None = None) -> list:
    """Put the fake quantization into ``model`` (in place): weight parametrizations (their steps from the input
    ``power`` of :func:`input_power` when given) and activation hooks."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED) and not parametrize.is_parametrized(m, "weight"):
            imp = _importance(m, power[m].to(m.weight.device)) if power and m in power else None
            parametrize.register_parametrization(m, "weight", LearnedStepWeight(m.weight, imp))
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
    scale_lr: float = 1e-3,
    temperature: float = 4.0,
    alpha: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    calibration_samples: int = 512,
) -> tuple[nn.Module, QATResult]:
    """A copy of ``student`` fine-tuned with simulated int8 (module docstring) on ``train`` = (x, y) for ``epochs``
    epochs, raised to at least ``min_steps`` optimizer steps on small data, each batch through ``augment(x, gen)``
    when given; ``val`` = (x, y) picks the epoch kept (the start included) and gives the simulated model's accuracy
    before and after. ``scale_lr`` is the Adam rate of the steps' logarithms (a relative change). Returns the copy with
    its quantized weights written in, in eval mode, on the CPU."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(student).to(dev)
    teach = copy.deepcopy(teacher).to(dev).eval() if teacher is not None else None
    x, y = train
    hooks = _simulated(model, input_power(model, x[:calibration_samples].to(dev)))
    before = _accuracy(model, *val, dev)
    best, kept = before, copy.deepcopy(model.state_dict())
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    scales = [p for n, p in model.named_parameters() if n.endswith("log_scale") and "parametrizations" in n]
    weights = [p for n, p in model.named_parameters() if not (n.endswith("log_scale") and "parametrizations" in n)]
    opt = torch.optim.AdamW([{"params": weights, "lr": lr}, {"params": scales, "lr": scale_lr}], weight_decay=0.0)
    t0 = time.perf_counter()
    steps = 0
    for epoch in range(epochs):
        model.train()
        for m in model.modules():  # the BatchNorm statistics the exporters fold stay as trained
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        for step, idx in enumerate(torch.randperm(len(x), generator=gen).split(batch_size)):
            xb, yb = x[idx], y[idx].to(dev)
            if augment is not None:
                xb = augment(xb, step_generator(seed, epoch, step))
            xb = xb.to(dev)
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
        score = _accuracy(model, *val, dev)
        if score > best:
            best, kept = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    after = best
    for h in hooks:
        h.remove()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)  # the quantized values, as fp32
    model = model.cpu().eval()
    return model, QATResult(steps, epochs, teach is not None, round(time.perf_counter() - t0, 1), before, after)
