"""The model and data a recipe runs on: image classification or YOLO-style detection.

The recipes of papers 1 and 3 are written for detectors and run here on both kinds of registered image model. A task
(`make_task` picks `ClassificationTask` or `DetectionTask` from the model registry's ``task`` field) builds the model
and datasets once, trains a model for one stage with the reference loop (`prunekit.train.loop.train`, checkpointed
and resumable), and measures the task's metric (top-1 accuracy, or mAP50 and mAP50-95), parameters, MACs and CPU
latency. The stages call only this interface, so a recipe never knows which kind of model it prunes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..export.model_spec import pruned_folder_origin

#: Config keys that steer a run without changing its result (left out of stage fingerprints).
RUN_CONTROL = frozenset({"max_steps", "checkpoint_every", "checkpoint_unit", "progress", "device", "num_threads",
                         "latency_batch", "latency_threads", "latency_repeats", "eval_original"})


def need(ok: bool, section: str, message: str) -> None:
    """Raise `ConfigError` naming the config section when `ok` is false."""
    if not ok:
        raise ConfigError(f"{section}: {message}")


@dataclass
class TaskConfig:
    """The model and data a recipe runs on (section ``task``).

    Attributes:
        model: a `prunekit.models` registry name (its `ModelInfo` gives the task kind, input shape and
            normalisation).
        dataset: a `prunekit.data` registry name with ``train`` / ``test`` splits: ``(image, label)`` items for a
            classifier, ``(image [3, S, S], targets [n, 6])`` items for a detector.
        pretrained: load the model's real weights (ignored when `weights` is set).
        weights: a state dict to start from (a detector you trained, a fine-tuned classifier): ``.safetensors``,
            or a torch file read with ``weights_only=True`` (never unpickled); its content digest is part of every
            stage's fingerprint.
        model_args: keyword arguments of the model factory (``{"nc": 10}`` for a 10-class detector).
        dataset_args: keyword arguments of the dataset loader, both splits (``{"img_size": 128}``).
        image_size: side of the square example input used for tracing, MACs and latency (None: the model's
            declared input size). Detection data must have this size; a mismatch is refused.
        train_subset: train on a seeded random subset of this many items (None: the whole split). A random subset,
            not the first N: the CIFAR-10 JPEG train split is ordered by class.
        test_limit: evaluate on the first N test items.
        subset_seed: seed of the train subset.
        augment: ``"standard"`` (random crop + flip, classification data) or None.
        batch_size / eval_batch_size: items per training / evaluation step.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"``.
        num_threads: ``torch.set_num_threads`` for the run (None: leave as is).
        latency_batch / latency_threads / latency_repeats: CPU latency measurement of the final model.
        eval_original: also evaluate the unpruned model's metric and latency (one extra test pass).
    """

    SECTION: ClassVar[str] = "task"

    model: str = "cifar_resnet56_b"
    dataset: str = "cifar10"
    pretrained: bool = True
    weights: Optional[str] = None
    model_args: Dict[str, Any] = field(default_factory=dict)
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    image_size: Optional[int] = None
    train_subset: Optional[int] = None
    test_limit: Optional[int] = None
    subset_seed: int = 0
    augment: Optional[str] = "standard"
    batch_size: int = 128
    eval_batch_size: int = 256
    device: str = "auto"
    num_threads: Optional[int] = None
    latency_batch: int = 1
    latency_threads: int = 1
    latency_repeats: int = 30
    eval_original: bool = True

    def __post_init__(self):
        s = self.SECTION
        need(self.train_subset is None or self.train_subset >= 1, s,
             f"train_subset must be >= 1, got {self.train_subset}")
        need(self.test_limit is None or self.test_limit >= 1, s, f"test_limit must be >= 1, got {self.test_limit}")
        need(self.augment in (None, "standard"), s, f"augment must be 'standard' or null, got {self.augment!r}")
        need(self.batch_size >= 1 and self.eval_batch_size >= 1, s, "batch sizes must be >= 1")
        need(self.num_threads is None or self.num_threads >= 1, s, f"num_threads must be >= 1, got {self.num_threads}")
        need(self.latency_batch >= 1 and self.latency_threads >= 1 and self.latency_repeats >= 1, s,
             "latency_batch, latency_threads and latency_repeats must be >= 1")
        need(self.image_size is None or self.image_size >= 1, s, f"image_size must be >= 1, got {self.image_size}")
        need(isinstance(self.model_args, dict) and isinstance(self.dataset_args, dict), s,
             "model_args and dataset_args must be mappings")


def registry_name(model: str) -> str:
    """`task.model` as a registry name: itself, or for a pruned checkpoint folder the model it was pruned from."""
    return pruned_folder_origin(model) or model


def _load_pruned(folder: str) -> nn.Module:
    import prunekit

    return prunekit.load(folder).eval()


def weights_file(path: str) -> Path:
    """`path` as a `Path`, or a `ConfigError` naming ``task.weights`` when there is no such file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"task: weights file {path} does not exist")
    return file


