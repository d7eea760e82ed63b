"""Registry and factory for architecture families."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prokt_deploy.errors import ModelError


@dataclass(frozen=True)
class Family:
    """A scalable architecture family.

    ``build(options, num_classes, in_channels)`` makes a module from the parsed options;
    ``parse(name)`` turns 'resnet-w16-d1' into options or returns None when the name is not
    this family's; ``candidates()`` lists the student names the planner may choose from.
    """

    name: str
    build: Callable[..., nn.Module]
    parse: Callable[[str], dict | None]
    candidates: Callable[[], list[str]]
    example: str
    modality: str = "image"  # "image": (B, C, H, W) float input; "text": packed (B, 2, L) token ids + mask


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise ModelError(f"unknown model family {name!r}; known families: {known}") from None


def student_families(spec: str | list[str], modality: str) -> list[str]:
    """The student families a recipe's ``student.family`` names: one name, a list of names, or ``auto``
    (every registered family of the data's ``modality`` that offers student candidates).

    Raises ModelError for an unknown name, a family of the other modality or one with no candidates.
    """
    names = [spec] if isinstance(spec, str) else list(spec)
    if names == ["auto"]:
        return sorted(n for n, f in _FAMILIES.items() if f.modality == modality and f.candidates())
    if not names:
        raise ModelError("student.family is an empty list; name at least one family or use auto")
    if "auto" in names:
        raise ModelError("student.family: auto stands alone (it already means every family of the data's kind)")
    out: list[str] = []
    for name in names:
        fam = get_family(name)
        if fam.modality != modality:
            others = ", ".join(student_families("auto", modality))
            raise ModelError(
                f"student family {name!r} is {'an' if fam.modality == 'image' else 'a'} {fam.modality} family but the data is {modality}; use {others} or auto"
            )
        if not fam.candidates():
            raise ModelError(f"{name!r} is not a student family (it offers no candidates; it is for teachers)")
        if name not in out:
            out.append(name)
    return out


def create_model(arch: str, *, num_classes: int, in_channels: int | None = None, **input_kwargs: object) -> nn.Module:
    """Build a registered architecture by name, e.g. 'resnet-w16-d1' or 'tfm-h128-l2'.

    Image families use ``in_channels``; text families ``vocab_size`` and ``max_length`` (see
    :meth:`prokt_deploy.data.DataBundle.model_kwargs`). Each family ignores what it does not use.
    """
    for family in _FAMILIES.values():
        options = family.parse(arch)
        if options is not None:
            return family.build(options, num_classes=num_classes, in_channels=in_channels, **input_kwargs)
    examples = ", ".join(f.example for f in _FAMILIES.values())
    raise ModelError(f"unknown architecture {arch!r}; names look like: {examples}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...], example: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of one forward pass on one sample of ``input_shape`` (C, H, W), or on
    ``example`` (one sample with a batch dimension, e.g. a packed text input). Counts convolutions and
    linear layers (for transformers: the projections and feed-forward layers, not attention scores;
    LSTMs are not counted)."""
    macs = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
            macs += output.numel() // output.shape[0] * k
        elif isinstance(module, nn.Linear):
            macs += output.numel() // output.shape[-1] // output.shape[0] * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example if example is not None else torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def init_conv_weights(model: nn.Module) -> None:
    """He (fan-out) initialisation of every conv, as ResNets are usually initialised."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer: ``model.head`` if present, otherwise the last nn.Linear."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    # a TorchScript submodule is a RecursiveScriptModule that remembers its class as original_name
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) or getattr(m, "original_name", None) == "Linear"]
    if not linears:
        raise ModelError("model has no nn.Linear classification head to initialise")
    return linears[-1]


def zero_init_head(model: nn.Module) -> None:
    """Zero the head's weight and bias so the model starts at the uniform distribution (PROKT.md)."""
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
