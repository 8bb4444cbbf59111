"""What makes a module a multi-exit network here.

A multi-exit network maps an input batch to one output per exit (logits, or embeddings for
embedding exits), shallowest first, and describes its exits the way timm's ``feature_info``
describes features. Two ways to take part:

* subclass :class:`StagedMultiExit` (or build one from lists): ``stages[k]`` maps the previous
  stage's features to ``feat{k}``, ``exits[k]`` maps ``feat{k}`` to exit k's output;
* wrap an existing backbone with :class:`hisd_edge.models.wrap.ExitsOnBackbone`.

Training needs only ``forward`` (and ``forward_features`` for the feature-hint loss); the
converter finds stage boundaries in the exported ONNX graph structurally.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    """Self-description of one exit: where it sits and what it sees."""

    name: str  # "exit0", "exit1", ...
    stage: int  # index of the stage whose output feeds this exit
    channels: int  # feature channels (or embedding width) at that stage's output
    reduction: int  # spatial reduction of those features relative to the input
    module: str  # module name of the stage output (for hooks and humans)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class StagedMultiExit(nn.Module):
    """A chain of stages with one exit head after each.

    Subclasses (or callers) provide ``stages`` and ``exits`` of equal length and ``exit_info``.
    ``arch`` (family + config) lets a checkpoint rebuild the model; ``None`` for ad-hoc models.
    """

    exit_output = "logits"

    def __init__(
        self,
        stages: Sequence[nn.Module],
        exits: Sequence[nn.Module],
        exit_info: Sequence[ExitInfo],
        arch: Dict[str, Any] | None = None,
    ):
        super().__init__()
        if len(stages) != len(exits) or not stages:
            raise ValueError(f"need one exit per stage, got {len(stages)} stages and {len(exits)} exits")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.exit_info: List[ExitInfo] = list(exit_info)
        self.arch = arch

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward_features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(features after each stage, outputs of each exit)."""
        feats, outs = [], []
        for stage, head in zip(self.stages, self.exits):
            x = stage(x)
            feats.append(x)
            outs.append(head(x))
        return feats, outs

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)[1]


def is_multi_exit(model: nn.Module) -> bool:
    """True when ``model`` follows the protocol (has ``exit_info`` and returns one output per exit)."""
    return isinstance(getattr(model, "exit_info", None), (list, tuple)) and len(model.exit_info) > 0  # type: ignore[arg-type]
