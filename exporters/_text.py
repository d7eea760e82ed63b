"""Packed text input: the convention :mod:`exporters` uses for text classifiers.

A text classifier's ``forward`` takes ONE integer tensor of shape (B, 2, L): ``x[:, 0]`` holds the token
ids and ``x[:, 1]`` the attention mask (1 = real token, 0 = padding); it returns (B, num_classes) float
logits. One tensor keeps the single-input API of :func:`exporters.export`; in the exported graph the two
rows become two int64 inputs named ``input_ids`` and ``attention_mask`` (both (batch, sequence), both
dims symbolic), the names every tokenizer and serving stack expects. Text mode is detected from the
example input: an integer dtype, 3 dims and ``shape[1] == 2``.

This module imports torch but no runtime (onnxruntime, openvino, nncf).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._common import ExportError, as_text_batch

__all__ = [
    "TEXT_CHECK_SHAPES",
    "TEXT_INPUT_NAMES",
    "PackedTextAdapter",
    "as_text_batch",
    "example_export_batch",
    "example_text_batch",
    "is_text_input",
    "is_text_names",
    "random_text_batch",
    "text_check_shapes",
    "text_feed",
]

#: Graph input names of an exported text model, in the order of the packed rows.
TEXT_INPUT_NAMES: tuple[str, str] = ("input_ids", "attention_mask")

#: (batch, sequence) shapes every exported text model is run at before it is accepted: a declared
#: symbolic dim is not enough (an exporter can bake a size into a Reshape), so both dims are changed.
#: Sequence lengths are capped at the example's, see :func:`text_check_shapes`.
TEXT_CHECK_SHAPES: tuple[tuple[int, int], ...] = ((1, 5), (3, 37))


def _is_integer_dtype(dtype: object) -> bool:
    if isinstance(dtype, torch.dtype):
        return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
    return np.issubdtype(np.dtype(dtype), np.integer)  # type: ignore[arg-type]


def is_text_input(x: object) -> bool:
    """True for a packed text batch: a torch tensor or numpy array of integer dtype and shape (B, 2, L)."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        return False
    return _is_integer_dtype(x.dtype) and x.ndim == 3 and x.shape[1] == 2


def is_text_names(names: Sequence[str]) -> bool:
    """True when a runtime model's input names are exactly :data:`TEXT_INPUT_NAMES` (in any order)."""
    return len(names) == 2 and set(names) == set(TEXT_INPUT_NAMES)


class PackedTextAdapter(torch.nn.Module):
    """Export wrapper: ``forward(input_ids, attention_mask) -> model(stack([input_ids, attention_mask], 1))``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(torch.stack([input_ids, attention_mask], 1))


def text_feed(x: np.ndarray, names: Sequence[str] = TEXT_INPUT_NAMES) -> dict[str, np.ndarray]:
    """Split a packed (B, 2, L) array into ``{names[0]: ids, names[1]: mask}`` (C-contiguous int64)."""
    arr = as_text_batch(x)
    return {names[0]: np.ascontiguousarray(arr[:, 0]), names[1]: np.ascontiguousarray(arr[:, 1])}


def text_check_shapes(length: int) -> list[tuple[int, int]]:
    """:data:`TEXT_CHECK_SHAPES` with every sequence length capped at the example's ``length``.

    A model with learned positions takes no more tokens than its max length, and the example is the one
    length known to work. If the cap leaves every length equal to ``length`` (an example of <= 5
    tokens), the first check uses one token fewer, so the sequence dim is still exercised.
    """
    shapes = [(b, min(n, length)) for b, n in TEXT_CHECK_SHAPES]
    if length > 1 and all(n == length for _, n in shapes):
        shapes[0] = (shapes[0][0], length - 1)
    return shapes


def _tile_row(row: np.ndarray, length: int) -> np.ndarray:
    """Real tokens of one packed (2, L) sample repeated to ``length`` tokens, all marked real."""
    ids = row[0][row[1] != 0]
    if ids.size == 0:
        ids = row[0]
    return np.resize(ids, length)


def example_text_batch(example: np.ndarray, batch: int, length: int) -> np.ndarray:
    """A packed (batch, 2, length) int64 array built from the real tokens of ``example``'s samples.

    Token ids come from ``example`` (so they are valid for the model's vocabulary); every sample after
    the first is padded over its last quarter, so masks differ across the batch as in real traffic.
    """
    ex = np.asarray(example, dtype=np.int64)
    out = np.zeros((batch, 2, length), dtype=np.int64)
    for b in range(batch):
        out[b, 0] = _tile_row(ex[b % len(ex)], length)
        out[b, 1] = 1
        if b > 0 and length >= 4:
            out[b, 1, length - length // 4 :] = 0
            out[b, 0, length - length // 4 :] = 0
    return out


def example_export_batch(example_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) int64 tensors with batch >= 2 and sequence >= 3 for the exporter.

    ``torch.export`` specializes a dimension of size 1 to a constant (and a size-2 sequence can collide
    with the packed dim), so a smaller example is repeated/tiled from its own real tokens.
    """
    ex = example_input.detach().cpu().to(torch.int64).numpy()
    batch, length = max(2, ex.shape[0]), max(3, ex.shape[2])
    if (batch, length) != tuple(ex.shape[::2]):
        ex = example_text_batch(ex, batch, length)
    t = torch.from_numpy(np.ascontiguousarray(ex))
    return t[:, 0].contiguous(), t[:, 1].contiguous()


def random_text_batch(n: int, length: int, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random packed samples: ids uniform in [0, vocab_size), right-padded to random real lengths."""
    if vocab_size < 1 or length < 1:
        raise ExportError(f"cannot draw random text with vocab_size={vocab_size} and sequence length {length}")
    ids = rng.integers(0, vocab_size, size=(n, length), dtype=np.int64)
    lengths = rng.integers(1, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return np.ascontiguousarray(np.stack([ids * mask, mask], axis=1))
