"""The hierarchical self-distillation (HiSD) objective.

    L = sum_k w_k CE(z_k, y)                                  every exit learns the task
      + alpha * sum_{k<K} T^2 KL(p_K || p_k)                  the final exit teaches every earlier exit
      + beta  * sum_{k<K} T^2 KL(p_{k+1} || p_k)              each exit teaches the one before it
      + gamma * sum_{k<K} MSE(proj_k(pool(f_k)), f_{k+1})     optional feature hint

``p_k = softmax(z_k / T)``. Teachers are detached: knowledge flows from deep to shallow only, so
distillation never drags the final exit towards the weaker early ones. ``regime`` picks the terms
so their effect can be measured: ``none`` (CE only), ``final`` (CE + final-teacher KD), ``hisd``
(all terms).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

REGIMES = ("none", "final", "hisd")


@dataclasses.dataclass
class HisdLossConfig:
    regime: str = "hisd"
    alpha: float = 0.5
    beta: float = 0.5
    temperature: float = 3.0
    hint: float = 0.0
    exit_weights: Optional[Sequence[float]] = None  # default: all 1

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"distillation regime must be one of {REGIMES}, not {self.regime!r}")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over the batch; teacher detached."""
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    student = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class FeatureHint(nn.Module):
    """Projects stage k's features onto stage k+1's shape (adaptive pooling + 1x1 projection)."""

    def __init__(self, feat_shapes: Sequence[Tuple[int, ...]]):
        super().__init__()
        projs: List[nn.Module] = []
        for src, dst in zip(feat_shapes[:-1], feat_shapes[1:]):
            if len(src) == 4:
                projs.append(nn.Conv2d(src[1], dst[1], 1, bias=False))
            else:
                projs.append(nn.Linear(src[-1], dst[-1], bias=False))
        self.projs = nn.ModuleList(projs)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        total = feats[0].new_zeros(())
        for k, proj in enumerate(self.projs):
            src, dst = feats[k], feats[k + 1].detach()
            if src.dim() == 4:
                src = F.adaptive_avg_pool2d(src, (dst.shape[-2], dst.shape[-1]))
            elif src.shape[1] != dst.shape[1]:
                src = F.adaptive_avg_pool1d(src.transpose(1, 2), dst.shape[1]).transpose(1, 2)
            total = total + F.mse_loss(proj(src), dst)
        return total


class HisdObjective(nn.Module):
    """Model + loss in one module, so DDP synchronises the hint projections with the model."""

    exit_weights: torch.Tensor  # a registered buffer

    def __init__(
        self, model: nn.Module, config: HisdLossConfig, feat_shapes: Optional[Sequence[Tuple[int, ...]]] = None
    ):
        super().__init__()
        self.model: Any = model  # any module that follows the multi-exit protocol
        self.config = config
        num_exits = len(model.exit_info)  # type: ignore[arg-type]
        weights = list(config.exit_weights) if config.exit_weights else [1.0] * num_exits
        if len(weights) != num_exits:
            raise ValueError(f"{len(weights)} exit weights given for {num_exits} exits")
        self.register_buffer("exit_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        use_hint = config.regime == "hisd" and config.hint > 0 and feat_shapes is not None
        self.hint = FeatureHint(feat_shapes) if use_hint and feat_shapes is not None else None

    def forward(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], List[torch.Tensor]]:
        cfg = self.config
        feats, logits = self.model.forward_features(x)
        ce = torch.stack([F.cross_entropy(z, y) for z in logits])
        loss = (self.exit_weights * ce).sum()
        parts: Dict[str, torch.Tensor] = {"ce": ce.detach()}
        last = len(logits) - 1
        if cfg.regime in ("final", "hisd") and cfg.alpha > 0 and last > 0:
            kd_final = torch.stack([kd_kl(logits[k], logits[last], cfg.temperature) for k in range(last)]).sum()
            loss = loss + cfg.alpha * kd_final
            parts["kd_final"] = kd_final.detach()
        if cfg.regime == "hisd" and cfg.beta > 0 and last > 0:
            kd_next = torch.stack([kd_kl(logits[k], logits[k + 1], cfg.temperature) for k in range(last)]).sum()
            loss = loss + cfg.beta * kd_next
            parts["kd_next"] = kd_next.detach()
        if self.hint is not None:
            hint = self.hint(feats)
            loss = loss + cfg.hint * hint
            parts["hint"] = hint.detach()
        return loss, parts, logits
