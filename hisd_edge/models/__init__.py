"""Multi-exit model families and their registry.

``create_model("mnist_cnn")`` builds a registered model; ``build_from_arch(arch)`` rebuilds one
from a checkpoint's architecture record; ``list_models()`` names them all.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from hisd_edge.errors import InputError
from hisd_edge.models.cnn import CnnConfig, MultiExitCNN
from hisd_edge.models.mobilenet import MobileNetConfig, MultiExitMobileNet
from hisd_edge.models.protocol import ExitInfo, StagedMultiExit, is_multi_exit
from hisd_edge.models.transformer import MultiExitTransformer, TransformerConfig
from hisd_edge.models.wrap import ExitsOnBackbone, list_exit_points

_FAMILIES: Dict[str, Callable[[Dict[str, Any]], StagedMultiExit]] = {
    "cnn": lambda cfg: MultiExitCNN(CnnConfig(**cfg)),
    "transformer": lambda cfg: MultiExitTransformer(TransformerConfig(**cfg)),
    "mobilenet": lambda cfg: MultiExitMobileNet(MobileNetConfig(**cfg)),
}

# Registered configurations. Early stages are kept cheap relative to later ones so that exits
# buy real savings (exit 0 of mnist_cnn costs under a tenth of the full network's MACs).
_REGISTRY: Dict[str, Dict[str, Any]] = {
    "mnist_cnn": {
        "family": "cnn",
        "config": {
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "stem_channels": 16,
            "stem_stride": 2,
            "widths": (16, 48, 128),
            "depths": (1, 1, 2),
            "strides": (1, 2, 2),
            "exit_hidden": 32,
            "exit_kernel": 1,
        },
    },
    "tiny_cnn": {
        "family": "cnn",
        "config": {  # for tests: milliseconds per step
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "stem_channels": 8,
            "stem_stride": 2,
            "widths": (8, 16, 16),
            "depths": (1, 1, 1),
            "strides": (1, 2, 2),
            "exit_hidden": 16,
            "exit_kernel": 1,
        },
    },
    "resnet18_exits": {
        "family": "cnn",
        "config": {
            "in_channels": 3,
            "num_classes": 1000,
            "input_size": (224, 224),
            "stem_channels": 64,
            "stem_stride": 2,
            "stem_pool": True,
            "widths": (64, 128, 256, 512),
            "depths": (2, 2, 2, 2),
            "strides": (1, 2, 2, 2),
            "exit_hidden": 128,
            "exit_kernel": 1,
        },
    },
    "resnet50_exits": {
        "family": "cnn",
        "config": {
            "in_channels": 3,
            "num_classes": 1000,
            "input_size": (224, 224),
            "stem_channels": 64,
            "stem_stride": 2,
            "stem_pool": True,
            "widths": (256, 512, 1024, 2048),
            "depths": (3, 4, 6, 3),
            "strides": (1, 2, 2, 2),
            "block": "bottleneck",
            "exit_hidden": 256,
            "exit_kernel": 1,
        },
    },
    "mnist_mobilenet": {
        "family": "mobilenet",
        "config": {  # MobileNetV2-style: inverted residuals, depthwise convs, ReLU6, BN
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "stem_channels": 16,
            "stem_stride": 1,
            "stages": ((1, 16, 1, 2), (4, 24, 2, 2), (4, 48, 2, 2)),
            "exit_hidden": 64,
        },
    },
    "tiny_mobilenet": {
        "family": "mobilenet",
        "config": {  # for tests
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "stem_channels": 8,
            "stem_stride": 2,
            "stages": ((1, 8, 1, 1), (2, 12, 2, 2), (2, 16, 1, 2)),
            "exit_hidden": 16,
        },
    },
    "mobilenet_v2_exits": {
        "family": "mobilenet",
        "config": {  # MobileNetV2 1.0 at 224x224 (ImageNet-sized; for latency and conversion benchmarks)
            "in_channels": 3,
            "num_classes": 1000,
            "input_size": (224, 224),
            "stem_channels": 32,
            "stem_stride": 2,
            "stages": (
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ),
            "exit_hidden": 128,
        },
    },
    "mnist_vit": {
        "family": "transformer",
        "config": {
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "patch_size": 4,
            "dim": 64,
            "depth": 6,
            "heads": 4,
            "exit_blocks": (1, 3, 5),
        },
    },
    "small_vit": {
        "family": "transformer",
        "config": {  # mnist_vit with 7x7 patches: 16 tokens, a third of the MACs (the Fashion-MNIST experiment's)
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "patch_size": 7,
            "dim": 64,
            "depth": 6,
            "heads": 4,
            "exit_blocks": (1, 3, 5),
        },
    },
    "tiny_vit": {
        "family": "transformer",
        "config": {
            "in_channels": 1,
            "num_classes": 10,
            "input_size": (28, 28),
            "patch_size": 7,
            "dim": 16,
            "depth": 3,
            "heads": 2,
            "exit_blocks": (0, 1, 2),
        },
    },
}


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def model_arch(name: str, **overrides: Any) -> Dict[str, Any]:
    """The architecture record for a registered name, with config overrides applied."""
    if name not in _REGISTRY:
        raise InputError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    entry = _REGISTRY[name]
    return {"family": entry["family"], "name": name, "config": {**entry["config"], **overrides}}


def build_from_arch(arch: Dict[str, Any]) -> StagedMultiExit:
    family = arch.get("family")
    if family not in _FAMILIES:
        raise InputError(f"unknown model family {family!r}; known: {', '.join(_FAMILIES)}")
    try:
        model = _FAMILIES[family](dict(arch.get("config", {})))
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid {family} configuration: {exc}") from None
    model.arch = {**(model.arch or {}), "name": arch.get("name", family)}
    return model


def create_model(name: str, **overrides: Any) -> StagedMultiExit:
    return build_from_arch(model_arch(name, **overrides))


__all__ = [
    "CnnConfig",
    "ExitInfo",
    "ExitsOnBackbone",
    "MobileNetConfig",
    "MultiExitCNN",
    "MultiExitMobileNet",
    "MultiExitTransformer",
    "StagedMultiExit",
    "TransformerConfig",
    "build_from_arch",
    "create_model",
    "is_multi_exit",
    "list_exit_points",
    "list_models",
    "model_arch",
]
