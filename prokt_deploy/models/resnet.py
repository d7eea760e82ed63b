"""ResNet-style classifiers scalable in width and depth: 'resnet-w{width}-d{depth}'.

Three stages of basic blocks with widths (w, 2w, 4w) and strides (1, 2, 2), ``depth`` blocks
per stage, a 3x3 stem at stride 1 (inputs here are small: 8x8 to 32x32), global average
pooling and a linear head named ``head``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^resnet-w(\d+)-d(\d+)$")
WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
DEPTHS = (1, 2)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, width: int, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = width
        for stage, stride in enumerate((1, 2, 2)):
            c_out = width * 2**stage
            for i in range(depth):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        features = self.blocks(self.stem(x))  # (B, 4w, H/4, W/4)
        return self.head(features.mean(dim=(2, 3)))  # (B, num_classes)


def _parse(name: str) -> dict | None:
    match = _NAME.match(name)
    if not match:
        return None
    width, depth = int(match.group(1)), int(match.group(2))
    if width < 1 or depth < 1:
        return None
    return {"width": width, "depth": depth}


def _build(options: dict, *, num_classes: int, in_channels: int, **_: object) -> nn.Module:
    return ResNet(options["width"], options["depth"], num_classes, in_channels)


register_family(
    Family(
        name="resnet",
        build=_build,
        parse=_parse,
        candidates=lambda: [f"resnet-w{w}-d{d}" for w in WIDTHS for d in DEPTHS],
        example="resnet-w16-d1",
    )
)
