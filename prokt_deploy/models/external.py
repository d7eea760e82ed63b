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

Both are teachers only (the planner never offers them as students) and both are checked on two real
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


def is_external(arch: str | None) -> bool:
    """Whether ``arch`` names a model loaded from a user's file or directory (hf: or torchscript:)."""
    return bool(arch) and (arch.startswith("hf:") or arch.startswith(TORCHSCRIPT_PREFIX))


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
    from prokt_deploy.models.text import _transformers, resolve_hf_path

    transformers = _transformers()
    path = resolve_hf_path(ref)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad directory
        raise ModelError(f"hf:{ref}: cannot read the model config in {path}: {_first_line(e)}") from None
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if config.model_type not in mapping:
        raise ModelError(f"hf:{ref}: model type {config.model_type!r} is not an image classifier "
                         f"(AutoModelForImageClassification cannot load it); the data is images")
    channels = int(getattr(config, "num_channels", 3))
    if channels != in_channels and not (in_channels == 1 and channels == 3):
        raise ModelError(f"hf:{ref}: the model takes {channels}-channel images but the data has {in_channels} channels")
    kwargs = {}
    if getattr(config, "num_labels", None) != num_classes:
        # transformers re-initialises a head whose shape does not match (the backbone is kept)
        kwargs = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as e:  # noqa: BLE001
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
    except Exception as e:  # noqa: BLE001 - torch.jit raises RuntimeError and others for a bad file
        raise ModelError(f"torchscript:{path}: not a TorchScript file torch.jit.load can read ({_first_line(e)}); "
                         f"save one with torch.jit.save(torch.jit.script(model), path)") from None
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
    except Exception as e:  # noqa: BLE001 - whatever the user's model raises on our input
        raise ModelError(f"teacher {arch}: fails on an input batch of shape {tuple(example.shape)}: {_first_line(e)}") from None
    finally:
        teacher.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (example.shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"teacher {arch}: returns {got} for a batch of {example.shape[0]}, "
                         f"expected logits of shape ({example.shape[0]}, {num_classes}) for the data's {num_classes} classes")


def _parse_torchscript(name: str) -> dict | None:
    return {"path": name[len(TORCHSCRIPT_PREFIX):]} if name.startswith(TORCHSCRIPT_PREFIX) and len(name) > len(TORCHSCRIPT_PREFIX) else None


def _build_torchscript(o: dict, **_: object) -> nn.Module:
    return build_torchscript(o["path"])


register_family(Family("torchscript", _build_torchscript, _parse_torchscript, lambda: [], "torchscript:/path/model.pt", "image"))
