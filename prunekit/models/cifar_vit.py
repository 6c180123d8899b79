"""A small CIFAR-10 Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Layout of `weights/vit_cifar10.pth` (loads strictly): `patch_embed.proj` conv 3->128 (kernel 4, stride 4),
`cls_token` [1, 1, 128], `pos_embed` [1, 65, 128], `transformer` = ``nn.TransformerEncoder`` of 6 post-norm ReLU
``nn.TransformerEncoderLayer(128, nhead=8, dim_feedforward=256, batch_first=True)``, `mlp_head` =
LayerNorm(128) + Linear(128, 10) on the class token. The weights expect CIFAR mean/std normalised input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..io import load_state_dict_strict, load_tensors
from ..paths import data_file

#: Local checkpoint, relative to the data root.
VIT_WEIGHTS = "weights/vit_cifar10.pth"


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by a strided conv.

    Shapes: [B, C_in, H, W] -> [B, (H / patch) * (W / patch), dim].
    """

    def __init__(self, in_channels: int = 3, dim: int = 128, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class CifarViT(nn.Module):
    """Class-token ViT over 4x4 patches of a 32x32 image.

    Args:
        num_classes: output logits.
        image_size / patch: input side and patch side (64 patches by default).
        dim, depth, heads, mlp_dim: transformer width, layers, attention heads, feed-forward width.
        dropout: dropout inside the encoder layers (inactive in eval mode).

    Shapes: [B, 3, 32, 32] -> tokens [B, 65, dim] -> class token [B, dim] -> [B, num_classes].
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, patch: int = 4, dim: int = 128, depth: int = 6,
                 heads: int = 8, mlp_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        num_patches = (image_size // patch) ** 2
        self.patch_embed = PatchEmbed(3, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp_dim, dropout=dropout, activation="relu",
                                           batch_first=True, norm_first=False)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)  # [B, N, D]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [B, 1, D]
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed  # [B, N + 1, D]
        tokens = self.transformer(tokens)
        return self.mlp_head(tokens[:, 0])


def load_vit(model: CifarViT, path: Union[str, Path]) -> CifarViT:
    """Load a plain state dict strictly into `model`.

    Raises:
        CheckpointError: the file is unreadable or its keys/shapes do not match (named).
    """
    state = load_tensors(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"cifar_vit: {path} does not hold a state dict")
    load_state_dict_strict(model, dict(state), source=f"checkpoint {path}")
    return model


def vit(pretrained: bool = True, weights: Optional[Union[str, Path]] = None, **kwargs) -> CifarViT:
    """The CIFAR-10 ViT (811k params); `weights` overrides the local checkpoint; kwargs go to `CifarViT`."""
    model = CifarViT(**kwargs)
    if weights is not None:
        return load_vit(model, weights)
    if pretrained:
        return load_vit(model, data_file(VIT_WEIGHTS, "CIFAR ViT weights"))
    return model