def weights_digest(path: str) -> str:
    """SHA-256 (first 16 hex digits) of a weights file, or a `ConfigError` naming ``task.weights``."""
    file = weights_file(path)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class StageRun:
    """Outcome of `ImageTask.train`: whether the stage finished, its steps and last training loss."""

    complete: bool
    steps: int
    epochs: int
    final_loss: float
    seconds: float
    resumed_from: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class ImageTask:
    """What every image task shares: building the model, example inputs, training, cost and latency.

    Subclasses set `kind`, `metric` (the key of the headline figure in `score`) and `score_keys` (every key `score`
    returns) and implement the data, the loss and `score`.

    Args:
        cfg: the task section of a recipe config.
        seed: seed of every training stage (the loop seeds python, numpy, torch and the data order from it).
    """

    kind: ClassVar[str] = "image"
    metric: ClassVar[str] = "score"
    score_keys: ClassVar[Tuple[str, ...]] = ("score",)

    def __init__(self, cfg: TaskConfig, seed: int = 0):
        from ..models import info

        self.cfg, self.seed = cfg, seed
        meta = info(registry_name(cfg.model))
        if meta.input_shape is None or meta.task != self.kind:
            raise ConfigError(f"task: model '{cfg.model}' is a {meta.task} model; {type(self).__name__} needs an "
                              f"image {self.kind} model")
        channels = meta.input_shape[0]
        side = cfg.image_size
        self.input_shape: Tuple[int, ...] = (channels, side, side) if side else tuple(meta.input_shape)
        self.normalize = (meta.mean, meta.std) if meta.mean is not None else None
        self._train = self._test = None
        self._calibration: Dict[int, List[Any]] = {}

    # ------------------------------------------------------------------------------------------------ model
    def architecture(self) -> nn.Module:
        """The registered architecture with `model_args`, without loading any weights, in eval mode."""
        import warnings

        from ..models import build

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no pretrained weights" warnings do not apply to a bare architecture
            if pruned_folder_origin(self.cfg.model):  # a pruned folder: its architecture (weights come later)
                return _load_pruned(self.cfg.model)
            return build(self.cfg.model, pretrained=False, **self.cfg.model_args).eval()

    def build(self) -> nn.Module:
        """The model a recipe starts from: the `weights` file when set, else the registry's (pretrained) model."""
        from ..models import build

        if self.cfg.weights is None:
            if pruned_folder_origin(self.cfg.model):
                return _load_pruned(self.cfg.model)
            return build(self.cfg.model, pretrained=self.cfg.pretrained, **self.cfg.model_args).eval()
        from ..io import load_state_dict_strict, load_tensors

        model = self.architecture()
        state = load_tensors(weights_file(self.cfg.weights))
        load_state_dict_strict(model, state, f"task.weights ({self.cfg.weights})")
        return model.eval()

    def example_inputs(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """Deterministic random inputs ``[batch, *input_shape]`` for tracing, planning and bias folding."""
        return torch.randn((batch, *self.input_shape), generator=torch.Generator().manual_seed(seed))

    # ------------------------------------------------------------------------------------------------ data
    @property
    def train_set(self):
        """The training split, restricted to the seeded subset."""
        if self._train is None:
            self._train = _random_subset(self.load_split("train"), self.cfg.train_subset, self.cfg.subset_seed)
        return self._train

    @property
    def test_set(self):
        """The test split (the first `test_limit` items are evaluated)."""
        if self._test is None:
            self._test = self.load_split("test")
        return self._test

    def load_split(self, split: str):
        raise NotImplementedError

    def calibration_items(self, n: int) -> List[Any]:
        """`n` training items drawn, and augmented as in training, under a fixed seed: the same items on every call
        (BN re-estimation, pruning searches)."""
        n = min(n, len(self.train_set))
        if n not in self._calibration:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed + 12345)
                index = torch.randperm(len(self.train_set))[:n].tolist()
                self._calibration[n] = [self.train_set[i] for i in index]
        return self._calibration[n]

    def calibration_images(self, n: int) -> torch.Tensor:
        """The images of `calibration_items`: [n, C, H, W]."""
        return torch.stack([item[0] for item in self.calibration_items(n)])

    def model_spec(self) -> Dict[str, Any]:
        """How `prunekit.load` rebuilds the unpruned architecture (stored in the pruning plan)."""
        if pruned_folder_origin(self.cfg.model):  # started from a pruned folder: replay onto it
            return {"checkpoint": str(Path(self.cfg.model).resolve())}
        spec: Dict[str, Any] = {"registry": self.cfg.model}
        if self.cfg.model_args:
            spec["kwargs"] = dict(self.cfg.model_args)
        return spec

    # ------------------------------------------------------------------------------------------------ training
    def train_extras(self, model: nn.Module) -> Dict[str, Any]:
        """``loss_fn`` / ``collate_fn`` for the training loop (None: cross-entropy, default collate)."""
        return {}

    def train(self, model: nn.Module, stage, folder: Path, hooks: Sequence[Any] = ()) -> StageRun:
        """Train `model` in place for one stage (a `TrainStageConfig`), checkpointing into ``folder/ckpt`` and
        resuming from it.

        Returns:
            a `StageRun`; ``complete`` is False when `stage.max_steps` stopped the run early.
        """
        from ..train.loop import TrainConfig, train

        cfg = TrainConfig(epochs=stage.epochs, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay,
                          batch_size=self.cfg.batch_size, warmup_steps=stage.warmup_steps,
                          min_lr_ratio=stage.min_lr_ratio, grad_clip=stage.grad_clip, seed=self.seed,
                          checkpoint_dir=str(Path(folder) / "ckpt"), checkpoint_every=stage.checkpoint_every,
                          checkpoint_unit=stage.checkpoint_unit, resume=True, device=self.cfg.device,
                          max_steps=stage.max_steps, log_every=10)
        result = train(model, self.train_set, cfg, hooks=hooks, **self.train_extras(model))
        model.cpu().eval()
        complete = result.epochs >= stage.epochs
        return StageRun(complete, result.steps, result.epochs, float(result.final_loss), result.seconds,
                        result.resumed_from)

    @torch.no_grad()
    def search_loss(self, model: nn.Module, n: int) -> float:
        """The training loss of a copy of `model` on `n` calibration items after re-estimating its BatchNorm
        statistics on them (EagleEye's "adaptive BN": a freshly pruned candidate's stale statistics would
        mostly measure the statistics shift, not what fine-tuning can reach)."""
        import copy

        from ..train.bn_recalibrate import recalibrate_batchnorm

        items = self.calibration_items(n)
        work = copy.deepcopy(model)
        batch = self.cfg.batch_size
        recalibrate_batchnorm(work, torch.stack([item[0] for item in items]), batch)
        total = sum(self.summed_loss(work, items[i:i + batch]) for i in range(0, len(items), batch))
        return total / len(items)

    def summed_loss(self, model: nn.Module, items: List[Any]) -> float:
        """The training loss of `model` (BatchNorm statistics fixed) summed over `items`."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ metrics
    def score(self, model: nn.Module) -> Dict[str, float]:
        """The task's quality figures on the test items; ``score(model)[self.metric]`` is the headline one."""
        raise NotImplementedError

    def cost(self, model: nn.Module) -> Dict[str, float]:
        """Parameters and MACs of one example input (batch 1)."""
        from ..metrics.macs import count_macs
        from ..metrics.params import count_parameters

        model = model.cpu().eval()
        return {"params": int(count_parameters(model)), "macs": int(count_macs(model, self.example_inputs(1)))}

    def latency_ms(self, model: nn.Module) -> float:
        """Median eager CPU latency in ms of a batch of `latency_batch` inputs (`latency_threads` threads)."""
        from ..metrics.latency import eager_latency

        model = model.cpu().eval()
        x = self.example_inputs(self.cfg.latency_batch)
        return float(eager_latency(model, x, warmup=5, repeats=self.cfg.latency_repeats,
                                   threads=self.cfg.latency_threads).median_ms)

    def measure(self, model: nn.Module, latency: bool = True) -> Dict[str, float]:
        """`score`, params, MACs and (optionally) latency of `model`."""
        out = {**self.score(model), **self.cost(model)}
        if latency:
            out["latency_ms"] = self.latency_ms(model)
        return out


