"""Plain convolutional classifiers for tiny budgets: 'cnn-w{width}-d{depth}'.

Three stages of (conv3x3 -> BN -> ReLU) x depth with widths (w, 2w, 4w); the first conv of
stages 2 and 3 has stride 2; global average pooling and a linear ``head``. With no residual
branches the exported graph has few nodes, which matters below ~50 kB: there the per-node
overhead of an int8 graph (quantize/dequantize pairs, scales, names) is a large part of the
file. Measured here: the smallest ResNet's int8 ONNX file is ~22.6 kB, cnn-w8-d1's ~18.6 kB.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^cnn-w(\d+)-d(\d+)$")
WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48)
DEPTHS = (1, 2)


class PlainCNN(nn.Module):
    def __init__(self, width: int, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, num_classes)


def _parse(name: str) -> dict | None:
    match = _NAME.match(name)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        return None
    return {"width": int(match.group(1)), "depth": int(match.group(2))}


register_family(
    Family(
        name="cnn",
        build=lambda o, *, num_classes, in_channels, **_: PlainCNN(o["width"], o["depth"], num_classes, in_channels),
        parse=_parse,
        candidates=lambda: [f"cnn-w{w}-d{d}" for w in WIDTHS for d in DEPTHS],
        example="cnn-w8-d1",
    )
)
