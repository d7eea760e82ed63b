"""VGG-style teachers: 'vgg-w{width}' (optionally 'vgg-w{width}-f{fc}').

Three stages of two (conv3x3 -> BN -> ReLU) with widths (w, 2w, 4w), each followed by 2x2 max
pooling (28 -> 14 -> 7 -> 3), then the feature map is flattened into a hidden linear layer of
``fc`` units (default 16w), dropout 0.3 and a linear ``head``.

Why this shape for the default teacher: most of its parameters sit in the flatten layer and in
the low-resolution convs, where a parameter costs few multiply-accumulates. vgg-w32 has ~0.88M
parameters (44x the default 100 kB student) for ~30M MACs per image, against ~83M for a ResNet
of the same size (resnet-w48-d1): a large teacher that ProKT can still fine-tune jointly on
2 CPU cores. It is not a student family (no candidates): the planner never picks it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^vgg-w(\d+)(?:-f(\d+))?$")


class VGG(nn.Module):
    def __init__(self, width: int, fc: int, num_classes: int, in_channels: int, image_hw: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage in range(3):
            c_out = width * 2**stage
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        # Adaptive pooling to 3x3 keeps the flatten size fixed whatever the input resolution.
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 9, fc), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(fc, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        features = self.pool(self.features(x))  # (B, 4w, 3, 3)
        return self.head(self.hidden(features))  # (B, num_classes)


def _parse(name: str) -> dict | None:
    match = _NAME.match(name)
    if not match or int(match.group(1)) < 1:
        return None
    width = int(match.group(1))
    fc = int(match.group(2)) if match.group(2) else 16 * width
    return {"width": width, "fc": fc} if fc >= 1 else None


register_family(
    Family(
        name="vgg",
        build=lambda o, *, num_classes, in_channels, **_: VGG(o["width"], o["fc"], num_classes, in_channels),
        parse=_parse,
        candidates=lambda: [],  # a teacher family: never planned as a student
        example="vgg-w32",
    )
)
