import numpy as np
import pytest
import torch

from prokt_deploy.data import FASHION_DIR, load_data
from prokt_deploy.errors import DataError


def test_digits_split_is_deterministic_and_disjoint():
    a = load_data("digits", seed=3)
    b = load_data("digits", seed=3)
    c = load_data("digits", seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.y, c.train.y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    # normalised with the training split's statistics
    assert abs(a.train.x.mean().item()) < 1e-4 and abs(a.train.x.std().item() - 1) < 1e-2
    assert a.input["scale"] == 16.0 and a.input["layout"] == "NCHW"


def test_max_train_samples():
    d = load_data("digits", seed=0, max_train_samples=100)
    assert len(d.train) == 100 and len(d.test) == round(1797 * 0.2)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_uses_official_test_split():
    d = load_data("fashion-mnist", seed=0, max_train_samples=1000)
    assert len(d.test) == 10_000 and len(d.val) == 6_000 and len(d.train) == 1000
    assert d.input_shape == (1, 28, 28) and d.classes[0] == "T-shirt/top"


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", path=tmp_path)


def test_npz_roundtrip_and_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(200, 12, 12, 3), dtype=np.uint8)  # NHWC
    y = rng.integers(0, 4, size=200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data("npz", path=tmp_path / "d.npz", seed=0)
    assert d.input_shape == (3, 12, 12) and d.num_classes == 4 and d.input["scale"] == 255.0


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x": np.zeros((10, 4, 4))}, "must contain arrays 'x' and 'y'"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10, int)}, "x must have shape"),
        ({"x": np.zeros((10, 4, 4)), "y": np.zeros(9, int)}, "y must have shape"),
        ({"x": np.zeros((10, 4, 4)), "y": np.zeros(10)}, "integer class labels"),
        ({"x": np.full((10, 4, 4), np.nan), "y": np.zeros(10, int)}, "NaN"),
    ],
)
def test_npz_bad_input(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_data("npz", path=tmp_path / "bad.npz")


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="cannot read"):
        load_data("npz", path=tmp_path / "junk.npz")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(20):  # 15 per class left the seeded 10% validation split (3 images) with one class
            Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    d = load_data("image-folder", path=tmp_path, seed=0, image_size=(8, 8))
    assert d.classes == ["cat", "dog"] and d.input_shape == (1, 8, 8)
    assert len(d.train) + len(d.val) + len(d.test) == 40


def test_image_folder_bad_image(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image"):
        load_data("image-folder", path=tmp_path)


def test_unknown_source():
    with pytest.raises(DataError, match="unknown data source"):
        load_data("cifar")
