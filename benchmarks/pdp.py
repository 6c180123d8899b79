"""PDP (paper 4) against gradual magnitude pruning and one-shot magnitude + fine-tune, from pretrained weights.

    python benchmarks/pdp.py --quick --json out.json         # under 10 minutes on one CPU thread
    python benchmarks/pdp.py --json out.json --md            # full run; --md writes docs/results_pdp.md

Arms (every arm of a setting sees the same training images in the same order, for the same number of steps):
* pdp: warm-up, PDP soft masks on the linear ramp, hardening, fine-tuning with frozen masks;
* gmp: Zhu and Gupta's cubic schedule over the same steps, then the same fine-tuning;
* oneshot: magnitude pruning at step 0, then training with frozen masks for every step.
Models: CIFAR ResNet-20 / ResNet-56 (option A) at 90% unstructured, 2:4 and 50% channel sparsity; the CIFAR ViT at
50% unstructured and 2:4 (CIFAR-10 JPEG copy); the MiniLM sentence encoder at 50% unstructured and 2:4, recovered by
distilling its own mean-pooled sentence embeddings on WikiText-2 *valid* sentences and scored by cosine similarity
to the original's embeddings on WikiText-2 *test* sentences. Stored masks are reloaded from disk, replayed onto a
freshly built model and verified; channel arms are removed physically by the engine and verified.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (markdown_table, markdown_target_table, print_table, print_targets, report, target,  # noqa: E402
                     update_doc_section, write_json)

from prunekit.train.loop import TrainConfig, train  # noqa: E402
from prunekit.train.pdp import MaskSet, PDPConfig, finish, make_sparsifier  # noqa: E402
from prunekit.train.pdp.cost import semi_structured_speed, sparse_macs  # noqa: E402

METHODS = ("pdp", "gmp", "oneshot")


@dataclass
class Mode:
    """Sizes of one run: images / sentences per arm, epochs of the sparse phase and of fine-tuning."""

    cifar_train: int
    cifar_test: int
    sparse_epochs: float
    warmup_epochs: float
    ramp_epochs: float
    finetune_epochs: int
    text_train: int
    text_test: int
    text_epochs: int
    settings: tuple
    seeds: tuple = (0,)


QUICK = Mode(cifar_train=512, cifar_test=500, sparse_epochs=3, warmup_epochs=0.5, ramp_epochs=1.5,
             finetune_epochs=1, text_train=128, text_test=96, text_epochs=2,
             settings=(("cifar_resnet20", "unstructured", 0.9), ("cifar_resnet20", "2:4", 0.5),
                       ("cifar_resnet20", "channel", 0.5), ("cifar_resnet56", "unstructured", 0.9),
                       ("cifar_resnet56", "2:4", 0.5), ("cifar_vit", "unstructured", 0.5),
                       ("cifar_vit", "2:4", 0.5), ("minilm_l6", "unstructured", 0.5), ("minilm_l6", "2:4", 0.5)))
FULL = Mode(cifar_train=10000, cifar_test=10000, sparse_epochs=8, warmup_epochs=1, ramp_epochs=4,
            finetune_epochs=2, text_train=2048, text_test=512, text_epochs=4,
            settings=QUICK.settings + (("cifar_resnet56", "channel", 0.5),), seeds=(0, 1, 2))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ tasks


class CifarTask:
    """A pretrained CIFAR classifier, a seeded training subset (augmented) and the first test images."""

    def __init__(self, name: str, mode: Mode, seed: int):
        from prunekit.data import load
        from prunekit.models import info

        self.name, self.mode = name, mode
        meta = info(name)
        norm = (meta.mean, meta.std)
        full = load("cifar10", split="train", augment="standard", normalize=norm)
        index = np.sort(np.random.RandomState(seed).permutation(len(full))[:mode.cifar_train]).tolist()
        self.train_set = torch.utils.data.Subset(full, index)
        self.test_set = load("cifar10", split="test", normalize=norm, limit=mode.cifar_test)
        self.example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.vit = name == "cifar_vit"

    def build(self, pretrained: bool = True) -> nn.Module:
        from prunekit.models import build

        return build(self.name, pretrained=pretrained)

    def train_config(self, epochs: float, seed: int, lr_scale: float = 1.0) -> TrainConfig:
        if self.vit:
            return TrainConfig(epochs=int(epochs), lr=1e-4 * lr_scale, optimizer="adamw", weight_decay=0.0,
                               batch_size=64, seed=seed, progress=False)
        return TrainConfig(epochs=int(epochs), lr=0.01 * lr_scale, momentum=0.9, weight_decay=1e-4, batch_size=64,
                           seed=seed, progress=False)

    def fit(self, model, epochs, seed, hooks=(), lr_scale=1.0):
        return train(model, self.train_set, self.train_config(epochs, seed, lr_scale), hooks=hooks)

    def score(self, model) -> float:
        from prunekit.metrics.accuracy import evaluate_accuracy

        return float(evaluate_accuracy(model, self.test_set, batch_size=250, progress=False))

    exclude: tuple = ()
    metric = "top-1"


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder plus mean pooling: ``input_ids, attention_mask [B, T]`` -> embeddings [B, H]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, target=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)


def wikitext_sentences(split: str, n: int, skip: int = 0) -> List[str]:
    """Sentences (8 to 40 words) of WikiText-2 `split`, in order, headings left out."""
    from prunekit.data.text import wikitext2

    out = []
    for line in wikitext2(split).splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sent in line.split(" . "):
            words = sent.split()
            if 8 <= len(words) <= 40:
                out.append(" ".join(words).replace(" @-@ ", "-").replace(" @,@ ", ",") + ".")
    return out[skip:skip + n]


class MiniLMTask:
    """MiniLM-L6 recovered by distilling its own sentence embeddings; scored by cosine to the original's."""

    metric = "cosine"
    exclude = ("*pooler*",)
    vit = False

    def __init__(self, mode: Mode, seed: int):
        from prunekit.models.hf import load_tokenizer

        self.mode = mode
        tok = load_tokenizer("minilm_l6")
        teacher = self.build().eval()

        def encode(sentences):
            batch = tok(sentences, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
            with torch.no_grad():
                emb = torch.cat([teacher(batch["input_ids"][i:i + 64], batch["attention_mask"][i:i + 64])
                                 for i in range(0, len(sentences), 64)])
            return [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
                     "target": emb[i]} for i in range(len(sentences))]

        self.train_set = encode(wikitext_sentences("valid", mode.text_train))
        self.test_set = encode(wikitext_sentences("test", mode.text_test))
        self.example = {"input_ids": self.train_set[0]["input_ids"][None].repeat(2, 1),
                        "attention_mask": self.train_set[0]["attention_mask"][None].repeat(2, 1)}

    def build(self, pretrained: bool = True) -> nn.Module:
        from prunekit.models import build

        return SentenceEncoder(build("minilm_l6", pretrained=pretrained))

    @staticmethod
    def loss(outputs, batch):
        return (1.0 - F.cosine_similarity(outputs, batch["target"], dim=-1)).mean() * 10.0

    def fit(self, model, epochs, seed, hooks=(), lr_scale=1.0):
        cfg = TrainConfig(epochs=int(epochs), lr=5e-5 * lr_scale, optimizer="adamw", weight_decay=0.0,
                          batch_size=16, seed=seed, progress=False)
        return train(model, self.train_set, cfg, loss_fn=self.loss, hooks=hooks)

    @torch.no_grad()
    def score(self, model) -> float:
        model.eval()
        batch = torch.utils.data.default_collate(self.test_set)
        emb = model(batch["input_ids"], batch["attention_mask"])
        return float(F.cosine_similarity(emb, batch["target"], dim=-1).mean())


