"""LPViT block pruning (methods.md section 5) on three real models, plus the block-sparse execution path.

    python benchmarks/lpvit.py --json out.json                 # full run
    python benchmarks/lpvit.py --quick --json out.json         # smoke run, about 10 minutes on one CPU thread
    python benchmarks/lpvit.py --quick --md                    # also writes docs/results_lpvit.md and its figure
    python benchmarks/lpvit.py --from-json out.json --md       # re-render the page from an earlier report

For the CIFAR ViT (accuracy), the MiniLM sentence encoder (cosine of pruned to original mean-pooled embeddings on the
WikiText-2 *valid* sentences used for calibration and on held-out WikiText-2 *test* sentences) and SmolLM2-135M's
MLP layers (WikiText-2 test perplexity), at 30/50/70% of blocks removed and without fine-tuning, it compares

* ``lpvit``: slope-matched allocation (params budget), Fisher block scores, measured distortion curves (each layer
  pruned alone at a grid of amounts, mean squared change of the model output);
* ``lpvit_taylor``: the same with the gradient (empirical Fisher) curves alone, no measurement;
* ``uniform``: the same fraction of blocks removed in every layer (same block scores: only the allocation differs);
* ``magnitude``: per-layer unstructured magnitude pruning at the same fraction (finer-grained, no speed-up).

Then: `BlockSparseLinear` latency against dense ``nn.Linear`` (256 tokens, 1 thread) on MiniLM- and SmolLM2-sized
layers, and a measured-latency budget on MiniLM (balanced layout, a latency table of the block-sparse kernel),
reporting how close the measured latency of the pruned layers lands to the budget and the end-to-end latency of
the pruned encoder.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (doc_command, fmt, markdown_table, markdown_target_table, print_table,  # noqa: E402
                     print_targets, report, target, write_json)

from prunekit.blocks import (LPViTConfig, convert, find_targets, measure_latency_table,  # noqa: E402
                             plan_blocks)
from prunekit.blocks.baselines import magnitude_unstructured  # noqa: E402
from prunekit.blocks.cost import time_layer  # noqa: E402
from prunekit.blocks.layout import BlockShape  # noqa: E402
from prunekit.io import atomic_write_text  # noqa: E402
from prunekit.metrics.latency import median_call_ms  # noqa: E402
from prunekit.paths import repo_root  # noqa: E402

SPARSITIES = (0.3, 0.5, 0.7)
METHODS = ("lpvit", "lpvit_taylor", "uniform", "magnitude")
SETTINGS = {
    "quick": dict(vit_calib=512, vit_eval=1000, minilm_calib=128, minilm_eval=200, minilm_len=64, minilm_measure=8,
                  lm_calib=8, lm_calib_len=256, lm_eval_tokens=2048, repeats=15, grid=6, lm_grid=4, lm_measure_len=64),
    "full": dict(vit_calib=2000, vit_eval=10000, minilm_calib=512, minilm_eval=1000, minilm_len=128, minilm_measure=32,
                 lm_calib=32, lm_calib_len=512, lm_eval_tokens=8192, repeats=30, grid=10, lm_grid=8, lm_measure_len=256),
}
LATENCY_SHAPES = {"minilm": [(1536, 384), (384, 1536), (384, 384)], "smollm2": [(1536, 576), (576, 1536)]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------------ tasks

class Task:
    """A model with calibration batches, a calibration loss, target patterns and a quality metric."""

    name: str
    metric: str
    higher_is_better: bool = True
    block: str = "32x32"
    include = ("*",)
    exclude = ()
    measure: Dict[str, Any] = {}

    def config(self, keep: float, **kw) -> LPViTConfig:
        return LPViTConfig(block=self.block, include=self.include, exclude=self.exclude, keep_fraction=keep, **kw)


class VitTask(Task):
    name, metric, block, exclude = "cifar_vit", "accuracy", "16x16", ("mlp_head*",)

    def __init__(self, s):
        from prunekit.data.cifar10 import cifar10_jpg
        from prunekit.models.cifar_vit import vit

        self.model = vit().eval()
        train = cifar10_jpg("train")
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:s["vit_calib"]]
        xs = torch.stack([train[int(i)][0] for i in idx])
        ys = torch.tensor([train[int(i)][1] for i in idx])
        self.batches = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, len(xs), 32)]
        self.test = cifar10_jpg("test", limit=s["vit_eval"])
        self.measure = dict(curves="measured", grid=s["grid"], measure_batches=2)
        self.calibration = f"{s['vit_calib']} CIFAR-10 train images, cross-entropy (labels exist)"

    def loss(self, model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    def evaluate(self, model) -> Dict[str, float]:
        from prunekit.metrics.accuracy import evaluate_accuracy

        return {"accuracy": evaluate_accuracy(model, self.test, progress=False)}


def _sentences(split: str, n: int) -> List[str]:
    from prunekit.data.text import wikitext2

    out = []
    for line in wikitext2(split).split("\n"):
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in line.split(" . "):
            if 8 <= len(sentence.split()) <= 60:
                out.append(sentence.strip() + " .")
                if len(out) == n:
                    return out
    return out


class MiniLMTask(Task):
    name, metric, block, exclude = "minilm", "cosine", "32x32", ("pooler*",)

    def __init__(self, s):
        from prunekit.models.hf import load_tokenizer, minilm_l6

        self.model, self.tokenizer, self.max_len = minilm_l6(), load_tokenizer("minilm_l6"), s["minilm_len"]
        self.calib = _sentences("valid", s["minilm_calib"])
        self.held_out = _sentences("test", s["minilm_eval"])
        self.batches = [self.encode(self.calib[i:i + 16]) for i in range(0, len(self.calib), 16)]
        self.measure = dict(curves="measured", grid=s["grid"], measure_batches=1)
        self.measure_inputs = [self.encode(self.calib[:s["minilm_measure"]])]
        self.stats = None
        self.reference = {"calib": self.embed(self.model, self.calib), "held_out": self.embed(self.model,
                                                                                              self.held_out)}
        self.calibration = (f"{len(self.calib)} WikiText-2 valid sentences, label-free output energy of the "
                            f"mean-pooled embedding")

    def encode(self, texts):
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len,
                                   return_tensors="pt"))

    @staticmethod
    def pooled(model, batch):
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def loss(self, model, batch):
        return self.pooled(model, batch).pow(2).mean()

    def output(self, model, batch):
        return self.pooled(model, batch)

    def embed(self, model, texts):
        with torch.inference_mode():
            return torch.cat([F.normalize(self.pooled(model, self.encode(texts[i:i + 64])), dim=-1)
                              for i in range(0, len(texts), 64)])

    def evaluate(self, model) -> Dict[str, float]:
        return {"cosine": float((self.embed(model, self.held_out) * self.reference["held_out"]).sum(-1).mean()),
                "cosine_calib": float((self.embed(model, self.calib) * self.reference["calib"]).sum(-1).mean())}


class SmolLMTask(Task):
    name, metric, higher_is_better, block, include = "smollm2_mlp", "perplexity", False, "32x32", ("*.mlp.*",)

    def __init__(self, s):
        from prunekit.kvcache.evaluate import calibration_ids, wikitext_ids
        from prunekit.models.hf import load_tokenizer, smollm2_135m

        self.model, tokenizer = smollm2_135m(), load_tokenizer("smollm2_135m")
        calib = calibration_ids(tokenizer, s["lm_calib"], s["lm_calib_len"], split="valid")
        self.batches = [calib[i:i + 1] for i in range(len(calib))]  # one sequence per gradient: Fisher rank
        self.measure = dict(curves="measured", grid=s["lm_grid"], measure_batches=1)
        # measured curves run the whole model layers x grid times: a short window keeps that affordable on a CPU
        self.measure_inputs = [calib[:1, :s["lm_measure_len"]]]
        self.test_ids = wikitext_ids(tokenizer, "test", max_chars=s["lm_eval_tokens"] * 8)[:s["lm_eval_tokens"]]
        self.calibration = (f"{s['lm_calib']} x {s['lm_calib_len']} WikiText-2 valid tokens, next-token "
                            f"cross-entropy; measured curves on {s['lm_measure_len']} tokens")

    def loss(self, model, batch):
        return model(input_ids=batch, labels=batch).loss

    def evaluate(self, model) -> Dict[str, float]:
        from prunekit.metrics.perplexity import perplexity

        return {"perplexity": perplexity(model, self.test_ids, context=512)}


TASKS: Dict[str, Callable[[dict], Task]] = {"vit": VitTask, "minilm": MiniLMTask, "smollm2": SmolLMTask}


# ----------------------------------------------------------------------------------------------- comparisons

def compare(task: Task) -> Dict[str, Any]:
    """LPViT vs uniform vs magnitude at every sparsity; the per-layer allocation at 50%."""
    t0 = time.perf_counter()
    targets, skipped = find_targets(task.model, task.block, task.include, task.exclude)
    base = task.evaluate(task.model)
    log(f"{task.name}: {len(targets)} target weights ({len(skipped)} skipped), dense {base}")
    first = plan_blocks(task.model, task.config(0.5, **task.measure), task.batches, task.loss,
                        output_fn=getattr(task, "output", None), measure_inputs=getattr(task, "measure_inputs", None))
    stats, measured = first.stats, first.curves
    task.stats = stats
    calib_s = time.perf_counter() - t0
    log(f"{task.name}: calibration and measured curves done in {calib_s:.0f} s")
    rows, allocation = [], {}
    for sparsity in SPARSITIES:
        for method in METHODS:
            model = copy.deepcopy(task.model)
            if method == "magnitude":
                magnitude_unstructured(model, targets, sparsity)
                removed = sparsity
            else:
                curves = measured if method == "lpvit" else None
                planning = plan_blocks(task.model, task.config(1 - sparsity, allocation="uniform" if method ==
                                                               "uniform" else "slope"), stats=stats, curves=curves)
                planning.plan.apply(model)
                removed = planning.plan.fraction_removed()
                if sparsity == 0.5:
                    allocation[method] = planning.plan.per_layer()
            metrics = task.evaluate(model)
            rows.append({"model": task.name, "sparsity": sparsity, "method": method, "removed": removed, **metrics})
            log(f"{task.name} {sparsity:.0%} {method}: removed {removed:.3f} {metrics}")
            del model
    return {"dense": base, "rows": rows, "allocation": allocation, "block": task.block,
            "calibration": task.calibration, "calibration_seconds": calib_s, "targets": len(targets),
            "skipped": skipped}


# ----------------------------------------------------------------------------------------------------- latency

def kernel_latency(repeats: int) -> List[Dict[str, Any]]:
    """Block-sparse vs dense layer time, 256 tokens, random balanced masks."""
    rows = []
    cases = [(model, shape, "32x32", s) for model, shapes in LATENCY_SHAPES.items() for shape in shapes
             for s in (0.5, 0.75)]
    cases += [("smollm2", (1536, 576), b, 0.75) for b in ("16x16", "32x64")]
    for model, shape, block, sparsity in cases:
        b = BlockShape.parse(block)
        cols = shape[1] // b.cols
        k = max(1, round((1 - sparsity) * cols))
        timing = time_layer(shape, b, 256, [k], repeats)
        sparse = timing["sparse"][k]
        rows.append({"layer": model, "out": shape[0], "in": shape[1], "block": block, "sparsity": 1 - k / cols,
                     "dense_ms": timing["dense"], "sparse_ms": sparse, "speedup": timing["dense"] / sparse})
        log(f"kernel {model} {shape} {block} {1 - k / cols:.0%}: dense {timing['dense']:.3f} ms, "
            f"block-sparse {sparse:.3f} ms ({timing['dense'] / sparse:.2f}x)")
    return rows


def latency_budget(task: MiniLMTask, keep: float, repeats: int) -> Dict[str, Any]:
    """Plan MiniLM under a measured-latency budget, convert, and measure layers and the whole encoder."""
    targets, _ = find_targets(task.model, task.block, task.include, task.exclude)
    table = measure_latency_table(targets, tokens=256, threads=1)
    planning = plan_blocks(task.model, task.config(keep, layout="balanced", budget="latency", **task.measure),
                           task.batches, task.loss, cost=table, stats=task.stats, output_fn=task.output,
                           measure_inputs=task.measure_inputs)
    model = copy.deepcopy(task.model)
    converted = convert(model, planning.plan, keep_dense=table.keep_dense)
    dense_ms = pruned_ms = 0.0
    with torch.inference_mode():
        for t in targets:
            x = torch.randn(256, t.shape[1])
            dense_layer, pruned_layer = task.model.get_submodule(t.module), model.get_submodule(t.module)
            dense_ms += median_call_ms(lambda: dense_layer(x), repeats)
            pruned_ms += median_call_ms(lambda: pruned_layer(x), repeats)
        batch = task.encode(task.held_out[:64])
        ids = batch["input_ids"][:2, :128] if batch["input_ids"].shape[1] >= 128 else batch["input_ids"][:4]
        mask = torch.ones_like(ids)
        e2e_dense = median_call_ms(lambda: task.model(input_ids=ids, attention_mask=mask), repeats)
        e2e_pruned = median_call_ms(lambda: model(input_ids=ids, attention_mask=mask), repeats)
    metrics = task.evaluate(model)
    budget_ms = keep * dense_ms
    out = {"keep_fraction": keep, "table_dense_ms": planning.allocation.dense_cost,
           "table_planned_ms": planning.allocation.cost, "measured_dense_ms": dense_ms,
           "measured_pruned_ms": pruned_ms, "budget_ms": budget_ms, "relative_error": abs(pruned_ms / budget_ms - 1),
           "converted_layers": len(converted), "layers": len(targets),
           "blocks_removed": planning.plan.fraction_removed(), "e2e_tokens": int(ids.numel()),
           "e2e_dense_ms": e2e_dense, "e2e_pruned_ms": e2e_pruned, "e2e_speedup": e2e_dense / e2e_pruned, **metrics}
    log(f"latency budget {keep}: {out}")
    return out


# -------------------------------------------------------------------------------------------------------- report

def targets_of(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for name, res in results["models"].items():
        at50 = {r["method"]: r for r in res["rows"] if r["sparsity"] == 0.5}
        metric = res["metric"]
        gain = at50["lpvit"][metric] - at50["uniform"][metric]
        if not res["higher_is_better"]:
            gain = -gain
        out.append(target(f"{name}_lpvit_minus_uniform_{metric}_at_50pct (better is >0)", gain, ">=", 1e-9))
    kern = [r for r in results.get("kernel", []) if r["layer"] == "smollm2" and r["block"] == "32x32"
            and r["sparsity"] == 0.75]
    if kern:
        out.append(target("block_sparse_speedup_75pct_32x32_smollm2_mlp (slower of up/down)",
                          min(r["speedup"] for r in kern), ">=", 1.5))
    if results.get("latency_budget"):
        out.append(target("measured_latency_budget_relative_error", results["latency_budget"]["relative_error"],
                          "<=", 0.10))
    return out


def plot_allocation(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 3.2 * len(models)), squeeze=False)
    for ax, name in zip(axes[:, 0], models):
        alloc = results["models"][name]["allocation"]
        layers = list(alloc["lpvit"])
        ax.bar(range(len(layers)), [alloc["lpvit"][p] for p in layers], label="LPViT (measured curves)")
        if "lpvit_taylor" in alloc:
            ax.plot(range(len(layers)), [alloc["lpvit_taylor"][p] for p in layers], "r.", markersize=4,
                    label="LPViT (gradient curves only)")
        ax.plot(range(len(layers)), [alloc["uniform"][p] for p in layers], "k--", label="uniform")
        ax.set_title(f"{name}: fraction of blocks removed per layer at 50% overall")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([p.replace(".weight", "").replace("in_proj_weight", "qkv") for p in layers],
                           rotation=90, fontsize=5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from prunekit.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _measured_wins(results: Dict[str, Any]) -> Dict[str, List[str]]:
    """model -> sparsities where lpvit (measured curves) beats lpvit_taylor (gradient curves)."""
    out = {}
    for name, res in results["models"].items():
        sign = 1 if res["higher_is_better"] else -1
        by = {(r["sparsity"], r["method"]): r[res["metric"]] for r in res["rows"]}
        out[name] = [f"{s:.0%}" for s in SPARSITIES if (s, "lpvit") in by and
                     sign * (by[s, "lpvit"] - by[s, "lpvit_taylor"]) > 0]
    return out


def markdown(results: Dict[str, Any], command: str, figure: str) -> str:
    lines = [f"# LPViT block pruning ({results['mode']} run)", "",
             f"Generated by `{command}`; do not edit by hand. One CPU thread, shared machine: latency figures are "
             "medians and ratios. No fine-tuning anywhere on this page.", "",
             "## Quality at 30/50/70% of blocks removed", "",
             "*lpvit*: slope-matched allocation under a parameter budget (Fisher block scores, measured distortion "
             "curves: each layer pruned alone at a grid of amounts, mean squared change of the model output); "
             "*lpvit_taylor*: the same allocation on the gradient (empirical Fisher) curves alone; "
             "*uniform*: the same fraction in every layer with the same block scores; *magnitude*: per-layer "
             "unstructured magnitude pruning at the same fraction (finer-grained, gives no speed-up)."]
    for name, res in results["models"].items():
        metric = res["metric"]
        cols = [k for k in res["rows"][0] if k not in ("model", "sparsity", "method", "removed")]
        lines += ["", f"### {name} (block {res['block']}, {res['targets']} weights; dense: "
                      + ", ".join(f"{k} {fmt(v, 4)}" for k, v in res["dense"].items()) + ")", "",
                  f"Calibration: {res['calibration']} ({res['calibration_seconds']:.0f} s). Metric: {metric} "
                  f"({'higher' if res['higher_is_better'] else 'lower'} is better)."
                  + (" *cosine*: mean cosine of pruned to original mean-pooled embeddings of held-out WikiText-2 test "
                     "sentences; *cosine_calib*: the same on the calibration sentences." if "cosine_calib" in cols
                     else ""), ""]
        lines += markdown_table(["sparsity", "method", "weights removed", *cols],
                                [[f"{r['sparsity']:.0%}", r["method"], f"{r['removed']:.3f}",
                                  *[fmt(r[c], 4) for c in cols]] for r in res["rows"]])
    lines += ["", "### Per-layer allocation at 50% of blocks removed", ""]
    summary = []
    for name, res in results["models"].items():
        for method, per in res["allocation"].items():
            values = list(per.values())
            summary.append([name, method, f"{min(values):.2f}", f"{max(values):.2f}",
                            str(sum(v >= 0.9 for v in values)), str(len(values))])
    lines += markdown_table(["model", "allocation", "min removed", "max removed", "layers >= 90% removed",
                             "layers"], summary)
    lines += ["", f"![per-layer allocation]({figure})", ""]
    if results.get("kernel"):
        lines += ["## Block-sparse layer vs dense nn.Linear (256 tokens, 1 thread, balanced random masks)", ""]
        lines += markdown_table(["layer", "out x in", "block", "sparsity", "dense ms", "block-sparse ms", "speed-up"],
                                [[r["layer"], f"{r['out']}x{r['in']}", r["block"], f"{r['sparsity']:.0%}",
                                  fmt(r["dense_ms"], 3), fmt(r["sparse_ms"], 3), f"{r['speedup']:.2f}x"]
                                 for r in results["kernel"]])
    lb = results.get("latency_budget")
    if lb:
        lines += ["", "## Measured-latency budget on MiniLM (balanced layout)", "",
                  "A latency table of `BlockSparseLinear` (each layer shape timed at 8 block densities, dense when "
                  "faster) is the cost in the slope matching; the plan is converted and every target layer is "
                  "timed again, as converted, on 256 tokens.", ""]
        lines += markdown_table(["figure", "value"], [[k, fmt(v, 4)] for k, v in lb.items()])
    lines += ["", "## Targets", "", *markdown_target_table(results["targets"]), "",
              "## Notes", "",
              "- Fidelity: reconstructed from the reference code (methods.md section 5). The hardware cost falls "
              "as blocks are removed (the reference code's power proxy has the opposite sign); the gradient curves' "
              "second-order term is the empirical Fisher over calibration batches, computed blockwise and "
              "incrementally with cumulative sums; the point of each curve for a slope lambda is the minimum of "
              "distortion + lambda * cost (its tangent point), lambda found by bisection on log2(lambda).",
              "- Why *lpvit* uses measured curves: a second-order expansion at the dense weights can under-estimate "
              "the damage of removing most of a layer, and then the slope matching on gradient curves alone "
              "(*lpvit_taylor*) empties layers down to the floor (see the allocation table). Measuring each layer's "
              "output change at a few amounts (layers x grid forward passes) fixes the large-removal end of the "
              "curves, at the price of noise when few calibration inputs are measured (this run: "
              f"{results['settings'].get('minilm_measure')} MiniLM sentences, "
              f"{results['settings'].get('lm_measure_len')} SmolLM2 tokens). Measured curves beat gradient curves at: "
              + "; ".join(f"{name} {', '.join(wins) or 'none'}" for name, wins in _measured_wins(results).items())
              + ". The block scores (which blocks go inside a layer) are the same Fisher scores in every row.",
              "- Block pruning without fine-tuning is very lossy on these small pretrained models, most of all on "
              "SmolLM2's MLPs; `prunekit.blocks.recover` (masked fine-tune with logit distillation) is the optional "
              "recovery step and is not run here.",
              "- The measured latency cost is this package's own table of the block-sparse kernel "
              "(`prunekit.blocks.cost.LatencyTable`): `prunekit.planning.latency` times dense layers at reduced "
              "channel widths, which is not what a block-sparse layer runs.",
              "- `nn.MultiheadAttention`'s packed q/k/v weight (the CIFAR ViT) is block-pruned as a masked dense "
              "weight: its module cannot be swapped for `BlockSparseLinear`.",
              f"- Total benchmark time: {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small calibration and evaluation sets (~10 min)")
    parser.add_argument("--models", default="vit,minilm,smollm2", help="comma-separated subset of vit,minilm,smollm2")
    parser.add_argument("--no-latency", action="store_true", help="skip the kernel and latency-budget sections")
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", action="store_true", help="write docs/results_lpvit.md and its figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--from-json", default=None,
                        help="re-render the tables (and with --md the page) from a JSON report of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        return render(json.loads(Path(args.from_json).read_text()), args.md)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    start = time.perf_counter()
    s = SETTINGS["quick" if args.quick else "full"]
    results: Dict[str, Any] = {"mode": "quick" if args.quick else "full", "settings": s, "models": {}}
    argv_list = list(sys.argv[1:] if argv is None else argv)

    def save() -> Dict[str, Any]:
        """Write the report so far (after every section, so an interrupted run keeps what it measured)."""
        results["seconds"] = time.perf_counter() - start
        results["targets"] = targets_of(results)
        payload = report("lpvit", argv_list, start, [r for res in results["models"].values() for r in res["rows"]],
                         results["targets"], details=results)
        if args.json:
            write_json(args.json, payload)
        return payload

    keys = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [k for k in keys if k not in TASKS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TASKS)}")
    if not args.no_latency:
        results["kernel"] = kernel_latency(s["repeats"])
        save()
        if "minilm" not in keys:
            keys.append("minilm-latency-only")
    for key in keys:
        task = TASKS[key.replace("-latency-only", "")](s)
        if not key.endswith("-latency-only"):
            res = compare(task)
            res.update(metric=task.metric, higher_is_better=task.higher_is_better)
            results["models"][task.name] = res
            save()
        if key.startswith("minilm") and not args.no_latency:
            results["latency_budget"] = latency_budget(task, 0.5, s["repeats"])
            save()
        del task
    return render(save(), args.md)


def render(payload: Dict[str, Any], write_docs: bool) -> int:
    """Print the tables of a report; with `write_docs`, write docs/results_lpvit.md and its figure."""
    results = payload["details"]
    for name, res in results["models"].items():
        cols = [k for k in res["rows"][0] if k not in ("model", "sparsity", "method")]
        print_table(f"{name} (dense {res['dense']})", ["sparsity", "method", *cols],
                    [[r["sparsity"], r["method"], *[r[c] for c in cols]] for r in res["rows"]])
    if results.get("kernel"):
        print_table("block-sparse vs dense (256 tokens, 1 thread)",
                    ["layer", "out", "in", "block", "sparsity", "dense_ms", "sparse_ms", "speedup"],
                    [[r[k] for k in ("layer", "out", "in", "block", "sparsity", "dense_ms", "sparse_ms", "speedup")]
                     for r in results["kernel"]])
    print_targets(results["targets"])
    if write_docs:
        docs = repo_root() / "docs"
        figure = docs / "results_lpvit_allocation.png"
        if results["models"]:
            plot_allocation(results, figure)
        command = doc_command(payload["command"]).replace(" --md", "")
        atomic_write_text(docs / "results_lpvit.md", markdown(results, command, figure.name))
    return 0 if all(t["passed"] for t in results["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
