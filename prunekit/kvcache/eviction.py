"""Token eviction composable with ThinK: keep a recent window plus the heavy hitters (highest observed attention).

At prefill, the attention that the last ``window_size`` queries (the observation window) pay to every prompt token is
summed over those queries and over the query heads sharing a key-value head, smoothed by an average pool (SnapKV), and
the highest-scoring tokens are kept per key-value head; the press's ``recent_size`` most recent tokens are always
kept. ThinK then prunes the channels of the kept keys, so both axes compose::

    press = ThinKPress(key_ratio=0.4, eviction=HeavyHitterEviction(token_ratio=0.5))

``ThinKPress(key_ratio=0.0, eviction=...)`` is eviction alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class HeavyHitterEviction:
    """Recent window + heavy hitters (SnapKV, Li et al. 2024; H2O, Zhang et al. 2023), scored at prefill.

    Attributes:
        token_ratio: fraction of the prompt's tokens kept (recent ones included), in (0, 1].
        max_tokens: absolute budget of kept prompt tokens; overrides `token_ratio` when set.
        kernel: width of the average pool over token scores (odd; 1 disables pooling).
    """

    token_ratio: float = 0.5
    max_tokens: Optional[int] = None
    kernel: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.token_ratio <= 1.0:
            raise ConfigError(f"HeavyHitterEviction.token_ratio must be in (0, 1], got {self.token_ratio}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"HeavyHitterEviction.max_tokens must be >= 1, got {self.max_tokens}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"HeavyHitterEviction.kernel must be odd and >= 1, got {self.kernel}")

    def budget(self, length: int) -> int:
        """Prompt tokens kept out of `length`."""
        if self.max_tokens is not None:
            return min(length, self.max_tokens)
        return max(1, min(length, int(round(self.token_ratio * length))))

    def score_tokens(self, obs) -> torch.Tensor:
        """Observed attention per token and key-value head.

        Args:
            obs: a `prunekit.kvcache.base.Observation`.

        Returns:
            ``[B, H_kv, T]`` scores (attention mass from the observation queries, pooled over `kernel` tokens).
        """
        probs = obs.probs()  # [B, H, w, T]
        bsz, heads, _, length = probs.shape
        kv_heads = obs.keys.shape[1]
        mass = (probs * obs.weight[:, None, :, None].float()).sum(2)  # [B, H, T]
        mass = mass.view(bsz, kv_heads, heads // kv_heads, length).sum(2)
        if self.kernel > 1:
            mass = F.avg_pool1d(mass.reshape(bsz * kv_heads, 1, length), self.kernel, stride=1,
                                padding=self.kernel // 2, count_include_pad=False).view(bsz, kv_heads, length)
        return mass
