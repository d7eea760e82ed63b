"""On-the-fly image augmentation of training batches, seeded and deterministic.

The recipe's ``data.augment`` section turns it on (off by default, and off in the digits recipe:
8x8 digits lose their meaning when flipped or shifted). Only the training split is augmented;
validation and test images are never touched. The random draws of a batch depend only on
``(seed, epoch, step)``, so a resumed run sees exactly the augmented batches it would have seen,
and every method of a comparison sees the same ones.

Operations, in this order, each per sample:
- ``resized_crop``: a random crop covering a fraction ``[resized_crop, 1]`` of the area (aspect
  ratio 3/4..4/3), resized back to the input size (bilinear);
- ``crop_padding``: pad by ``p`` pixels with the background (the normalised value of a raw 0) and
  crop back to the input size at a random offset;
- ``hflip``: mirror left-right with probability 1/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    crop_padding: int = 0
    hflip: bool = False
    resized_crop: float | None = None  # smallest area fraction kept, e.g. 0.8
    background: tuple[float, ...] = (0.0,)  # per channel, in normalised units

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.resized_crop is not None

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` (B, C, H, W) with draws from ``gen``; returns a new tensor."""
        if not self.active or x.dim() != 4 or not x.is_floating_point():
            return x
        device = x.device
        x = x.cpu()
        if self.resized_crop is not None:
            x = _random_resized_crop(x, self.resized_crop, gen)
        if self.crop_padding > 0:
            x = _padded_crop(x, self.crop_padding, self.background, gen)
        if self.hflip:
            flip = torch.rand(len(x), generator=gen) < 0.5  # (B,)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.to(device)


def _padded_crop(x: torch.Tensor, pad: int, background: tuple[float, ...], gen: torch.Generator) -> torch.Tensor:
    b, c, h, w = x.shape
    padded = torch.empty(b, c, h + 2 * pad, w + 2 * pad, dtype=x.dtype)
    fill = torch.tensor(background if len(background) == c else background[:1] * c, dtype=x.dtype)
    padded[:] = fill[None, :, None, None]
    padded[:, :, pad : pad + h, pad : pad + w] = x
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)  # (B,)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = oy[:, None] + torch.arange(h)  # (B, H)
    cols = ox[:, None] + torch.arange(w)  # (B, W)
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    # A fresh NCHW buffer: with C == 1, .contiguous() keeps the permuted strides (a size-1 dim does not
    # count), and conv backward on such a batch aborted natively here (resnet-w4-d1, 8x8 inputs).
    return torch.empty(b, c, h, w, dtype=x.dtype).copy_(out.permute(0, 3, 1, 2))


def _random_resized_crop(x: torch.Tensor, min_area: float, gen: torch.Generator) -> torch.Tensor:
    b = len(x)
    area = min_area + (1.0 - min_area) * torch.rand(b, generator=gen)  # (B,)
    log_ratio = (torch.rand(b, generator=gen) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the width kept
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sx)  # centre, in [-1, 1] coordinates
    ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one training step's draws: a function of (seed, epoch, step) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step + 0x5EED)


def from_recipe(cfg, spec: dict) -> Augmentation | None:  # recipe.AugmentConfig
    """The augmentation a recipe's ``data.augment`` asks for, or None when it asks for none."""
    if cfg is None:
        return None
    mean, std = spec.get("mean") or [0.0], spec.get("std") or [1.0]
    background = tuple(-m / s for m, s in zip(mean, std))  # a raw 0 after normalisation
    aug = Augmentation(cfg.crop_padding, cfg.hflip, cfg.resized_crop, background)
    return aug if aug.active else None
