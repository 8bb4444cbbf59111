"""Multi-exit ResNet-style CNNs: one exit head after each stage.

From the tiny MNIST default (``mnist_cnn``) to a ResNet-50-sized network at 224x224
(``resnet50_exits``, for latency benchmarks). An exit head is a small conv (1x1 or 3x3) + BN +
ReLU, global average pooling and a linear classifier: cheap next to the stage it follows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

from torch import nn

from hisd_edge.models.protocol import ExitInfo, StagedMultiExit


@dataclasses.dataclass
class CnnConfig:
    in_channels: int = 1
    num_classes: int = 10
    input_size: Tuple[int, int] = (28, 28)
    stem_channels: int = 16
    stem_stride: int = 1
    stem_pool: bool = False  # 3x3/2 max-pool after the stem (ResNet style)
    widths: Tuple[int, ...] = (16, 32, 64)  # output channels of each stage
    depths: Tuple[int, ...] = (1, 1, 1)  # residual blocks per stage
    strides: Tuple[int, ...] = (1, 2, 2)  # stride of each stage's first block
    block: str = "basic"  # "basic" (2 x 3x3) or "bottleneck" (1x1, 3x3, 1x1; width/4 inside)
    exit_hidden: int = 32
    exit_kernel: int = 3

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        self.widths, self.depths, self.strides = tuple(self.widths), tuple(self.depths), tuple(self.strides)
        if not (len(self.widths) == len(self.depths) == len(self.strides)) or not self.widths:
            raise ValueError("widths, depths and strides need one entry per stage")
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', not {self.block!r}")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, relu=False))
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else _conv_bn(cin, cout, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = max(cout // 4, 1)
        self.body = nn.Sequential(
            _conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, stride), _conv_bn(mid, cout, 1, relu=False)
        )
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else _conv_bn(cin, cout, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ExitHead(nn.Module):
    """conv + BN + ReLU -> global average pool -> linear."""

    def __init__(self, cin: int, hidden: int, num_classes: int, kernel: int):
        super().__init__()
        self.conv = _conv_bn(cin, hidden, kernel)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


class MultiExitCNN(StagedMultiExit):
    def __init__(self, config: CnnConfig):
        block_cls = BasicBlock if config.block == "basic" else Bottleneck
        stem: List[nn.Module] = [
            _conv_bn(config.in_channels, config.stem_channels, 3 if config.stem_stride == 1 else 7, config.stem_stride)
        ]
        if config.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        reduction = config.stem_stride * (2 if config.stem_pool else 1)
        stages, exits, info = [], [], []
        cin = config.stem_channels
        for k, (width, depth, stride) in enumerate(zip(config.widths, config.depths, config.strides)):
            blocks = [block_cls(cin if i == 0 else width, width, stride if i == 0 else 1) for i in range(depth)]
            stages.append(nn.Sequential(*(stem + blocks)) if k == 0 else nn.Sequential(*blocks))
            exits.append(ExitHead(width, config.exit_hidden, config.num_classes, config.exit_kernel))
            reduction *= stride
            info.append(ExitInfo(name=f"exit{k}", stage=k, channels=width, reduction=reduction, module=f"stages.{k}"))
            cin = width
        super().__init__(stages, exits, info, arch={"family": "cnn", "config": config_to_dict(config)})
        self.config = config


def config_to_dict(config: Any) -> Dict[str, Any]:
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
