"""Multi-exit MobileNetV2-style networks: the family Jetson users actually deploy.

Inverted residual blocks (1x1 expansion + BN + ReLU6, 3x3 depthwise conv + BN + ReLU6, 1x1
linear projection + BN, a residual Add when the shape allows), grouped into stages with an exit
head after each: a 1x1 conv + BN + ReLU6, global average pooling and a linear classifier. Every
piece is what TensorRT fuses in INT8 (Conv+BN+Clip, Conv+BN+residual Add), so the family also
exercises the Q/DQ placement of :mod:`hisd_edge.convert.qdq`.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

from torch import nn

from hisd_edge.models.cnn import config_to_dict
from hisd_edge.models.protocol import ExitInfo, StagedMultiExit


@dataclasses.dataclass
class MobileNetConfig:
    in_channels: int = 1
    num_classes: int = 10
    input_size: Tuple[int, int] = (28, 28)
    stem_channels: int = 16
    stem_stride: int = 1
    # one row per stage: (expansion ratio, output channels, blocks, stride of the first block)
    stages: Tuple[Tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 48, 2, 2))
    exit_hidden: int = 64

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        self.stages = tuple(tuple(int(v) for v in row) for row in self.stages)  # type: ignore[misc]
        if not self.stages or any(len(row) != 4 for row in self.stages):
            raise ValueError("stages needs rows of (expansion, channels, blocks, stride)")


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: List[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class MobileExitHead(nn.Module):
    """1x1 conv + BN + ReLU6 -> global average pool -> linear."""

    def __init__(self, cin: int, hidden: int, num_classes: int):
        super().__init__()
        self.conv = _conv_bn_relu6(cin, hidden, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


class MultiExitMobileNet(StagedMultiExit):
    def __init__(self, config: MobileNetConfig):
        stem = _conv_bn_relu6(config.in_channels, config.stem_channels, 3, config.stem_stride)
        stages, exits, info = [], [], []
        cin, reduction = config.stem_channels, config.stem_stride
        for k, (expansion, width, blocks, stride) in enumerate(config.stages):
            layers: Sequence[nn.Module] = [
                InvertedResidual(cin if i == 0 else width, width, stride if i == 0 else 1, expansion)
                for i in range(blocks)
            ]
            stages.append(nn.Sequential(stem, *layers) if k == 0 else nn.Sequential(*layers))
            exits.append(MobileExitHead(width, config.exit_hidden, config.num_classes))
            reduction *= stride
            info.append(ExitInfo(f"exit{k}", k, width, reduction, f"stages.{k}"))
            cin = width
        super().__init__(stages, exits, info, arch={"family": "mobilenet", "config": mobilenet_config_dict(config)})
        self.config = config


def mobilenet_config_dict(config: MobileNetConfig) -> dict:
    out = config_to_dict(config)
    out["stages"] = [list(row) for row in config.stages]
    return out
