"""YOLOv8 model, ONNX weight loading and post-processing."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from prunekit.models import build
from prunekit.models.yolo_postprocess import (box_iou, decode_predictions, letterbox, nms, non_max_suppression,
                                              scale_boxes)
from prunekit.models.yolov8 import YOLOv8, yolov8n, yolov8s
from prunekit.paths import data_root

torch.set_num_threads(2)


def _quiet(factory, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(**kw)


@pytest.mark.parametrize("factory,params", [(yolov8n, 3_157_184), (yolov8s, 11_166_544)])
def test_forward_shapes_train_and_eval(factory, params):
    torch.manual_seed(0)
    model = _quiet(factory)
    # Ultralytics reports 3,157,200 / 11,166,560 parameters; the difference is its 16-weight DFL conv (a buffer here).
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.rand(2, 3, 96, 128)
    model.train()
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 144, 12, 16), (2, 144, 6, 8), (2, 144, 3, 4)]
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 84, 12 * 16 + 6 * 8 + 3 * 4)
    scores = y[:, 4:]
    assert scores.min() >= 0 and scores.max() <= 1
    assert (y[:, 2:4] > 0).all()  # widths and heights are positive (DFL expectations are >= 0)


def test_eval_640_gives_8400_and_nc_kwarg():
    model = build("yolov8n", pretrained=False, nc=3).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 640, 640))
    assert y.shape == (1, 7, 8400)
    with pytest.warns(UserWarning, match="no pretrained weights"):
        yolov8n(pretrained=True)


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    model = _quiet(yolov8n, nc=4)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model.fuse()(x)
    assert model.config.fused and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(ref, out, rtol=1e-4, atol=1e-4)


def _zero_out(conv, idx):
    conv.bn.weight.data[idx] = 0
    conv.bn.bias.data[idx] = 0


def _slice_conv2d(conv: nn.Conv2d, out_keep=None, in_keep=None) -> nn.Conv2d:
    w = conv.weight.data
    b = conv.bias.data if conv.bias is not None else None
    if out_keep is not None:
        w, b = w[out_keep], (b[out_keep] if b is not None else None)
    if in_keep is not None:
        w = w[:, in_keep]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _slice_out(conv, keep):
    conv.conv = _slice_conv2d(conv.conv, out_keep=keep)
    bn = nn.BatchNorm2d(len(keep), eps=conv.bn.eps).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).data.copy_(getattr(conv.bn, name).data[keep])
    conv.bn = bn


def _keep(n, drop):
    return torch.tensor([i for i in range(n) if i not in drop])


def test_physical_channel_removal_in_c2f_and_detect_matches_zeroed_model():
    """C2f splits with chunk and Detect reads widths from shapes, so removing zeroed channels changes nothing."""
    torch.manual_seed(0)
    model = _quiet(yolov8n).eval()
    c2f, head = model.stage1, model.detect
    c = c2f.cv1.conv.out_channels // 2  # 16
    with torch.no_grad():
        _zero_out(c2f.cv1, [3, c + 3])          # channel 3 of both chunks
        _zero_out(c2f.m[0].cv2, [3])            # and of the residual bottleneck output
        _zero_out(head.cv2[0][0], [5, 9])       # box branch, level P3
        _zero_out(head.cv3[1][1], [0])          # class branch, level P4 (feeds the final 1x1 conv)
        x = torch.rand(1, 3, 128, 128)
        ref = model(x)
        _slice_out(c2f.cv1, _keep(2 * c, {3, c + 3}))
        c2f.m[0].cv1.conv = _slice_conv2d(c2f.m[0].cv1.conv, in_keep=_keep(c, {3}))
        _slice_out(c2f.m[0].cv2, _keep(c, {3}))
        c2f.cv2.conv = _slice_conv2d(c2f.cv2.conv, in_keep=_keep(3 * c, {3, c + 3, 2 * c + 3}))
        _slice_out(head.cv2[0][0], _keep(64, {5, 9}))
        head.cv2[0][1].conv = _slice_conv2d(head.cv2[0][1].conv, in_keep=_keep(64, {5, 9}))
        n3 = head.cv3[1][1].conv.out_channels
        _slice_out(head.cv3[1][1], _keep(n3, {0}))
        head.cv3[1][2] = _slice_conv2d(head.cv3[1][2], in_keep=_keep(n3, {0}))
        out = model(x)
    assert c2f.cv1.conv.out_channels == 2 * c - 2
    assert torch.allclose(ref, out, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def fall_model():
    from prunekit.models.yolo_onnx import yolov8s_fall

    return yolov8s_fall()


def _coco8_val(n):
    paths = sorted((data_root() / "coco8" / "images" / "val").glob("*.jpg"))[:n]
    boxed = [letterbox(p, 640) for p in paths]
    return torch.stack([b[0] for b in boxed]), [b[1] for b in boxed]


def test_onnx_weights_load_every_conv():
    from prunekit.models.yolo_onnx import _module_from_node_name, fall_onnx_path, read_onnx_convs, ultralytics_to_ours

    convs = read_onnx_convs(fall_onnx_path())
    assert len(convs) == 64  # 63 model convs + the DFL conv
    # initializer names and node scope names give the same module paths
    assert all(_module_from_node_name(c.node) == c.module for c in convs)
    assert ultralytics_to_ours("model.22.cv2.0.2") == "detect.cv2.0.2"
    assert ultralytics_to_ours("model.2.m.0.cv1.conv") == "stage1.m.0.cv1.conv"


def test_read_onnx_convs_converts_fp16_initializers(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from prunekit.models.yolo_onnx import read_onnx_convs

    rng = np.random.default_rng(0)
    w16 = rng.normal(size=(4, 3, 3, 3)).astype(np.float16)
    b16 = rng.normal(size=(4,)).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w16"], ["model.0.conv.weight"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Conv", ["images", "model.0.conv.weight", "b16"], ["y"], name="/model.0/conv/Conv",
                              pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w16, "w16"), numpy_helper.from_array(b16, "b16")])
    path = tmp_path / "tiny_fp16.onnx"
    onnx.save(helper.make_model(graph), str(path))
    (conv,) = read_onnx_convs(path)
    assert conv.module == "model.0.conv" and conv.weight.dtype == np.float32 and conv.bias.dtype == np.float32
    assert np.array_equal(conv.weight, w16.astype(np.float32)) and np.array_equal(conv.bias, b16.astype(np.float32))


def test_onnx_agreement_on_coco8(fall_model):
    from prunekit.models.yolo_onnx import compare_with_onnxruntime, run_onnxruntime

    images, infos = _coco8_val(2)
    result = compare_with_onnxruntime(fall_model, images)
    assert result["images"] == 2 and result["output_scale"] > 100  # box coordinates in pixels
    assert result["rel_diff"] <= 1e-3
    assert result["max_abs_diff_scores"] <= 1e-4
    # the same detections after NMS (image 000000000036.jpg)
    ref = run_onnxruntime(images[:1])
    with torch.no_grad():
        ours = fall_model(images[:1])
    a, b = decode_predictions(ours, infos[:1])[0], decode_predictions(ref, infos[:1])[0]
    assert len(a["scores"]) == len(b["scores"]) >= 1
    assert torch.allclose(a["boxes"], b["boxes"], atol=0.05) and torch.equal(a["classes"], b["classes"])
    # a real detector: it finds the standing person as "Normal" with high confidence, inside the image
    assert a["scores"].max() > 0.5 and a["classes"][a["scores"].argmax()] == 0
    assert (a["boxes"][:, 2] <= infos[0].orig_shape[1]).all() and (a["boxes"][:, 3] <= infos[0].orig_shape[0]).all()


def _reference_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    iou = box_iou(boxes, boxes)
    suppressed, keep = set(), []
    for i in order:
        if i in suppressed:
            continue
        keep.append(i)
        suppressed.update(j for j in order if iou[i, j] > thr)
    return keep


def test_nms_hand_made_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.1])
    # box 3 (0.95) suppresses 0 (identical) and 1 (IoU 9/11 = 0.82); 2 and 4 do not overlap
    assert nms(boxes, scores, 0.5).tolist() == [3, 2, 4]
    assert nms(boxes, scores, 0.85).tolist() == [3, 1, 2, 4]  # 1 survives: IoU 0.82 <= 0.85
    assert nms(boxes, scores, 0.5, max_keep=2).tolist() == [3, 2]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    rand_boxes = torch.cat((xy, xy + 5 + torch.rand(300, 2, generator=g) * 30), 1)
    rand_scores = torch.rand(300, generator=g)
    assert nms(rand_boxes, rand_scores, 0.45).tolist() == _reference_nms(rand_boxes, rand_scores, 0.45)


def test_non_max_suppression_on_model_layout():
    # [1, 4 + 2, 4]: columns are (cx, cy, w, h, score_cls0, score_cls1)
    pred = torch.tensor([[[10, 11, 50, 10], [10, 10, 50, 10], [10, 10, 10, 10], [10, 10, 10, 10],
                          [0.9, 0.1, 0.8, 0.2], [0.0, 0.85, 0.1, 0.1]]]).float()
    det = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5)[0]
    # anchors 0 (cls 0) and 1 (cls 1) overlap but have different classes; anchor 3 is below the threshold
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.85, 0.8])
    assert det[:, 5].tolist() == [0, 1, 0]
    assert det[0, :4].tolist() == [5, 5, 15, 15]
    agnostic = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5, agnostic=True)[0]
    assert agnostic[:, 4].tolist() == pytest.approx([0.9, 0.8])


def test_letterbox_and_scale_boxes_round_trip():
    path = sorted((data_root() / "coco8" / "images" / "train").glob("*.jpg"))[0]
    image, info = letterbox(path, 640)
    h0, w0 = info.orig_shape
    assert image.shape == (3, 640, 640) and info.ratio == pytest.approx(min(640 / h0, 640 / w0))
    assert info.pad == (0.0, 80.0)  # 640x480 image: 80 grey rows above and below
    assert (image[:, :80] - 114 / 255).abs().max() < 1e-6 and (image[:, 560:] - 114 / 255).abs().max() < 1e-6
    orig = torch.tensor([[10.0, 20.0, w0 - 5.0, h0 / 2]])
    boxed = orig * info.ratio + torch.tensor(info.pad * 2)
    assert torch.allclose(scale_boxes(boxed, info), orig, atol=1e-3)
