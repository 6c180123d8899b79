"""`prunekit kv`: calibrate and evaluate KV-cache presses (ThinK, CSKV) on a causal LM.

Examples::

    prunekit kv calibrate --model smollm2_135m --density 0.2 --out cskv80          # CSKV factors, recommended settings
    prunekit kv eval --model smollm2_135m --method cskv --set factors=cskv80
    prunekit kv eval --model smollm2_135m --method think --set key_ratio=0.4 --task ppl,retrieval
    prunekit kv eval --method cskv --calibrate --task memory                       # calibrate on WikiText-2 valid first
"""
from __future__ import annotations

COMMAND = "kv"
HELP = "KV-cache compression (ThinK, CSKV): calibrate, then evaluate quality, retrieval, memory and speed"
TASKS = ("ppl", "retrieval", "memory")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="kv_action", metavar="ACTION")
    cal = sub.add_parser("calibrate", help="calibrate CSKV factors (recommended settings) and save them")
    cal.add_argument("--model", default="smollm2_135m", help="a registered causal LM (default: smollm2_135m)")
    cal.add_argument("--method", default="cskv", help="press to calibrate (cskv)")
    cal.add_argument("--density", type=float, default=0.2,
                     help="latent channels kept, fraction of H_kv*D (0.2: cache about 80%% smaller)")
    cal.add_argument("--bits", type=int, default=None, choices=(4, 8, 16), help="quantised latents (QAT)")
    cal.add_argument("--data", default=None, help="calibration text file (default: WikiText-2 valid)")
    cal.add_argument("--seqs", type=int, default=32, help="calibration windows")
    cal.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    cal.add_argument("--out", required=True, help="folder for factors.safetensors + cskv.json")
    cal.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    ev = sub.add_parser("eval", help="evaluate a press: quality, retrieval, memory (fixed bytes counted), speed")
    ev.add_argument("--model", default="smollm2_135m", help="a registered causal LM (default: smollm2_135m)")
    ev.add_argument("--method", default="think", help="a registered press (think, cskv) or 'full' (no compression)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="press setting, e.g. key_ratio=0.4, k_density=0.2, bits=4, factors=DIR (repeatable)")
    ev.add_argument("--calibrate", action="store_true",
                    help="cskv without factors: calibrate on WikiText-2 valid first (recommended settings)")
    ev.add_argument("--save-factors", default=None, help="with --calibrate: folder to save the factors into")
    ev.add_argument("--task", default="ppl,retrieval",
                    help=f"comma-separated tasks among {', '.join(TASKS)} (memory and decode speed always run)")
    ev.add_argument("--context", type=int, default=512, help="ppl: context tokens compressed per window")
    ev.add_argument("--segment", type=int, default=128, help="ppl: tokens scored per window")
    ev.add_argument("--windows", type=int, default=8, help="ppl: number of windows")
    ev.add_argument("--retrieval-tokens", default="2048", help="retrieval: prompt lengths, comma-separated")
    ev.add_argument("--prompts", type=int, default=12, help="retrieval: prompts per length")
    ev.add_argument("--needles", type=int, default=3, help="retrieval: needles per prompt (each asked for)")
    ev.add_argument("--memory-tokens", type=int, default=2048, help="context length for memory and speed")
    ev.add_argument("--decode-tokens", type=int, default=16, help="greedy steps timed for decode speed")
    ev.add_argument("--no-baseline", action="store_true", help="skip the full-cache reference run")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ev.add_argument("--out", default=None, help="folder for report.md, report.html and report.json")


def build_press(method: str, overrides, model=None, tokenizer=None, calibrate: bool = False, save_to=None):
    """A press from its registry name and ``key=value`` overrides (None for ``full``); ``calibrate`` makes CSKV
    factors on WikiText-2 valid when none are given."""
    from ..config import apply_overrides, from_dict
    from ..kvcache import PRESSES

    if method in ("full", "none"):
        return None
    press = from_dict(PRESSES.get(method), apply_overrides({}, overrides))
    if calibrate and method == "cskv" and press.factors is None:
        from ..kvcache.calibrated import calibrate as run_calibration

        press = run_calibration(model, tokenizer, density=press.k_density, k_density=press.k_density,
                                v_density=press.v_density, bits=press.bits, save_to=save_to, window=press.window,
                                sink=press.sink, group_size=press.group_size)
    return press


def _calibrate(args) -> int:
    from rich.console import Console

    from ..kvcache.calibrated import calibrate
    from ..models import build
    from ..models.hf import load_tokenizer

    model = build(args.model, pretrained=True)
    tokenizer = load_tokenizer(args.model)
    press = calibrate(model, tokenizer, data=args.data, method=args.method, density=args.density, bits=args.bits,
                      save_to=args.out, n_seq=args.seqs, seq_len=args.seq_len)
    layers = press.factors.metadata.get("layers", [])
    k_err = sum(r["k_after"] for r in layers) / max(len(layers), 1)
    v_err = sum(r["v_after"] for r in layers) / max(len(layers), 1)
    Console().print(f"CSKV factors (density {args.density}, bits {press.bits}) saved to {args.out}: mean relative "
                    f"error K {k_err:.3f}, V {v_err:.3f}; {press.fixed_nbytes() / 2**20:.2f} MB of factors.\n"
                    f"Use them: prunekit kv eval --method cskv --set factors={args.out}   or   "
                    f"CSKVPress.from_pretrained({args.out!r})")
    return 0


def _quality(args, model, tokenizer, press) -> dict:
    from ..errors import ConfigError
    from ..kvcache import evaluate

    tasks = [t for t in args.task.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"prunekit kv eval: unknown task(s) {unknown}; choose among {TASKS}")
    out = {}
    if "ppl" in tasks:
        ids = evaluate.wikitext_ids(tokenizer, "test", max_chars=(args.context + args.segment) * args.windows * 8)
        out["ppl"] = evaluate.compressed_perplexity(model, press, ids, args.context, args.segment, args.windows)["ppl"]
    if "retrieval" in tasks:
        for n_tokens in [int(t) for t in args.retrieval_tokens.split(",") if t]:
            prompts = evaluate.retrieval_prompts(tokenizer, n_tokens, args.prompts, args.needles)
            out[f"retrieval@{n_tokens}"] = evaluate.retrieval_accuracy(model, tokenizer, press, prompts)
    return out


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..errors import ConfigError
    from ..kvcache import evaluate, memory
    from ..models import build
    from ..models.hf import load_tokenizer

    action = getattr(args, "kv_action", None)
    if action not in ("eval", "calibrate"):
        raise ConfigError("prunekit kv: give an action: 'prunekit kv calibrate --out DIR' or "
                          "'prunekit kv eval --method think --set key_ratio=0.4'")
    if args.threads:
        torch.set_num_threads(args.threads)
    if action == "calibrate":
        return _calibrate(args)
    model = build(args.model, pretrained=True)
    tokenizer = load_tokenizer(args.model)
    press = build_press(args.method, args.overrides, model, tokenizer, args.calibrate, args.save_factors)
    runs = ([("full", None)] if not args.no_baseline and press is not None else []) + [(args.method, press)]
    n = args.memory_tokens
    ids = evaluate.wikitext_ids(tokenizer, "test", max_chars=n * 8)
    table = Table(title=f"prunekit kv eval: {args.model}")
    for column in ("method", "quality", "MB @ fp32 (fixed)", "of full fp32 / fp16", "break-even B=1 / B=8",
                   "decode ms/token"):
        table.add_column(column)
    results, full_bytes, rows, speeds, memory_mb = {}, {}, [], {}, {}
    for name, item in runs:
        quality = _quality(args, model, tokenizer, item)
        at = {}
        for length in (n // 2, n):
            cache = evaluate.new_cache(model)
            with evaluate.press_context(item, model), torch.no_grad():
                model(ids[None, :length], past_key_values=cache, use_cache=True, logits_to_keep=1)
            at[length] = {bits: memory.cache_nbytes_as(cache, bits) for bits in (None, 2)}
        if item is None:
            full_bytes = at
        speed = evaluate.measure_cache(model, item, ids[None, :n], args.decode_tokens)["decode_ms_per_token"]
        cells = []
        for key, value in quality.items():
            if key == "ppl":
                cells.append(f"ppl {value:.4g}")
            else:
                cells.append(f"{key} {value['found']}/{value['needles']}")
        row = [name, ", ".join(cells)]
        if full_bytes:
            fixed = {b: memory.press_fixed_nbytes(item, b) for b in (None, 2)}
            prof = {b: memory.fit_profile({k: v[b] for k, v in at.items()}, {k: v[b] for k, v in full_bytes.items()},
                                          fixed[b]) for b in (None, 2)}
            row += [f"{at[n][None] / 2**20:.2f} ({fixed[None] / 2**20:.2f})",
                    f"{prof[None].ratio(n):.1%} / {prof[2].ratio(n):.1%}",
                    f"{prof[None].break_even(1):.0f} / {prof[None].break_even(8):.0f}"]
        else:
            row += [f"{at[n][None] / 2**20:.2f}", "", ""]
        table.add_row(*row, f"{speed:.1f}")
        rows.append([*row, f"{speed:.1f}"])
        results[name] = quality
        speeds[name] = speed
        memory_mb[name] = at[n][None] / 2**20
    Console().print(table)
    if args.out:
        _write_reports(args, [c.header for c in table.columns], rows, results, speeds, memory_mb)
    Console().print(f"memory and speed at {n} context tokens, batch 1; bytes are summed tensor storage plus the "
                    f"press's fixed bytes (CSKV factors); fp16 columns count float tensors at 2 bytes. Retrieval: "
                    f"needles found (each asked for after the compressed context).")
    return 0


def _write_reports(args, columns, rows, results, speeds, memory_mb) -> None:
    """report.json, report.md and report.html (`prunekit.report.kv_report`) into ``args.out``, one folder."""
    import json
    from pathlib import Path

    from ..io import atomic_write_text
    from ..report import kv_report

    out = Path(args.out)
    command = f"prunekit kv eval --model {args.model} --method {args.method}" + \
        "".join(f" --set {o}" for o in args.overrides)
    atomic_write_text(out / "report.json", json.dumps({"command": command, "columns": list(columns), "rows": rows,
                                                       "quality": results, "decode_ms_per_token": speeds,
                                                       "cache_mb_fp32": memory_mb},
                                                      indent=1, default=str))
    lines = [f"# {command}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    kv_report(args.model, columns, rows, results, speeds, command, memory_mb).write(out / "report.html")
    from rich.console import Console

    Console().print(f"wrote {out}/ (report.json, report.md, report.html)")
