"""Small models for the cases on which existing tools fail (shared by the engine tests and benchmarks)."""
import torch
from torch import nn


class C2fLike(nn.Module):
    """conv -> chunk(2) -> residual bottleneck on the second half -> cat -> conv (YOLOv8's C2f)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.cv1 = nn.Conv2d(c, 2 * c, 1)
        self.m = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        self.cv2 = nn.Conv2d(3 * c, c, 1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.append(y[-1] + self.m(y[-1]))
        return self.head(self.cv2(torch.cat(y, 1)))


class ShuffleNet(nn.Module):
    """conv -> channel shuffle (view, transpose, reshape) -> conv."""

    def __init__(self, groups=4):
        super().__init__()
        self.groups = groups
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.b(y)


class RMSNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.norm = nn.RMSNorm(32)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


class MaskMul(nn.Module):
    """A [B,C,H,W] feature map times a [B,1,H,W] mask from a 1-channel conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.mask = nn.Conv2d(16, 1, 1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * torch.sigmoid(self.mask(y)))


CASES = {
    "c2f_chunk": (C2fLike, (2, 3, 16, 16)),
    "channel_shuffle": (ShuffleNet, (2, 3, 8, 8)),
    "rmsnorm": (RMSNormNet, (2, 5, 8)),
    "broadcast_mask": (MaskMul, (2, 3, 8, 8)),
}
