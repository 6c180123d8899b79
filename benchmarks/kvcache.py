"""KV-cache compression on SmolLM2-135M (real weights): ThinK and calibrated CSKV against the full cache.

    python benchmarks/kvcache.py --json out.json            # full run (2k/4k retrieval, decode at 1k/4k/8k)
    python benchmarks/kvcache.py --quick --json out.json    # smoke run on a 2-core CPU
    python benchmarks/kvcache.py --quick --md               # also regenerate docs/results_kvcache_quick.md

Measures, on real text (WikiText-2 test and valid, Tiny Shakespeare):
* memory: everything the compression keeps alive (`prunekit.kvcache.memory`): bytes per token, bytes per sequence,
  fixed bytes (CSKV's factors), the context length where the compressed cache breaks even at batch 1 and 8, as a
  fraction of an fp32 and of an fp16 full cache;
* quality: perplexity of segments scored against a compressed cache of their preceding context;
* retrieval: several named keys per prompt at 10 depths in several haystacks, each asked for after the compressed
  context (`prunekit.kvcache.evaluate.retrieval_accuracy`), compared prompt by prompt with the full cache;
* decode speed: greedy steps after the same prefill, the presses' steps interleaved, median ms per token.

CSKV is calibrated through the one call `prunekit.kvcache.calibrate` (defaults) on WikiText-2 *valid*; factors are
cached under ``prunekit.paths.cache_root()/kvcache`` (``--retrain`` ignores the cache). Ablation rows record which
change recovers what: ThinK with the paper's recent window of 32 (``think40_recent32``), CSKV with the paper's
calibration (uniform ranks, uniform token weights, no sink: ``cskv80_paper``) and with an uncalibrated SVD.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (THREADS_HELP, markdown_table, markdown_target_table, print_targets, report,  # noqa: E402
                     target, write_json)

from prunekit.errors import ConfigError  # noqa: E402
from prunekit.io import atomic_write_text  # noqa: E402
from prunekit.kvcache import calibrate, cskv_train, evaluate, memory  # noqa: E402
from prunekit.kvcache.cskv import CSKVPress  # noqa: E402
from prunekit.kvcache.think import ThinKPress  # noqa: E402
from prunekit.paths import cache_root, repo_root  # noqa: E402

SETTINGS = {
    "quick": dict(memory_contexts=(512, 1024, 2048), speed_contexts=(1024, 2048), decode_tokens=8, ppl_context=512,
                  ppl_segment=128, ppl_windows=6, retrieval_lengths=(1024,), prompts=6, needles=3, calib_seq=32,
                  retrieval_methods=("full", "think40", "think40_recent32", "cskv80", "cskv80_paper",
                                     "cskv80_exact", "cskv80_exact_err")),
    "full": dict(memory_contexts=(1024, 2048, 4096), speed_contexts=(1024, 4096, 8160), decode_tokens=12,
                 ppl_context=1024, ppl_segment=128, ppl_windows=12, retrieval_lengths=(2048, 4096), prompts=12,
                 needles=3, calib_seq=32,
                 retrieval_methods=("full", "think40", "cskv80", "cskv80_exact", "cskv80_exact_err", "think40_recent32",
                                    "cskv80_paper")),
}
EXACT_RATIO = 0.02  # cskv80_exact: 2% of the prompt's tokens kept exact (chosen by the last 32 queries' attention)
MEMORY_SET = ("full", "think40", "think40_recent32", "think50", "cskv80", "cskv80_exact", "cskv80_4bit")
SPEED_SET = ("full", "think40", "cskv80")
PPL_SET = ("full", "think40", "think40_recent32", "think50", "kvpress_think40", "cskv80", "cskv80_exact",
           "cskv80_exact_err",
           "cskv80_paper", "cskv80_svd")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def calibrated(model, tokenizer, name: str, calib_seq: int, retrain: bool, **settings):
    """A CSKV press from `prunekit.kvcache.calibrate`, reloaded from the cache folder when present."""
    key = "_".join(f"{k}{v}" for k, v in sorted(settings.items()))
    folder = cache_root() / "kvcache" / f"calibrate_smollm2_{name}_c{calib_seq}_{key}"
    if (folder / cskv_train.META_FILE).is_file() and not retrain:
        return CSKVPress.from_pretrained(str(folder)), 0.0, True
    t0 = time.perf_counter()
    press = calibrate(model, tokenizer, n_seq=calib_seq, save_to=folder, **settings)
    return press, time.perf_counter() - t0, False


def refusal_works(model) -> bool:
    try:
        with CSKVPress()(model):
            return False
    except ConfigError as exc:
        return "prunekit kv calibrate" in str(exc)


PARTS = ("memory", "speed", "ppl", "retrieval")
REPORT_KEYS = ("benchmark", "command", "environment", "rows", "targets", "all_passed", "partial")  # `report`'s own


def run(args) -> dict:
    """Measure the `--parts` asked for (all by default), restricted to `--methods` when given; `finish` derives
    ratios and targets (also from several partial JSON reports merged by ``--render``)."""
    import transformers

    from prunekit.models.hf import load_tokenizer, smollm2_135m

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    s = SETTINGS["quick" if args.quick else "full"]
    start = time.perf_counter()
    model, tokenizer = smollm2_135m(), load_tokenizer("smollm2_135m")
    test_ids = evaluate.wikitext_ids(tokenizer, "test", max_chars=600_000)
    log(f"model and {test_ids.numel()} WikiText-2 test tokens loaded")

    refused = refusal_works(model)
    parts = set(args.parts.split(",")) if args.parts else set(PARTS)
    wanted = (lambda n: True) if not args.methods else (lambda n: n in args.methods.split(","))
    calib = {}
    for name, settings in {"cskv80": dict(density=0.2),
                           "cskv80_paper": dict(density=0.2, allocation="uniform", weighting="uniform",
                                                sink=0)}.items():
        if name != "cskv80" and not (wanted(name) and parts & {"ppl", "retrieval"}):
            continue  # only the ppl and retrieval ablations use the paper's calibration
        press, seconds, loaded = calibrated(model, tokenizer, name, s["calib_seq"], args.retrain, **settings)
        calib[name] = {"press": press, "seconds": seconds, "loaded": loaded}
        log(f"{name}: factors {'loaded' if loaded else f'calibrated in {seconds:.0f} s'}")
    presses = {
        "full": None,
        "think40": ThinKPress(key_ratio=0.4),
        "think40_recent32": ThinKPress(key_ratio=0.4, recent_size=32),
        "think50": ThinKPress(key_ratio=0.5),
        "cskv80": calib["cskv80"]["press"],
        "cskv80_svd": CSKVPress(k_density=0.2, v_density=0.2, init="svd"),
        "cskv80_exact": CSKVPress(factors=calib["cskv80"]["press"].factors, exact_ratio=EXACT_RATIO),
        "cskv80_exact_err": CSKVPress(factors=calib["cskv80"]["press"].factors, exact_ratio=EXACT_RATIO,
                                      exact_by="error"),
        "cskv80_4bit": CSKVPress(factors=calib["cskv80"]["press"].factors, bits=4),
    }
    if "cskv80_paper" in calib:
        presses["cskv80_paper"] = calib["cskv80_paper"]["press"]
    try:
        import kvpress

        presses["kvpress_think40"] = kvpress.ThinKPress(key_channel_compression_ratio=0.4)
    except ImportError:
        log("kvpress is not installed: its ThinKPress is skipped")

    mem = {}
    for name in [n for n in MEMORY_SET if "memory" in parts and wanted(n)]:
        bytes_at = {}
        for ctx in s["memory_contexts"]:
            cache = evaluate.new_cache(model)
            with evaluate.press_context(presses[name], model), torch.no_grad():
                model.model(input_ids=test_ids[None, :ctx], past_key_values=cache, use_cache=True)
            bytes_at[ctx] = {"fp32": memory.cache_nbytes_as(cache), "fp16": memory.cache_nbytes_as(cache, 2)}
        mem[name] = {"bytes": bytes_at,
                     "fixed": {"fp32": memory.press_fixed_nbytes(presses[name]),
                               "fp16": memory.press_fixed_nbytes(presses[name], 2)}}
        log(f"memory {name}: {bytes_at}")

    speed = {}
    for ctx in s["speed_contexts"] if "speed" in parts else ():
        speed[ctx] = evaluate.decode_speed(model, {n: presses[n] for n in SPEED_SET}, test_ids[None, :ctx],
                                           s["decode_tokens"])
        log(f"decode ms/token @ {ctx}: {speed[ctx]}")

    ppl = {}
    for name in [n for n in PPL_SET if n in presses and "ppl" in parts and wanted(n)]:
        ppl[name] = evaluate.compressed_perplexity(model, presses[name], test_ids, s["ppl_context"], s["ppl_segment"],
                                                   s["ppl_windows"])
        log(f"ppl {name}: {ppl[name]['ppl']:.3f}")

    retrieval = {}
    for length in s["retrieval_lengths"] if "retrieval" in parts else ():
        prompts = evaluate.retrieval_prompts(tokenizer, length, s["prompts"], s["needles"])
        for name in [n for n in s["retrieval_methods"] if wanted(n)]:
            result = evaluate.retrieval_accuracy(model, tokenizer, presses[name], prompts)
            result.pop("answers")
            retrieval.setdefault(length, {})[name] = result
            log(f"retrieval @ {length} {name}: {result['found']}/{result['needles']} found")

    return {"mode": "quick" if args.quick else "full", "settings": s, "memory": mem, "decode_ms": speed, "ppl": ppl,
            "retrieval": retrieval, "torch_threads": args.threads, "refused": refused,
            "calibration_seconds": {n: c["seconds"] for n, c in calib.items()},
            "calibration_loaded": {n: c["loaded"] for n, c in calib.items()},
            "cskv80_ranks": {"k": calib["cskv80"]["press"].factors.k_ranks,
                             "v": calib["cskv80"]["press"].factors.v_ranks},
            "seconds": time.perf_counter() - start}


def merge(results: list) -> dict:
    """Partial reports of the same mode (from ``--parts`` / ``--methods`` runs) as one; seconds add up."""
    if len({r["mode"] for r in results}) != 1:
        raise ConfigError("kvcache benchmark --render: the reports mix quick and full runs")
    out = {k: v for k, v in results[0].items() if k not in REPORT_KEYS}
    out.update(memory={}, decode_ms={}, ppl={}, retrieval={}, seconds=0.0)
    out["settings"] = dict(out["settings"])
    for r in results:
        for part, key in (("memory", "memory_contexts"), ("decode_ms", "speed_contexts")):
            if r[part]:  # the contexts a part was measured at are those of the report that measured it
                out["settings"][key] = r["settings"][key]
        out["memory"].update(r["memory"])
        out["ppl"].update(r["ppl"])
        for ctx, per in r["decode_ms"].items():
            out["decode_ms"].setdefault(ctx, {}).update(per)
        for length, per in r["retrieval"].items():
            out["retrieval"].setdefault(length, {}).update(per)
        out["seconds"] += r["seconds"]
        out["merged_from"] = len(results)
        out["refused"] = out.get("refused", True) and r.get("refused", True)
    return out


def finish(r: dict) -> dict:
    """Derived figures (memory profiles, ratios to the full cache, prompts below it) and the targets."""
    s = r["settings"]
    mem, ppl, retrieval = r["memory"], r["ppl"], r["retrieval"]
    big = max(s["memory_contexts"])
    for name, m in mem.items():
        for dtype in ("fp32", "fp16"):
            prof = memory.fit_profile({c: v[dtype] for c, v in m["bytes"].items()},
                                      {c: v[dtype] for c, v in mem["full"]["bytes"].items()}, m["fixed"][dtype])
            m[dtype] = dict(prof.as_dict(), ratio_at_big=(m["fixed"][dtype] + m["bytes"][big][dtype]) /
                            mem["full"]["bytes"][big][dtype])
    for name in ppl:
        ppl[name]["ratio"] = ppl[name]["ppl"] / ppl["full"]["ppl"]
    for length, per in retrieval.items():
        for name, result in per.items():
            below = evaluate.prompts_below(result, per["full"])
            result["prompts_below_per12"] = below * 12 / s["prompts"]
    r["targets"] = build_targets(s, mem, ppl, retrieval, r["decode_ms"], r["refused"])
    return r


def build_targets(s, mem, ppl, retrieval, speed, refused) -> list:
    big, fast = max(s["memory_contexts"]), max(c for c in s["speed_contexts"] if c <= 4096)
    lengths = s["retrieval_lengths"]
    out = [target(f"think40_bytes_vs_full_fp32_{big}", mem["think40"]["fp32"]["ratio_at_big"], "<=", 0.81),
           target("think40_ppl_ratio", ppl["think40"]["ratio"], "<=", 1.02)]
    for length in lengths:
        out.append(target(f"think40_retrieval_{length}_prompts_below_full_per12",
                          retrieval[length]["think40"]["prompts_below_per12"], "<=", 1.0))
    out.append(target(f"think40_decode_speed_vs_full_{fast}", speed[fast]["full"] / speed[fast]["think40"], ">=",
                      1.0))
    out += [target(f"cskv80_bytes_with_factors_vs_full_fp32_{big}", mem["cskv80"]["fp32"]["ratio_at_big"], "<=",
                   0.30),
            target("cskv80_ppl_ratio", ppl["cskv80"]["ratio"], "<=", 1.10),
            target(f"cskv80_retrieval_{lengths[0]}_prompts_below_full_per12",
                   retrieval[lengths[0]]["cskv80"]["prompts_below_per12"], "<=", 2.0),
            target(f"cskv80_decode_speed_vs_full_{fast}", speed[fast]["full"] / speed[fast]["cskv80"], ">=", 0.7),
            target("cskv_press_without_factors_refused", float(refused), ">=", 1.0)]
    return out


def merged_note(r: dict) -> str:
    """How a merged report was measured (empty for one run)."""
    n = r.get("merged_from", 1)
    return f" (measured in {n} `--parts` processes, merged with `--render`)" if n > 1 else ""


def markdown(r: dict) -> str:
    s = r["settings"]
    big = max(s["memory_contexts"])
    mb = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
    out = [f"# KV-cache compression on SmolLM2-135M ({r['mode']} run)", "",
           "Generated by `python benchmarks/kvcache.py" + (" --quick" if r["mode"] == "quick" else "") +
           " --md`" + merged_note(r) + "; do not edit by hand. The model runs in float32, so the measured full "
           "cache is fp32 (30 layers x 3 KV heads x 64 channels, K and V); *fp16* columns count the same tensors "
           "as an fp16 model would store them (float32 tensors at 2 bytes; quantised codes, int16 channel indices "
           "and fp16 scales as they are).",
           "", "## Memory: everything kept alive", "",
           f"Bytes after prefilling WikiText-2 test text at batch 1 (MB); *fixed* is what the press holds whatever the "
           f"batch or length (CSKV's factors). *of full* counts fixed bytes too, at {big} tokens. Break-even: the "
           f"context length from which the compressed cache, fixed bytes included, is smaller than the full one, at "
           f"batch 1 and 8 (fitted line through the measured sizes, `prunekit.kvcache.memory`).", ""]
    rows = []
    for name, m in r["memory"].items():
        rows.append([name] + [mb(m["bytes"][c]["fp32"]) for c in s["memory_contexts"]] +
                    [mb(m["fixed"]["fp32"]), f"{m['fp32']['per_token']:.0f}", f"{m['fp32']['ratio_at_big']:.1%}",
                     f"{m['fp16']['ratio_at_big']:.1%}",
                     f"{m['fp32']['break_even_b1']:.0f} / {m['fp32']['break_even_b8']:.0f}",
                     f"{m['fp16']['break_even_b1']:.0f} / {m['fp16']['break_even_b8']:.0f}"])
    out += markdown_table(["method"] + [f"{c} tok" for c in s["memory_contexts"]] +
                          ["fixed", "bytes/token", f"of full fp32 @ {big}", f"of full fp16 @ {big}",
                           "break-even fp32 B=1 / B=8", "break-even fp16 B=1 / B=8"], rows)
    out += ["", "## Decode speed (ms per token, median of interleaved greedy steps)", ""]
    ctxs = list(r["decode_ms"])
    names = list(next(iter(r["decode_ms"].values())))
    out += markdown_table(["method"] + [f"{c} tok" for c in ctxs] + [f"speed vs full @ {c}" for c in ctxs],
                          [[n] + [f"{r['decode_ms'][c][n]:.1f}" for c in ctxs] +
                           [f"{r['decode_ms'][c]['full'] / r['decode_ms'][c][n]:.2f}x" for c in ctxs] for n in names])
    out += ["", f"## Perplexity (WikiText-2 test; {s['ppl_windows']} windows, each {s['ppl_segment']} tokens scored "
                f"against a compressed cache of the preceding {s['ppl_context']})", ""]
    out += markdown_table(["method", "ppl", "ratio to full"],
                          [[n, f"{v['ppl']:.3f}", f"{v['ratio']:.4f}"] for n, v in r["ppl"].items()])
    out += ["", f"## Retrieval ({s['prompts']} prompts x {s['needles']} named keys, needles at 10 depths, haystacks "
                "cycling WikiText-2 test / Tiny Shakespeare / WikiText-2 valid; each key asked for after the "
                "compressed context; exact match)", ""]
    for length, per in r["retrieval"].items():
        depths = sorted({float(d) for v in per.values() for d in v["per_depth"]})
        out += [f"**{length} tokens**", ""]
        out += markdown_table(["method", "keys found", "prompts fully solved", "prompts below full (per 12)"] +
                              [f"d{d:.2f}" for d in depths],
                              [[n, f"{v['found']}/{v['needles']}", f"{v['prompts_solved']}/{len(v['per_prompt'])}",
                                f"{v['prompts_below_per12']:.2f}"] +
                               [f"{dict((float(k), x) for k, x in v['per_depth'].items()).get(d, float('nan')):.2f}"
                                for d in depths] for n, v in per.items()])
        out.append("")
    out += ["## Which change recovered what", "", *ablation_lines(r), "",
            "## Targets", "", *markdown_target_table(r["targets"]), "", "## Notes", "",
            "- think40 / think50: ThinK with 40% / 50% of key channels removed from every prompt token (32 "
            "observation queries; no recent window by default). think40_recent32 is the paper's layout (the 32 most "
            "recent prompt tokens unpruned): the ablation for the default's change. kvpress_think40 zeroes channels "
            "(no memory saved) and should match think40 in perplexity.",
            "- cskv80: `prunekit.kvcache.calibrate(model, tokenizer, density=0.2)` with its defaults (ASVD, layer-wise "
            "ALS, ranks spread over layers and K/V with key errors weighted 3x, calibration tokens weighted by the "
            "attention they receive as latents, first 4 tokens kept exact). cskv80_paper: the paper's calibration "
            "(the same rank everywhere, uniform token weights, no sink), same memory. cskv80_svd: `init='svd'`, "
            "uncalibrated. cskv80_4bit: 4-bit latents with the float-calibrated factors (memory only)." +
            (f" cskv80_exact: cskv80 plus {EXACT_RATIO:.0%} of the prompt's tokens kept as original keys and values, "
             "those the last 32 prompt queries attend to most (`CSKVPress(exact_ratio=...)`); cskv80_exact_err "
             "keeps as many, chosen as those whose keys and values the low rank reconstructs worst "
             "(`exact_by='error'`, query-free; same bytes as cskv80_exact)."
             if "cskv80_exact" in r["memory"] else ""),
            f"- CSKV ranks per layer (K): {r['cskv80_ranks']['k']}; (V): {r['cskv80_ranks']['v']}.",
            "- Retrieval: the question is not compressed (as in kvpress's pipeline); answers run outside the press "
            "context through transformers' own attention over the compressed cache "
            "(`CompressedLayer.materialize`), and the cache is cropped back between questions.",
            f"- Decode speed: {r['torch_threads']} torch thread(s), on a CPU shared with other jobs: the presses' "
            "steps are interleaved so load hits them alike, but absolute figures are indicative.",
            f"- Total benchmark time: {r['seconds']:.0f} s" +
            (" (summed over the parts)." if r.get("merged_from", 1) > 1 else ".")]
    return "\n".join(out) + "\n"


ABLATIONS = (  # (change, with it, without it)
    ("ThinK: no recent window (the default) instead of the paper's 32 unpruned recent tokens", "think40",
     "think40_recent32"),
    ("CSKV: prunekit's calibration (adaptive ranks, attention-weighted tokens, 4 sink tokens) instead of the paper's",
     "cskv80", "cskv80_paper"),
    ("CSKV: calibrated factors instead of an uncalibrated SVD", "cskv80", "cskv80_svd"),
    ("CSKV: exact heavy-hitter tokens on top of the calibrated latents", "cskv80_exact", "cskv80"),
    ("CSKV: exact worst-reconstructed tokens on top of the calibrated latents", "cskv80_exact_err", "cskv80"),
)


def ablation_lines(r: dict) -> list:
    """One bullet per ablation pair: retrieval keys found, perplexity ratio and bytes, with and without the change."""
    lines = []
    big = max(r["settings"]["memory_contexts"])
    for change, with_it, without in ABLATIONS:
        parts = []
        for length, per in r["retrieval"].items():
            if with_it in per and without in per:
                parts.append(f"retrieval @ {length}: {per[with_it]['found']} vs {per[without]['found']} keys of "
                             f"{per[with_it]['needles']}")
        if with_it in r["ppl"] and without in r["ppl"]:
            parts.append(f"perplexity ratio {r['ppl'][with_it]['ratio']:.4f} vs {r['ppl'][without]['ratio']:.4f}")
        if with_it in r["memory"] and without in r["memory"]:
            parts.append(f"bytes of full fp32 @ {big} {r['memory'][with_it]['fp32']['ratio_at_big']:.1%} vs "
                         f"{r['memory'][without]['fp32']['ratio_at_big']:.1%}")
        if parts:
            lines.append(f"- {change} ({with_it} vs {without}): " + "; ".join(parts) + ".")
    return lines


def _int_keys(obj):
    """JSON turns the context lengths keying the results into strings: turn them back."""
    if isinstance(obj, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_int_keys(v) for v in obj]
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short contexts, 6 retrieval prompts (CPU smoke run)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--md", nargs="?", const="auto", default=None,
                        help="write the markdown page (default path docs/results_kvcache[_quick].md)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached CSKV factors")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--parts", default=None,
                        help=f"comma-separated subset of {','.join(PARTS)} to measure (default: all); a partial "
                             "report has no targets until merged with --render")
    parser.add_argument("--methods", default=None, help="comma-separated press names to measure (default: all; "
                                                        "'full' is the reference every part needs)")
    parser.add_argument("--render", default=None, nargs="+", metavar="JSON",
                        help="measure nothing: rebuild the markdown from JSON reports this script wrote (several "
                             "partial reports are merged)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.render:
        result = finish(merge([_int_keys(json.loads(Path(p).read_text())) for p in args.render]))
        args.quick = result["mode"] == "quick"
    else:
        result = run(args)
        if args.parts or args.methods:
            if args.json:
                write_json(args.json, report("kvcache", sys.argv[1:] if argv is None else argv, start, [], [],
                                             partial=True, **result))
            log("partial run: merge the reports with --render to get the tables and targets")
            return 0
        result = finish(result)
    text = markdown(result)
    print(text)
    print_targets(result["targets"])
    if args.json:  # with --render: the merged report, targets included
        write_json(args.json, report("kvcache", sys.argv[1:] if argv is None else argv, start, [], result["targets"],
                                     **{k: v for k, v in result.items() if k not in REPORT_KEYS}))
    if args.md:
        path = args.md if args.md != "auto" else str(
            repo_root() / "docs" / ("results_kvcache_quick.md" if args.quick else "results_kvcache.md"))
        atomic_write_text(path, text)
    return 0 if all(t["passed"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
