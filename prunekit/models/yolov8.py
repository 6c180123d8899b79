"""A YOLOv8-style detector of our own (Jocher et al., Ultralytics YOLOv8, 2023), written for channel pruning.

Architecture (the ``yolov8.yaml`` layout, scaled by depth/width multiples):

* backbone: Conv(3x3, s2) stem, four stages of [Conv(3x3, s2) down-sampling + C2f], then SPPF;
* PAN neck: top-down (nn.Upsample + torch.cat + C2f) then bottom-up (Conv s2 + torch.cat + C2f), giving P3/P4/P5
  at strides 8/16/32;
* decoupled `Detect` head: per level a box branch (``cv2``: 4 * reg_max distribution logits) and a class branch
  (``cv3``: nc logits), decoded with DFL (softmax expectation over reg_max bins), anchor points and stride scaling.

Every forward reads channel counts from tensor shapes (C2f splits with ``chunk(2, 1)``, Detect splits box/class by
the fixed ``4 * reg_max``), so physically pruned models keep working.

Module names, with the Ultralytics layer index they correspond to (see `ULTRALYTICS_LAYERS`): stem (0), down1 (1),
stage1 (2), down2 (3), stage2 (4), down3 (5), stage3 (6), down4 (7), stage4 (8), sppf (9), up1 (10), td_p4 (12),
up2 (13), td_p3 (15), bu_down3 (16), bu_p4 (18), bu_down4 (19), bu_p5 (21), detect (22). Inside blocks the
Ultralytics names are kept (cv1, cv2, m, cv3, dfl).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError

#: Ultralytics ``model.N`` layer index -> our top-level module name (parameter-free concat layers omitted).
ULTRALYTICS_LAYERS: Dict[int, str] = {
    0: "stem", 1: "down1", 2: "stage1", 3: "down2", 4: "stage2", 5: "down3", 6: "stage3", 7: "down4",
    8: "stage4", 9: "sppf", 10: "up1", 12: "td_p4", 13: "up2", 15: "td_p3", 16: "bu_down3", 18: "bu_p4",
    19: "bu_down4", 21: "bu_p5", 22: "detect",
}


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of `divisor` that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


class Conv(nn.Module):
    """Conv2d + BatchNorm2d + SiLU (or, with ``fused=True``, Conv2d with bias + SiLU).

    Args:
        c1, c2: input / output channels.
        k: kernel size; padding is ``k // 2`` ("same" for odd k).
        s: stride.
        fused: build the BN-folded variant (no ``bn`` submodule, conv has a bias).

    Shapes: [B, c1, H, W] -> [B, c2, H / s, W / s].
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, fused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=fused)
        self.bn = None if fused else nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ``bn`` into ``conv`` in place (eval-mode statistics); the block then computes the same function."""
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True).to(conv.weight)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        base = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((base - bn.running_mean) * scale + bn.bias)
        self.conv, self.bn = fused, None


class Bottleneck(nn.Module):
    """Two 3x3 Convs with an optional residual add (used when ``shortcut`` and c1 == c2 at construction).

    Shapes: [B, c1, H, W] -> [B, c2, H, W].
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0, fused: bool = False):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 3, 1, fused)
        self.cv2 = Conv(hidden, c2, 3, 1, fused)
        self.add = bool(shortcut and c1 == c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convolutions: cv1, split in two halves with ``chunk``, n Bottlenecks on the second half
    (keeping every intermediate), concatenation of all pieces, cv2.

    Shapes: [B, c1, H, W] -> cv1 -> [B, 2c, H, W] -> (n + 2) pieces of [B, c, H, W] -> [B, c2, H, W], c = c2 * e.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5, fused: bool = False):
        super().__init__()
        c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * c, 1, 1, fused)
        self.cv2 = Conv((2 + n) * c, c2, 1, 1, fused)
        self.m = nn.ModuleList(Bottleneck(c, c, shortcut, 1.0, fused) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): cv1, three chained k x k max-pools, concat of the four, cv2.

    Shapes: [B, c1, H, W] -> [B, c2, H, W].
    """

    def __init__(self, c1: int, c2: int, k: int = 5, fused: bool = False):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1, fused)
        self.cv2 = Conv(hidden * 4, c2, 1, 1, fused)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decoding: the expectation of a softmax over `reg_max` integer bins.

    Equivalent to Ultralytics' fixed 1x1 conv with weights ``arange(reg_max)``; the bins are a non-persistent buffer.

    Shapes: [B, 4 * reg_max, N] -> [B, 4, N].
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.register_buffer("project", torch.arange(reg_max, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        reg_max = self.project.numel()
        prob = x.view(b, 4, reg_max, n).softmax(2)
        return (prob * self.project.view(1, 1, reg_max, 1)).sum(2)


def make_anchors(feats: Sequence[torch.Tensor], strides: torch.Tensor, offset: float = 0.5
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (cell centres, in grid units) and per-anchor strides for a list of feature maps.

    Args:
        feats: per-level tensors [B, C, H_i, W_i].
        strides: [L] stride of each level.

    Returns:
        points [N, 2] (x, y) and strides [N, 1], N = sum(H_i * W_i), row-major within each level.
    """
    points, stride_list = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2:]
        sx = torch.arange(w, device=feat.device, dtype=feat.dtype) + offset
        sy = torch.arange(h, device=feat.device, dtype=feat.dtype) + offset
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(stride), device=feat.device, dtype=feat.dtype))
    return torch.cat(points), torch.cat(stride_list)


