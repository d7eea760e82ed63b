"""Safe weight files: safetensors, or a state_dict read with ``torch.load(weights_only=True)``.

Nothing here ever unpickles arbitrary objects: a file that needs code to load is refused.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.errors import ModelError
from prokt_deploy.rundir.workspace import write_bytes_atomic

SAFE_FORMATS = "a .safetensors file, or a plain state_dict saved with torch.save (read with weights_only=True)"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} not found")
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {str(path)!r} is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers/truncation
            raise ModelError(f"checkpoint {str(path)!r} is not a valid safetensors file ({_first_line(e)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol warnings would break the one-line error
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"checkpoint {str(path)!r} cannot be loaded safely: it holds pickled Python objects that could run code; refused. Use {SAFE_FORMATS}"
        ) from None
    except Exception as e:  # noqa: BLE001 - RuntimeError for truncated or non-zip files
        raise ModelError(f"checkpoint {str(path)!r} cannot be loaded safely ({_first_line(e)}); use {SAFE_FORMATS}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {str(path)!r} is not a state_dict of tensors; use {SAFE_FORMATS}")
    return obj


SHIPPED_PREFIX = "shipped:"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint path, or ``shipped:NAME`` for a teacher shipped inside the package
    (``prokt_deploy/teachers/NAME.safetensors``, found with importlib.resources so a wheel install has it)."""
    text = str(path)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(path)
    from importlib.resources import files

    name = text[len(SHIPPED_PREFIX) :]
    folder = files("prokt_deploy") / "teachers"
    candidate = folder / f"{name}.safetensors"
    if not candidate.is_file():
        known = sorted(p.name.removesuffix(".safetensors") for p in folder.iterdir() if p.name.endswith(".safetensors")) if folder.is_dir() else []
        raise ModelError(f"no shipped teacher {name!r}; shipped: {', '.join(known) or 'none'}")
    return Path(str(candidate))


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = resolve_checkpoint(path)
    state = _strip_prefixes(load_state_dict(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if missing or unexpected or mismatched:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            detail.append(f"{len(mismatched)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise ModelError(f"checkpoint {str(path)!r} does not match the architecture: " + ", ".join(detail) + "; check teacher.arch")
    model.load_state_dict(state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept checkpoints saved from DDP/compiled wrappers ('module.', '_orig_mod.')."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write a safetensors file atomically (temporary name, fsync, rename).

    Serialised in memory and written with Python's file I/O: safetensors' own writer reports a full
    disk as a SafetensorError, this way it is the file system's OSError (exit 13)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(Path(path), save(state))


def build_from_factory(spec: str, *, num_classes: int, **input_kwargs: object) -> nn.Module:
    """Call an importable 'module:function' that returns an nn.Module.

    The function may accept ``num_classes`` and ``in_channels`` (images) or ``vocab_size`` and
    ``max_length`` (text) keyword arguments; they are passed when its signature has them.
    """
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ModelError(f"teacher factory {spec!r} must look like 'package.module:function'")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"cannot import teacher factory {spec!r}: {_first_line(e)}") from None
    params = inspect.signature(func).parameters
    kwargs = {k: v for k, v in {"num_classes": num_classes, **input_kwargs}.items() if k in params}
    model = func(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"teacher factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