# ------------------------------------------------------------------------------------------------ one arm


def layer_target_error(sp, masks: MaskSet) -> int:
    """Largest |pruned - target| over the layers, in weights (the target: round(ratio * numel), or 1 - N/M)."""
    worst = 0
    for t, r in zip(sp.targets, sp.layer_ratios(None)):
        pruned = int((~masks.masks[t.name]).sum())
        worst = max(worst, abs(pruned - round(r * t.numel)))
    return worst


def run_arm(task, mode: Mode, model_name: str, pattern: str, sparsity: float, method: str, seed: int,
            tau: float) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = task.build()
    text = isinstance(task, MiniLMTask)
    epochs = mode.text_epochs if text else mode.sparse_epochs
    warm, ramp_len = (0.5, 1.0) if text else (mode.warmup_epochs, mode.ramp_epochs)
    cfg = PDPConfig(pattern=pattern, sparsity=sparsity, warmup_epochs=warm, ramp_epochs=ramp_len, temperature=tau,
                    exclude=task.exclude)
    sp = make_sparsifier(method, cfg, inputs=task.example)
    t0 = time.perf_counter()
    task.fit(model, epochs, seed, hooks=[sp])
    model.cpu()  # the loop leaves the model on its device (a GPU when there is one); hardening and scoring on CPU
    row: Dict[str, Any] = {"model": model_name, "pattern": pattern, "sparsity": cfg.final_sparsity,
                           "method": method, "seed": seed}
    if hasattr(sp, "summary"):
        row.update({k: v for k, v in sp.summary().items() if k != "skipped"})
    if getattr(sp, "history", None):  # (step, soft sparsity, undecided share), about 25 points
        row["history"] = sp.history[::max(1, len(sp.history) // 25)] + sp.history[-1:]
    if cfg.kind == "channel":
        from prunekit.metrics.macs import count_macs

        params_before = sum(p.numel() for p in model.parameters())
        dense_macs = count_macs(task.build().eval(), _one(task.example))
        model, plan = sp.harden(model, model_spec={"registry": model_name})
        row.update(dense_macs=dense_macs, sparse_macs=count_macs(model.eval(), _one(task.example)),
                   params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
                   physical_verified=bool(model.prunekit_verification.passed),
                   removed_channels=sum(len(v) for v in plan.removed.values()))
        task.fit(model, mode.finetune_epochs, seed + 100, lr_scale=0.5)
        model.cpu()
        with tempfile.TemporaryDirectory() as tmp:
            import prunekit

            prunekit.save(model.eval(), plan, tmp)
            again = prunekit.load(tmp, model=task.build(pretrained=False))
            x = task.example
            row["reload_equal"] = bool(torch.allclose(again(x), model(x), atol=1e-5))
    else:
        masks = sp.harden(model)
        task.fit(model, mode.finetune_epochs, seed + 100, lr_scale=0.5)
        finish(model.cpu())
        row["layer_target_error"] = layer_target_error(sp, masks)
        row["hard_sparsity"] = masks.sparsity()
        row["dense_layers"] = len(sp.skipped)
        with tempfile.TemporaryDirectory() as tmp:
            masks.save(tmp)
            row["mask_bytes"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
            loaded = MaskSet.load(tmp)
        fresh = task.build(pretrained=False)
        fresh.load_state_dict(model.state_dict())
        report_ = loaded.verify(fresh)
        row.update(masks_verified=report_["passed"], nm_violations=report_["nm_violations"],
                   nm_entries=report_["nm_entries"])
        cost = sparse_macs(model.eval(), _one(task.example), loaded)
        row.update(dense_macs=cost["dense_macs"], sparse_macs=cost["sparse_macs"])
        if cfg.kind == "nm" and (cfg.n, cfg.m) == (2, 4):
            speed = semi_structured_speed(loaded, model)
            row["semi_structured"] = speed if speed["available"] else speed["reason"]
    row["score"] = task.score(model)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _one(example):
    return {k: v[:1] for k, v in example.items()} if isinstance(example, dict) else example[:1]


# ------------------------------------------------------------------------------------------------ report


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (model, pattern, method): mean score over seeds and the mask facts."""
    out = []
    keys = []
    for r in rows:
        key = (r["model"], r["pattern"], r["method"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        sel = [r for r in rows if (r["model"], r["pattern"], r["method"]) == key]
        soft = [r for r in sel if r["method"] == "pdp"]  # mask dynamics exist only for the soft masks
        out.append({"model": key[0], "pattern": key[1], "method": key[2], "seeds": len(sel),
                    "score": mean([r["score"] for r in sel]),
                    "score_min": min(r["score"] for r in sel), "score_max": max(r["score"] for r in sel),
                    "recovery_share": mean([r.get("recovery_share") for r in soft]),
                    "steps_to_binary": mean([r.get("steps_to_binary") for r in soft]),
                    "undecided_at_ramp_end": mean([r.get("undecided_at_ramp_end") for r in soft]),
                    "final_undecided": mean([r.get("final_undecided") for r in soft]),
                    "macs_kept": mean([r["sparse_macs"] / r["dense_macs"] for r in sel if r.get("dense_macs")]),
                    "params_kept": mean([r["params_after"] / r["params_before"] for r in sel
                                         if r.get("params_before")])})
    return out


def make_targets(rows, summary) -> List[Dict[str, Any]]:
    def score(model, pattern, method):
        return next((s["score"] for s in summary if (s["model"], s["pattern"], s["method"]) ==
                     (model, pattern, method)), None)

    out = []
    for pattern, label in (("unstructured", "90% unstructured"), ("2:4", "2:4")):
        p, g = score("cifar_resnet56", pattern, "pdp"), score("cifar_resnet56", pattern, "gmp")
        out.append(target(f"ResNet-56 {label}: PDP - GMP top-1 (points)", None if p is None or g is None
                          else round(100 * (p - g), 2), ">=", 0.0))
    element = [r for r in rows if "layer_target_error" in r]
    out.append(target("hard mask sparsity vs target, worst layer (weights)",
                      max((r["layer_target_error"] for r in element), default=None), "<=", 1))
    nm = [r for r in rows if r["pattern"] not in ("unstructured", "channel")]
    out.append(target("stored N:M masks violating their pattern (groups)",
                      sum(r["nm_violations"] for r in nm) if nm else None, "<=", 0))
    out.append(target("stored masks that fail verification after reload + replay",
                      sum(not r["masks_verified"] for r in element) if element else None, "<=", 0))
    ch = [r for r in rows if r["pattern"] == "channel"]
    out.append(target("channel arms physically pruned and verified (share)",
                      mean([float(r["physical_verified"] and r["reload_equal"] and r["params_after"] <
                                  r["params_before"]) for r in ch]) if ch else None, ">=", 1.0))
    return out


def markdown(payload: Dict[str, Any]) -> str:
    mode = {k: v for k, v in payload["mode"].items() if k != "settings"}
    cpu = f"{payload['cpu_seconds']:.0f} s of CPU, " if payload.get("cpu_seconds") else ""
    early = " Stopped early: the rows measured before the stop." if payload.get("stopped_early") else ""
    lines = [f"Command: `{payload['doc_command']}`{early} ({payload['seconds']:.0f} s wall, {cpu}"
             f"{payload['environment'].get('torch_threads', 1)} torch thread(s), shared machine). Mode: "
             f"{payload['mode_name']}; sizes: {mode}.", "",
             "Dense (pretrained) scores on the same test items: " +
             ", ".join(f"{k} {v:.4f}" for k, v in payload["dense"].items()) + ".", "",
             "Score: top-1 accuracy (CIFAR-10 JPEG test images) or mean cosine similarity to the original "
             "encoder's sentence embeddings (MiniLM, WikiText-2 test sentences). recovery: share of weights that "
             "crossed the threshold upwards after warm-up (channels for the channel pattern). undecided: share of "
             "masks in (0.01, 0.99) at the end of the ramp and at the last step of the sparse phase. binary "
             "after: steps after the end of the ramp until under 1% undecided (- : not within the run). MACs "
             "kept: kept-weight MACs / dense MACs (2:4 and unstructured need sparse kernels to turn this into "
             "speed; on this CPU only MACs are reported).", ""]
    cols = ["model", "pattern", "method", "seeds", "score", "min", "max", "recovery", "undecided at ramp end",
            "undecided at end", "binary after", "MACs kept", "params kept"]
    lines += markdown_table(cols, [[s["model"], s["pattern"], s["method"], s["seeds"], s["score"], s["score_min"],
                                    s["score_max"], s["recovery_share"], s.get("undecided_at_ramp_end"),
                                    s["final_undecided"], s["steps_to_binary"], s["macs_kept"], s["params_kept"]]
                                   for s in payload["summary"]])
    measured = [t for t in payload["targets"] if t["value"] is not None]
    lines += ["", "Targets:", ""] + markdown_target_table(measured, lambda v: f"{v:.4g}")
    missing = [t["name"] for t in payload["targets"] if t["value"] is None]
    if missing:
        lines += ["", "Not measured by this command (other models or patterns): " + "; ".join(missing) + "."]
    speed = payload.get("semi_structured")
    if speed is not None:
        lines += ["", f"2:4 semi-structured kernels: {speed}."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, one seed (under 10 min on one thread)")
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", action="store_true", help="write docs/results_pdp.md")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--temperature", type=float, default=None,
                        help="PDP's dimensionless temperature (default: 0.1, 0.005 for channels)")
    parser.add_argument("--only", default=None, help="comma-separated model names to run (default: all)")
    parser.add_argument("--patterns", default=None, help="comma-separated patterns to run (default: all)")
    parser.add_argument("--train-images", type=int, default=None, help="override the CIFAR images per arm")
    parser.add_argument("--epochs", type=float, nargs=3, default=None, metavar=("SPARSE", "WARMUP", "RAMP"),
                        help="override the CIFAR sparse-phase, warm-up and ramp epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--test-images", type=int, default=None, help="override the CIFAR test images")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only write docs/results_pdp.md from the JSON report of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        import json

        write_docs(completed(json.loads(Path(args.render).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mode = QUICK if args.quick else FULL
    if args.train_images:
        mode = dataclasses.replace(mode, cifar_train=args.train_images)
    if args.epochs:
        mode = dataclasses.replace(mode, sparse_epochs=args.epochs[0], warmup_epochs=args.epochs[1],
                                   ramp_epochs=args.epochs[2])
    if args.seeds:
        mode = dataclasses.replace(mode, seeds=tuple(args.seeds))
    if args.test_images:
        mode = dataclasses.replace(mode, cifar_test=args.test_images)
    custom = bool(args.train_images or args.epochs or args.seeds or args.test_images)
    settings = [s for s in mode.settings if (args.only is None or s[0] in args.only.split(","))
                and (args.patterns is None or s[1] in args.patterns.split(","))]
    rows: List[Dict[str, Any]] = []
    dense: Dict[str, float] = {}
    tasks: Dict[tuple, Any] = {}
    for seed in mode.seeds:
        for model_name, pattern, sparsity in settings:
            key = (model_name, seed)
            if key not in tasks:
                tasks = {k: v for k, v in tasks.items() if k[0] == model_name}  # keep memory modest
                tasks[key] = MiniLMTask(mode, seed) if model_name == "minilm_l6" else CifarTask(model_name, mode,
                                                                                                seed)
                if model_name not in dense:
                    dense[model_name] = tasks[key].score(tasks[key].build())
                    log(f"{model_name}: dense {tasks[key].metric} {dense[model_name]:.4f}")
            for method in METHODS:
                row = run_arm(tasks[key], mode, model_name, pattern, sparsity, method, seed, args.temperature)
                rows.append(row)
                if args.json:  # partial report after every arm: a long run that is stopped keeps what it measured
                    write_json(args.json, {"benchmark": "pdp", "complete": False, "rows": rows, "dense": dense,
                                           "command": " ".join(["python", "benchmarks/pdp.py", *sys.argv[1:]]),
                                           "mode": mode.__dict__, "seconds": round(time.perf_counter() - start, 1),
                                           "temperature": args.temperature})
                log(f"{model_name} {pattern} {method} seed {seed}: score {row['score']:.4f} "
                    f"({row['seconds']} s) undecided {row.get('final_undecided')} "
                    f"recovery {row.get('recovery_share')}")
    summary = summarise(rows)
    print_table("PDP vs GMP vs one-shot", ["model", "pattern", "method", "score", "recovery", "undecided",
                                          "binary after", "MACs kept", "params kept"],
                [[s["model"], s["pattern"], s["method"], s["score"], s["recovery_share"], s["final_undecided"],
                  s["steps_to_binary"], s["macs_kept"], s["params_kept"]] for s in summary])
    targets = make_targets(rows, summary)
    print_targets(targets)
    speed = next((r["semi_structured"] for r in rows if "semi_structured" in r), None)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    from _common import doc_command

    payload = report("pdp", argv_used, start, rows, targets, summary=summary, dense=dense,
                     mode_name=("quick" if args.quick else "full") + ("-custom" if custom else ""),
                     mode=mode.__dict__, semi_structured=speed,
                     temperature=args.temperature)
    payload["doc_command"] = doc_command(payload["command"])
    payload["complete"] = True
    payload["cpu_seconds"] = round(time.process_time(), 1)
    if args.json:
        write_json(args.json, payload)
    if args.md:
        write_docs(payload)
    return 0


def completed(payload: Dict[str, Any]) -> Dict[str, Any]:
    """A report as the docs need it: the summary and targets recomputed from the rows (for a run that was stopped
    early, from its partial JSON, marked as such)."""
    from _common import doc_command, environment

    if payload.get("complete", True) and "summary" in payload:  # tables from the rows with this script's rules
        summary = summarise(payload["rows"])
        return {**payload, "summary": summary, "targets": make_targets(payload["rows"], summary)}
    if "command" not in payload:
        raise SystemExit("pdp --render: the partial report has no 'command'; add the command that made it")
    rows = payload["rows"]
    summary = summarise(rows)
    mode = payload.get("mode") or (QUICK if "--quick" in payload["command"] else FULL).__dict__
    return {**payload, "summary": summary, "targets": make_targets(rows, summary), "mode": mode,
            "mode_name": "quick" if "--quick" in payload["command"] else "full",
            "environment": payload.get("environment") or environment(), "dense": payload.get("dense", {}),
            "seconds": payload.get("seconds") or sum(r["seconds"] for r in rows),
            "doc_command": doc_command(payload["command"]), "stopped_early": True}


def write_docs(payload: Dict[str, Any]) -> Path:
    """Write (or replace) this run's section of docs/results_pdp.md; the section is named by the mode and by the
    models and patterns the command selected."""
    words = payload["command"].split()
    picked = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--only", "--patterns")]
    sized = any(w in words for w in ("--train-images", "--epochs", "--seeds", "--test-images"))
    payload["mode_name"] = ("quick" if "--quick" in words else "full") + ("-custom" if sized else "")
    key = "-".join(["pdp", payload["mode_name"], *picked]).replace(",", "-").replace(":", "to")
    title = f"PDP vs gradual magnitude pruning vs one-shot ({payload['mode_name']}{'; ' if picked else ''}" \
            f"{' '.join(picked)})"
    root = Path(__file__).resolve().parent.parent
    return update_doc_section(root / "docs" / "results_pdp.md", key, title, markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
