"""A genuinely multi-head CIFAR classifier: a pretrained CIFAR ResNet trunk (option A) with two heads, the 10
CIFAR-10 classes (`linear`, the pretrained head) and vehicle versus animal (`coarse`: airplane, automobile, ship
and truck are vehicles), trained jointly with `train_joint`.

Batches for both tasks come from `two_task_batch`: (images, class labels, vehicle labels), so one forward serves
both heads and each task's loss and accuracy come from the same output. (A 4-way rotation head was tried first:
the pooled trunk features hold almost no orientation, a linear probe on them reaches 57-60% against 50% for always
answering "upright", and a short joint training did not change that, so it made a poor second task here.)
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..io import load_state_dict_strict, load_tensors
from ..paths import data_file
from .cifar_resnet import OPTION_A_WEIGHTS, CifarResNet, load_option_a

VEHICLES = torch.tensor([0, 1, 8, 9])  # CIFAR-10 class order: airplane, automobile, ship, truck


class MultiHeadCifarResNet(nn.Module):
    """CIFAR ResNet trunk -> pooled features [B, 64] -> (class logits [B, 10], vehicle/animal logits [B, 2]).

    Module names: the trunk's own (conv1, bn1, layer1-3) and heads ``linear`` (classes) and ``coarse``.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10):
        super().__init__()
        base = CifarResNet(depth, num_classes)
        self.depth = depth
        self.conv1, self.bn1 = base.conv1, base.bn1
        self.layer1, self.layer2, self.layer3, self.linear = base.layer1, base.layer2, base.layer3, base.linear
        self.coarse = nn.Linear(self.linear.in_features, 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        feat = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(feat), self.coarse(feat)


def two_task_batch(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, H, W], class labels [B], vehicle labels [B]: 1 for airplane, automobile, ship, truck)."""
    labels = labels.long()
    return images, labels, torch.isin(labels, VEHICLES).long()


def class_loss(output: Sequence[torch.Tensor], batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the class head on a `two_task_batch`."""
    return F.cross_entropy(output[0], batch[1])


def coarse_loss(output: Sequence[torch.Tensor], batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the vehicle/animal head on a `two_task_batch`."""
    return F.cross_entropy(output[1], batch[2])


@torch.no_grad()
def task_accuracies(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> Tuple[float, float]:
    """(class accuracy, vehicle/animal accuracy) over `two_task_batch` batches, in percent."""
    model.eval()
    hit_c = hit_v = n = 0
    for x, y, v in batches:
        logits_c, logits_v = model(x)
        hit_c += int((logits_c.argmax(1) == y).sum())
        hit_v += int((logits_v.argmax(1) == v).sum())
        n += y.numel()
    return 100.0 * hit_c / max(n, 1), 100.0 * hit_v / max(n, 1)


def train_joint(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]], lr: float = 0.01,
                weights: Tuple[float, float] = (1.0, 1.0), momentum: float = 0.9, weight_decay: float = 5e-4,
                progress: bool = False) -> nn.Module:
    """The joint training recipe: SGD with cosine decay on weights[0] * class loss + weights[1] * vehicle/animal loss
    over the given `two_task_batch` batches (one pass). Used to train the second head with the trunk and to
    fine-tune pruned models alike (equal fine-tuning for every method)."""
    batches = list(batches)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(len(batches), 1))
    model.train()
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("joint training", total=len(batches))
        for batch in batches:
            out = model(batch[0])
            loss = weights[0] * class_loss(out, batch) + weights[1] * coarse_loss(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.advance(task)
    model.eval()
    return model


def multihead(depth: int, pretrained: bool = True, weights=None) -> MultiHeadCifarResNet:
    """The two-head model. `weights`: a jointly trained state dict (safetensors); else, with `pretrained`, the
    trunk and class head get the option-A CIFAR weights and the vehicle/animal head is untrained (train it with
    `train_joint`)."""
    model = MultiHeadCifarResNet(depth)
    if weights is not None:
        load_state_dict_strict(model, dict(load_tensors(weights)), source=f"checkpoint {weights}")
        return model
    if pretrained:
        trunk = load_option_a(CifarResNet(depth, 10), data_file(OPTION_A_WEIGHTS[depth], f"ResNet-{depth} weights"))
        result = model.load_state_dict(trunk.state_dict(), strict=False)
        if set(result.missing_keys) != {"coarse.weight", "coarse.bias"} or result.unexpected_keys:
            raise CheckpointError(f"cifar_multihead: ResNet-{depth} trunk weights do not match the model "
                                  f"(missing {result.missing_keys}, unexpected {result.unexpected_keys})")
    return model


def resnet56_multihead(pretrained: bool = True, weights=None) -> MultiHeadCifarResNet:
    """ResNet-56 trunk (option A, pretrained) with class and vehicle/animal heads."""
    return multihead(56, pretrained, weights)


def resnet20_multihead(pretrained: bool = True, weights=None) -> MultiHeadCifarResNet:
    """ResNet-20 trunk (option A, pretrained) with class and vehicle/animal heads (the quick benchmark's model)."""
    return multihead(20, pretrained, weights)