def dist2bbox(distance: torch.Tensor, points: torch.Tensor, xywh: bool = True, dim: int = 1) -> torch.Tensor:
    """Turn (left, top, right, bottom) distances from anchor points into boxes.

    Args:
        distance: [B, 4, N] (with dim=1).
        points: anchor points broadcastable to [B, 2, N].
        xywh: return (cx, cy, w, h) when True, else (x1, y1, x2, y2).

    Returns:
        [B, 4, N] boxes in the units of `points`.
    """
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = points - lt, points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)
    return torch.cat((x1y1, x2y2), dim)


class Detect(nn.Module):
    """Decoupled anchor-free YOLOv8 head.

    Args:
        nc: number of classes.
        ch: input channels of each level (P3, P4, P5).
        reg_max: DFL bins per box side (16 for YOLOv8; not meant to be pruned).
        strides: stride of each level.

    Shapes:
        training: list of [B, 4 * reg_max + nc, H_i, W_i];
        eval: [B, 4 + nc, N] with (cx, cy, w, h) in input pixels then sigmoid class scores (N = 8400 at 640).
    """

    def __init__(self, nc: int, ch: Sequence[int], reg_max: int = 16, strides: Sequence[int] = (8, 16, 32),
                 fused: bool = False):
        super().__init__()
        self.reg_max = reg_max
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3, 1, fused), Conv(c2, c2, 3, 1, fused), nn.Conv2d(c2, 4 * reg_max, 1))
            for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3, 1, fused), Conv(c3, c3, 3, 1, fused), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max)
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def bias_init(self, img_size: int = 640) -> None:
        """Ultralytics' prior: box logits 1.0, class logits for ~5 objects per image over each level's cells."""
        for box, cls, s in zip(self.cv2, self.cv3, self.stride.tolist()):
            box[-1].bias.fill_(1.0)
            nc = cls[-1].out_channels
            cls[-1].bias.fill_(math.log(5 / nc / (img_size / s) ** 2))

    def forward(self, x: List[torch.Tensor]) -> Union[List[torch.Tensor], torch.Tensor]:
        outs = [torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(x, self.cv2, self.cv3)]
        if self.training:
            return outs
        return self.decode(outs)

    def decode(self, outs: List[torch.Tensor]) -> torch.Tensor:
        """Raw per-level outputs [B, 4 * reg_max + nc, H_i, W_i] -> [B, 4 + nc, N] (xywh pixels, class scores)."""
        b = outs[0].shape[0]
        flat = torch.cat([o.view(b, o.shape[1], -1) for o in outs], 2)
        nbox = 4 * self.reg_max
        box, cls = flat[:, :nbox], flat[:, nbox:]
        points, strides = make_anchors(outs, self.stride)
        dbox = dist2bbox(self.dfl(box), points.t().unsqueeze(0), xywh=True, dim=1) * strides.t()
        return torch.cat((dbox, cls.sigmoid()), 1)


@dataclass
class YOLOv8Config:
    """Size and variant of a YOLOv8 detector.

    Attributes:
        nc: number of classes.
        depth: depth multiple (repeats 3/6 scaled, at least 1).
        width: width multiple (channels 64..1024 scaled, capped at `max_channels`, rounded to multiples of 8).
        max_channels: cap applied before the width multiple.
        reg_max: DFL bins per box side.
        in_channels: image channels.
        fused: Conv-BN folded variant (Conv2d with bias, no BatchNorm).
    """

    nc: int = 80
    depth: float = 0.33
    width: float = 0.25
    max_channels: int = 1024
    reg_max: int = 16
    in_channels: int = 3
    fused: bool = False

    def __post_init__(self):
        if self.nc < 1 or self.reg_max < 1 or self.in_channels < 1 or self.max_channels < 8:
            raise ConfigError(f"YOLOv8Config: nc, reg_max, in_channels must be >= 1 and max_channels >= 8; got {self}")
        if not (0 < self.depth <= 4 and 0 < self.width <= 4):
            raise ConfigError(f"YOLOv8Config: depth and width multiples must be in (0, 4]; got {self}")

    def channels(self, c: int) -> int:
        return make_divisible(min(c, self.max_channels) * self.width, 8)

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1)


