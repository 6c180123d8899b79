"""Every deployment path of every zoo model after pruning: checkpoint save/load, ONNX + onnxruntime, torch.export,
BatchNorm folding, Hugging Face save_pretrained / load_pretrained.

    python benchmarks/export_roundtrip.py --json out.json           # the whole zoo (minutes on a 2-core CPU)
    python benchmarks/export_roundtrip.py --quick --json out.json   # one model per family

Each model is pruned at 50% by the global allocator (non-uniform widths) with its normalisation layers perturbed
(random-init ones are the identity, which would hide a wrong fold). Each path ends ``ok`` (outputs within 1e-4
relative of the pruned model on held-out inputs of the same shapes), ``refused`` (the exporter refused; the known
refusals are listed in `KNOWN_REFUSALS` with their reason) or ``wrong`` (a bug). Targets: 0 wrong, 0 refusals
beyond the known ones.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_table, print_targets, report, target, write_json  # noqa: E402
from _zoo_models import _perturb_norms  # noqa: E402

import prunekit  # noqa: E402
from prunekit.export.roundtrip import PATHS, check_paths, scratch_folder  # noqa: E402
from prunekit.models import build, example_inputs  # noqa: E402

ZOO = ["cifar_resnet20", "cifar_resnet56_b", "cifar_vgg16", "cifar_mobilenetv2", "cifar_shufflenetv2", "cifar_vit",
       "digits_cnn", "hf_tiny_llama", "hf_tiny_qwen2", "hf_tiny_mistral", "hf_tiny_gpt2", "hf_tiny_bert",
       "hf_tiny_vit", "hf_tiny_resnet", "hf_tiny_convnext", "hf_tiny_mobilenetv2", "hf_tiny_swin", "yolov8n"]
QUICK = ["digits_cnn", "cifar_resnet20", "cifar_vit", "hf_tiny_llama", "hf_tiny_gpt2", "hf_tiny_bert",
         "hf_tiny_resnet"]
KNOWN_REFUSALS = {
    ("yolov8n", "torch_export"): "the YOLOv8 head decodes boxes with stride.item(), a data-dependent value "
                                 "torch.export cannot guard on",
}


def inputs_for(name: str, seed: int):
    if name == "yolov8n":
        return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return example_inputs(name, batch=2, seq_len=8, seed=seed)


def run_model(name: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name, pretrained=False).eval()
        _perturb_norms(model)
        x, check = inputs_for(name, 0), inputs_for(name, 1)
        plan = prunekit.plan(model, x, ratio=0.5, allocator="global")
        pruned = prunekit.apply(model, plan, x)
        with scratch_folder() as tmp:
            results = check_paths(pruned, plan, x, check, tmp)
    return {"model": name, **{p: r.to_dict() for p, r in results.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one model per family")
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in QUICK if args.quick else ZOO:
        rows.append(run_model(name))
        print(name, {p: rows[-1][p]["status"] for p in PATHS}, flush=True)
    cells = lambda r, p: r[p]["status"] + ("" if r[p]["relative_error"] is None  # noqa: E731
                                           else f" ({r[p]['relative_error']:.1e})")
    print_table("export round-trips (status, relative error)", ["model", *PATHS],
                [[r["model"], *[cells(r, p) for p in PATHS]] for r in rows])
    wrong = sum(r[p]["status"] == "wrong" for r in rows for p in PATHS)
    unknown = [(r["model"], p, r[p]["message"]) for r in rows for p in PATHS
               if r[p]["status"] == "refused" and (r["model"], p) not in KNOWN_REFUSALS]
    for model, path, message in unknown:
        print(f"refused: {model} {path}: {message}")
    targets = [target("wrong_outputs", wrong, "<=", 0), target("unexpected_refusals", len(unknown), "<=", 0)]
    print_targets(targets)
    if args.json:
        write_json(args.json, report("export_roundtrip", argv if argv is not None else sys.argv[1:], start, rows,
                                     targets, known_refusals={f"{m} {p}": why
                                                              for (m, p), why in KNOWN_REFUSALS.items()}))
    return 0 if all(t["passed"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
