"""`prunekit kv eval`: evaluate a KV-cache press on a causal LM (quality, cache memory, decode speed).

Examples::

    prunekit kv eval --model smollm2_135m --method think --set key_ratio=0.4 --task ppl
    prunekit kv eval --model smollm2_135m --method cskv --set k_density=0.2 --set v_density=0.2 --train-steps 300
    prunekit kv eval --model smollm2_135m --method cskv --set factors=/path/to/saved --task passkey
"""
from __future__ import annotations

COMMAND = "kv"
HELP = "KV-cache compression (ThinK, CSKV): evaluate quality, memory and speed"
TASKS = ("ppl", "passkey", "memory")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="kv_action", metavar="ACTION")
    ev = sub.add_parser("eval", help="evaluate a press: task quality plus cache bytes and decode speed")
    ev.add_argument("--model", default="smollm2_135m", help="a registered causal LM (default: smollm2_135m)")
    ev.add_argument("--method", default="think", help="a registered press (think, cskv) or 'full' (no compression)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="press setting, e.g. key_ratio=0.4, k_density=0.2, bits=4, factors=DIR (repeatable)")
    ev.add_argument("--task", choices=TASKS, default="ppl", help="quality task (memory: memory and speed only)")
    ev.add_argument("--context", type=int, default=512, help="ppl: context tokens compressed per window")
    ev.add_argument("--segment", type=int, default=128, help="ppl: tokens scored per window")
    ev.add_argument("--windows", type=int, default=8, help="ppl: number of windows")
    ev.add_argument("--passkey-tokens", type=int, default=1024, help="passkey: prompt length in tokens")
    ev.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="passkey: needle depths (fractions)")
    ev.add_argument("--trials", type=int, default=2, help="passkey: haystacks per depth")
    ev.add_argument("--memory-tokens", type=int, default=2048, help="context length for memory and speed")
    ev.add_argument("--decode-tokens", type=int, default=16, help="greedy steps timed for decode speed")
    ev.add_argument("--train-steps", type=int, default=0,
                    help="cskv: train the factors on WikiText-2 valid for this many steps per layer first")
    ev.add_argument("--save-factors", default=None, help="cskv: folder to save trained factors into")
    ev.add_argument("--allocation", default="adaptive", choices=("adaptive", "uniform"),
                    help="cskv training: ranks spread over layers by the calibration spectra, or the same everywhere")
    ev.add_argument("--weighting", default="attention", choices=("attention", "uniform"),
                    help="cskv training: calibration tokens weighted by the attention they receive as latents, or "
                         "all the same (the paper)")
    ev.add_argument("--no-baseline", action="store_true", help="skip the full-cache reference run")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def build_press(method: str, overrides, model=None, tokenizer=None, train_steps: int = 0, save_to=None,
                allocation: str = "adaptive", weighting: str = "attention"):
    """A press from its registry name and ``key=value`` overrides (None for ``full``)."""
    from ..config import apply_overrides, from_dict
    from ..kvcache import PRESSES

    if method in ("full", "none"):
        return None
    press = from_dict(PRESSES.get(method), apply_overrides({}, overrides))
    if train_steps and method == "cskv":
        from ..kvcache import cskv_train
        from ..kvcache.evaluate import calibration_ids

        calib = calibration_ids(tokenizer, 16, 512, split="valid")
        press.factors = cskv_train.train(model, calib, press.k_density, press.v_density,
                                         cskv_train.TrainConfig(steps=train_steps, bits=press.bits,
                                                                optimizer="als" if press.bits >= 16 else "adam",
                                                                window=press.window, allocation=allocation,
                                                                group_size=press.group_size, sink=press.sink,
                                                                weighting=weighting))
        if save_to:
            cskv_train.save(press.factors, save_to)
    return press


def _quality(args, model, tokenizer, press):
    from ..kvcache import evaluate

    if args.task == "ppl":
        ids = evaluate.wikitext_ids(tokenizer, "test", max_chars=(args.context + args.segment) * args.windows * 8)
        result = evaluate.compressed_perplexity(model, press, ids, args.context, args.segment, args.windows)
        return "perplexity", result["ppl"]
    if args.task == "passkey":
        depths = [float(d) for d in args.depths.split(",") if d]
        prompts = evaluate.passkey_prompts(tokenizer, args.passkey_tokens, depths, args.trials)
        return "passkey accuracy", evaluate.passkey_accuracy(model, tokenizer, press, prompts)["accuracy"]
    return None, None


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..errors import ConfigError
    from ..kvcache import evaluate
    from ..models import build
    from ..models.hf import load_tokenizer

    if getattr(args, "kv_action", None) != "eval":
        raise ConfigError("prunekit kv: give an action, e.g. 'prunekit kv eval --method think --set key_ratio=0.4'")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.model, pretrained=True)
    tokenizer = load_tokenizer(args.model)
    press = build_press(args.method, args.overrides, model, tokenizer, args.train_steps, args.save_factors,
                        args.allocation, args.weighting)
    runs = ([("full", None)] if not args.no_baseline and press is not None else []) + [(args.method, press)]
    ids = evaluate.wikitext_ids(tokenizer, "test", max_chars=args.memory_tokens * 8)[None, :args.memory_tokens]
    table = Table(title=f"prunekit kv eval: {args.model}, task {args.task}")
    for column in ("method", "settings", "quality", "cache MB", "saving", "decode ms/token"):
        table.add_column(column)
    full_bytes = None
    for name, item in runs:
        label, value = _quality(args, model, tokenizer, item)
        memory = evaluate.measure_cache(model, item, ids, args.decode_tokens)
        full_bytes = memory["bytes"] if item is None else full_bytes
        saving = "" if full_bytes is None else f"{1 - memory['bytes'] / full_bytes:.1%}"
        quality = "" if label is None else f"{label} {value:.4g}"
        settings = "" if item is None else ", ".join(args.overrides)
        table.add_row(name, settings, quality, f"{memory['bytes'] / 2**20:.2f}", saving,
                      f"{memory['decode_ms_per_token']:.1f}")
    Console().print(table)
    Console().print(f"memory and speed at {ids.shape[1]} context tokens; cache bytes are summed tensor storage")
    return 0