class YOLOv8(nn.Module):
    """YOLOv8 detector (backbone + PAN + Detect); see the module docstring for names.

    Shapes: input [B, in_channels, H, W] with H, W multiples of 32. Training: list of three
    [B, 4 * reg_max + nc, H / s, W / s] for s = 8, 16, 32. Eval: [B, 4 + nc, N], N = sum (H / s) * (W / s).
    """

    def __init__(self, config: YOLOv8Config):
        super().__init__()
        self.config = config
        c, n, f = config.channels, config.repeats, config.fused
        self.stem = Conv(config.in_channels, c(64), 3, 2, f)
        self.down1 = Conv(c(64), c(128), 3, 2, f)
        self.stage1 = C2f(c(128), c(128), n(3), True, fused=f)
        self.down2 = Conv(c(128), c(256), 3, 2, f)
        self.stage2 = C2f(c(256), c(256), n(6), True, fused=f)
        self.down3 = Conv(c(256), c(512), 3, 2, f)
        self.stage3 = C2f(c(512), c(512), n(6), True, fused=f)
        self.down4 = Conv(c(512), c(1024), 3, 2, f)
        self.stage4 = C2f(c(1024), c(1024), n(3), True, fused=f)
        self.sppf = SPPF(c(1024), c(1024), 5, f)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.td_p4 = C2f(c(1024) + c(512), c(512), n(3), fused=f)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.td_p3 = C2f(c(512) + c(256), c(256), n(3), fused=f)
        self.bu_down3 = Conv(c(256), c(256), 3, 2, f)
        self.bu_p4 = C2f(c(256) + c(512), c(512), n(3), fused=f)
        self.bu_down4 = Conv(c(512), c(512), 3, 2, f)
        self.bu_p5 = C2f(c(512) + c(1024), c(1024), n(3), fused=f)
        self.detect = Detect(config.nc, (c(256), c(512), c(1024)), config.reg_max, (8, 16, 32), f)
        self.detect.bias_init()

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def forward(self, x: torch.Tensor) -> Union[List[torch.Tensor], torch.Tensor]:
        x = self.stage1(self.down1(self.stem(x)))
        p3 = self.stage2(self.down2(x))
        p4 = self.stage3(self.down3(p3))
        p5 = self.sppf(self.stage4(self.down4(p4)))
        t4 = self.td_p4(torch.cat((self.up1(p5), p4), 1))
        n3 = self.td_p3(torch.cat((self.up2(t4), p3), 1))
        n4 = self.bu_p4(torch.cat((self.bu_down3(n3), t4), 1))
        n5 = self.bu_p5(torch.cat((self.bu_down4(n4), p5), 1))
        return self.detect([n3, n4, n5])

    def fuse(self) -> "YOLOv8":
        """Fold every BatchNorm into its conv in place (use in eval mode); sets ``config.fused``."""
        for module in self.modules():
            if isinstance(module, Conv):
                module.fuse()
        self.config = YOLOv8Config(**{**asdict(self.config), "fused": True})
        return self


def _build(name: str, depth: float, width: float, pretrained: bool, kwargs: dict) -> YOLOv8:
    if pretrained:
        warnings.warn(f"prunekit.models.yolov8.{name}: no pretrained weights are available for this model; "
                      "returning a randomly initialised network (use 'yolov8s_fall' for real weights)", stacklevel=3)
    # the size's multiples are defaults: keyword args (a narrower width for CPU experiments) take precedence
    return YOLOv8(YOLOv8Config(**{"depth": depth, "width": width, "max_channels": 1024, **kwargs}))


def yolov8n(pretrained: bool = True, **kwargs) -> YOLOv8:
    """YOLOv8n layout (depth 0.33, width 0.25; 3,157,184 parameters at nc=80). Keyword args go to `YOLOv8Config`."""
    return _build("yolov8n", 0.33, 0.25, pretrained, kwargs)


def yolov8s(pretrained: bool = True, **kwargs) -> YOLOv8:
    """YOLOv8s layout (depth 0.33, width 0.50; 11,166,544 parameters at nc=80). Keyword args go to `YOLOv8Config`."""
    return _build("yolov8s", 0.33, 0.50, pretrained, kwargs)