class ClassificationTask(ImageTask):
    """A registered image classifier plus its dataset; metric: top-1 accuracy."""

    kind = "classification"
    metric = "accuracy"
    score_keys = ("accuracy",)

    def load_split(self, split: str):
        from ..data import load

        if split == "train":
            return load(self.cfg.dataset, split="train", augment=self.cfg.augment, normalize=self.normalize,
                        **self.cfg.dataset_args)
        return load(self.cfg.dataset, split="test", normalize=self.normalize, limit=self.cfg.test_limit,
                    **self.cfg.dataset_args)

    def summed_loss(self, model: nn.Module, items: List[Any]) -> float:
        import torch.nn.functional as F

        images, labels = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
        return float(F.cross_entropy(model(images), labels, reduction="sum"))

    def accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy in [0, 1] on the test images."""
        from ..metrics.accuracy import evaluate_accuracy

        return float(evaluate_accuracy(model, self.test_set, batch_size=self.cfg.eval_batch_size, progress=False))

    def score(self, model: nn.Module) -> Dict[str, float]:
        return {"accuracy": self.accuracy(model)}


class DetectionTask(ImageTask):
    """A registered YOLO-style detector plus a detection dataset; trained with the YOLOv8 loss (task-aligned
    assignment, DFL, CIoU), scored by COCO mAP50 (headline) and mAP50-95."""

    kind = "detection"
    metric = "map50"
    score_keys = ("map50", "map50_95")

    def __init__(self, cfg: TaskConfig, seed: int = 0):
        super().__init__(cfg, seed)
        if cfg.augment is not None:
            raise ConfigError(f"task: augment '{cfg.augment}' is a classification augmentation; set augment: null for "
                              f"the detector '{cfg.model}'")

    def load_split(self, split: str):
        from ..data import load

        data = load(self.cfg.dataset, split=split, **self.cfg.dataset_args)
        image = data[0][0]
        if tuple(image.shape) != tuple(self.input_shape):
            raise ConfigError(f"task: dataset '{self.cfg.dataset}' ({split}) gives {tuple(image.shape)} images but "
                              f"the example input of '{self.cfg.model}' is {tuple(self.input_shape)}; set "
                              f"task.image_size to the data's side (or the data's size to the model's)")
        return data

    def train_extras(self, model: nn.Module) -> Dict[str, Any]:
        from ..data.detection import collate_fn
        from ..train.detection import detection_loss_fn

        return {"loss_fn": detection_loss_fn(model), "collate_fn": collate_fn}

    def summed_loss(self, model: nn.Module, items: List[Any]) -> float:
        from ..data.detection import collate_fn
        from ..train.detection import detection_loss_fn

        model.train()  # the YOLOv8 loss reads the raw per-level maps of training mode; BN statistics stay frozen
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        images, targets = collate_fn(items)
        return float(detection_loss_fn(model)(model(images), targets)) * len(items)

    def score(self, model: nn.Module) -> Dict[str, float]:
        from ..train.detection import evaluate_map

        result = evaluate_map(model, self.test_set, limit=self.cfg.test_limit, batch_size=self.cfg.eval_batch_size)
        return {"map50": float(result["map50"]), "map50_95": float(result["map50_95"])}


TASKS: Dict[str, type] = {"classification": ClassificationTask, "detection": DetectionTask}


def make_task(cfg: TaskConfig, seed: int = 0) -> ImageTask:
    """The task for `cfg.model`'s kind (the registry's ``ModelInfo.task``); refuses kinds the recipes cannot run."""
    from ..models import info

    kind = info(registry_name(cfg.model)).task
    if kind not in TASKS:
        raise ConfigError(f"task: model '{cfg.model}' is a {kind} model; the recipes run on "
                          f"{' or '.join(sorted(TASKS))} models")
    return TASKS[kind](cfg, seed)


def _random_subset(dataset, n: Optional[int], seed: int):
    """A seeded random subset (sorted indices): an `ImageArrayDataset` keeps its type and transform, any other
    dataset becomes a `torch.utils.data.Subset`."""
    if n is None or n >= len(dataset):
        return dataset
    from ..data.array_dataset import ImageArrayDataset

    index = np.sort(np.random.RandomState(seed).permutation(len(dataset))[:n])
    if not isinstance(dataset, ImageArrayDataset):
        return torch.utils.data.Subset(dataset, index.tolist())
    index_t = torch.as_tensor(index)
    return ImageArrayDataset(dataset.images[index_t], dataset.labels[index_t], dataset.classes, dataset.transform,
                             f"{dataset.name}[subset {n}, seed {seed}]")
