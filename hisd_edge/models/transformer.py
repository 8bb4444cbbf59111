"""A small transformer encoder with exits after chosen blocks.

The model family of the HiSD paper (arXiv 2503.03008) is an encoder with exits at several layers;
here the tokens are image patches so the same data, converter and runtime apply. Each exit reads
the [CLS] token through LayerNorm; it yields class logits, or with ``exit_output="embedding"`` the
L2-normalised embedding before the classifier (for the runtime's stability policy).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch
from torch import nn

from hisd_edge.models.cnn import config_to_dict
from hisd_edge.models.protocol import ExitInfo, StagedMultiExit


@dataclasses.dataclass
class TransformerConfig:
    in_channels: int = 1
    num_classes: int = 10
    input_size: Tuple[int, int] = (28, 28)
    patch_size: int = 4
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    exit_blocks: Tuple[int, ...] = (1, 3, 5)  # exit after these blocks (0-based); the last must be depth-1
    exit_output: str = "logits"  # or "embedding"

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        self.exit_blocks = tuple(sorted(self.exit_blocks))
        if not self.exit_blocks or self.exit_blocks[-1] != self.depth - 1 or self.exit_blocks[0] < 0:
            raise ValueError(
                f"exit_blocks must be block indices ending at depth-1={self.depth - 1}, got {self.exit_blocks}"
            )
        if self.input_size[0] % self.patch_size or self.input_size[1] % self.patch_size:
            raise ValueError("input_size must be a multiple of patch_size")
        if self.exit_output not in ("logits", "embedding"):
            raise ValueError("exit_output must be 'logits' or 'embedding'")


class PatchEmbed(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_channels, config.dim, config.patch_size, stride=config.patch_size)
        tokens = (config.input_size[0] // config.patch_size) * (config.input_size[1] // config.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, config.dim) * 0.02)

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos


class Block(nn.Module):
    """Pre-norm encoder block. Attention is written out (not nn.MultiheadAttention) so the ONNX
    export is plain MatMul/Softmax that every TensorRT version parses."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class TokenExitHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, output: str):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self.output = output

    def embed(self, x):
        return self.norm(x[:, 0])

    def forward(self, x):
        emb = self.embed(x)
        if self.output == "embedding" and not self.training:
            return nn.functional.normalize(emb, dim=-1)
        return self.fc(emb)


class MultiExitTransformer(StagedMultiExit):
    def __init__(self, config: TransformerConfig):
        blocks = [Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth)]
        stages, exits, info = [], [], []
        start = 0
        for k, end in enumerate(config.exit_blocks):
            parts = ([PatchEmbed(config)] if k == 0 else []) + blocks[start : end + 1]
            stages.append(nn.Sequential(*parts))
            exits.append(TokenExitHead(config.dim, config.num_classes, config.exit_output))
            info.append(
                ExitInfo(
                    name=f"exit{k}", stage=k, channels=config.dim, reduction=config.patch_size, module=f"stages.{k}"
                )
            )
            start = end + 1
        super().__init__(stages, exits, info, arch={"family": "transformer", "config": config_to_dict(config)})
        self.config = config
        self.exit_output = config.exit_output
