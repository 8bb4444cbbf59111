"""Attach exit heads to an existing backbone at named module outputs.

Use :func:`list_exit_points` to discover valid names (like torchvision's
``get_graph_node_names``), then :class:`ExitsOnBackbone` to add a head at each. The backbone's
own output can serve as the final exit. The backbone is traced with torch.fx (as torchvision's
``create_feature_extractor`` does) and returns the named values next to its output, so its code
is untouched, reused modules and functional calls are distinct points, and ONNX export sees one
ordinary graph. Untraceable backbones fall back to forward hooks on modules called once.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from hisd_edge.errors import InputError
from hisd_edge.models.fx_points import PointCapture, feature_points, resolve_points
from hisd_edge.models.protocol import ExitInfo


def list_exit_points(backbone: nn.Module, example: torch.Tensor) -> List[Tuple[str, Tuple[int, ...]]]:
    """Values of ``backbone`` shaped like feature maps (N,C,H,W) or token sequences (N,T,D), in call order.

    Names follow :mod:`hisd_edge.models.fx_points` (torch.fx): a reused module's calls and
    functional ops each get their own name and shape.
    """
    return feature_points(backbone, example)


class _Head(nn.Module):
    """Exit head for a captured feature map (conv/pool/linear) or token sequence (norm/mean/linear)."""

    def __init__(self, shape: Tuple[int, ...], hidden: int, num_classes: int):
        super().__init__()
        if len(shape) == 4:
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(shape[1], hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.body = nn.Sequential(nn.LayerNorm(shape[2]), _MeanTokens(), nn.Linear(shape[2], num_classes))

    def forward(self, x):
        return self.body(x)


class _MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class ExitsOnBackbone(nn.Module):
    """A backbone plus exit heads at ``points``; the backbone's output is the last exit if ``final``."""

    def __init__(
        self,
        backbone: nn.Module,
        points: Sequence[str],
        num_classes: int,
        example: torch.Tensor,
        hidden: int = 64,
        final: bool = True,
    ):
        super().__init__()
        valid = dict(list_exit_points(backbone, example))
        unknown = [p for p in points if p not in valid]
        if unknown or not points:
            raise InputError(
                f"unknown exit point(s) {', '.join(unknown) or '(none given)'}; valid names: {', '.join(valid)}"
            )
        order = list(valid)
        points = sorted(dict.fromkeys(points), key=order.index)
        self.backbone = backbone
        self.points = list(points)
        self.input_shape: Tuple[int, ...] = tuple(int(s) for s in example.shape[1:])
        self.heads = nn.ModuleList(_Head(valid[p], hidden, num_classes) for p in points)
        self.final = final
        self._captured: Dict[str, torch.Tensor] = {}
        self.__dict__["_capture"] = resolve_points(backbone, example[:1], self.points)
        if self.__dict__["_capture"] is None:  # untraceable: hooks on modules called once
            modules = dict(backbone.named_modules())
            for point in points:
                modules[point].register_forward_hook(self._hook(point))
        in_h = example.shape[-1]
        self.exit_info: List[ExitInfo] = []
        for k, point in enumerate(points):
            shape = valid[point]
            channels = shape[1] if len(shape) == 4 else shape[2]
            reduction = max(in_h // shape[-1], 1) if len(shape) == 4 else 1
            self.exit_info.append(ExitInfo(f"exit{k}", k, channels, reduction, point))
        if final:
            k = len(points)
            self.exit_info.append(ExitInfo(f"exit{k}", k, num_classes, 1, "backbone"))
        self.arch: Optional[dict] = None  # not rebuildable from metadata: load with the backbone in hand

    def _hook(self, name: str):
        def hook(_m, _i, out):
            self._captured[name] = out

        return hook

    def list_points(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """The backbone's points (the names ``--split-at`` takes for this model: no prefix)."""
        return list_exit_points(self.backbone, torch.zeros((1, *self.input_shape)))

    def with_split_outputs(self, split_points: Sequence[str]) -> nn.Module:
        """A module returning this model's exits followed by the values at ``split_points``."""
        example = torch.zeros((1, *self.input_shape))
        capture = PointCapture(self.backbone, [*self.points, *split_points], example)
        outer = self
        count = len(self.points)

        class WithSplits(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = outer

            def forward(self, x):
                final_out, values = capture(x)
                outs = [head(f) for head, f in zip(outer.heads, values[:count])]
                if outer.final:
                    outs.append(final_out)
                return outs + list(values[count:])

        return WithSplits()

    def forward_features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        capture = self.__dict__["_capture"]
        if capture is not None:
            final_out, feats = capture(x)
            feats = list(feats)
        else:
            self._captured = {}
            final_out = self.backbone(x)
            feats = [self._captured[p] for p in self.points]
        outs = [head(f) for head, f in zip(self.heads, feats)]
        if self.final:
            feats.append(final_out)
            outs.append(final_out)
        return feats, outs

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)[1]
