"""`prunekit eval`: accuracy (classifiers), perplexity (causal LMs) or mAP (detectors) of a registered model."""
from __future__ import annotations

COMMAND = "eval"
HELP = "evaluate a model on a dataset: accuracy (classifiers), perplexity (causal LMs), mAP (detectors)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="registered model name (see `prunekit ls models`), or a "
                                                       "pruned checkpoint folder (prunekit prune --out)")
    parser.add_argument("--allow-factory", default=None, metavar="MODULE:FUNCTION",
                        help="for a pruned folder whose plan names a model factory: run it (trusted folders only)")
    parser.add_argument("--data", required=True, help="registered dataset name (see `prunekit ls datasets`)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N images (classifiers, detectors) or first N tokens (language models)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward (classifiers)")
    parser.add_argument("--context", type=int, default=512, help="perplexity window length in tokens")
    parser.add_argument("--stride", type=int, default=None, help="perplexity window stride (default: --context)")
    parser.add_argument("--random-init", action="store_true", help="do not load pretrained weights")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the evaluation")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _call_with_supported(factory, **kwargs):
    """Call a dataset factory with the keyword arguments its signature accepts (None values dropped)."""
    import inspect

    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return factory(**{k: v for k, v in kwargs.items() if v is not None and (takes_any or k in params)})


def eval_classifier(model, meta, data: str, split: str, limit, batch_size: int) -> dict:
    from ..data import DATASETS
    from ..metrics.accuracy import evaluate_accuracy

    normalize = (meta.mean, meta.std) if meta.mean is not None else None
    dataset = _call_with_supported(DATASETS.get(data), split=split, normalize=normalize)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    acc = evaluate_accuracy(model, dataset, batch_size=batch_size, limit=n, description=f"{data}[{split}]")
    return {"metric": "accuracy", "value": acc, "items": n}


def eval_causal_lm(model, name: str, data: str, split: str, limit, context: int, stride) -> dict:
    from ..data import DATASETS
    from ..errors import ConfigError, PrunekitError
    from ..data.text import tokenize_for_perplexity
    from ..metrics.perplexity import perplexity

    try:
        from ..models.hf import load_tokenizer
    except ImportError as exc:
        raise PrunekitError(f"prunekit eval: perplexity needs the model's tokenizer, but "
                            f"prunekit.models.hf.load_tokenizer cannot be imported ({exc})") from None
    text = _call_with_supported(DATASETS.get(data), split=split)
    if not isinstance(text, str):
        raise ConfigError(f"prunekit eval: dataset '{data}' is not a text corpus; a causal LM needs one "
                          f"(e.g. wikitext2, tinyshakespeare)")
    ids = tokenize_for_perplexity(text, load_tokenizer(name), max_tokens=limit)
    ppl = perplexity(model, ids, context=context, stride=stride, progress=True)
    return {"metric": f"perplexity (context {context})", "value": ppl, "items": int(ids.numel())}


def eval_detector(model, data: str, split: str, limit) -> dict:
    import torch

    from ..data import DATASETS
    from ..errors import PrunekitError

    try:
        from ..metrics.detection import detection_map, targets_to_pixels
        from ..models.yolo_postprocess import non_max_suppression
    except ImportError as exc:
        raise PrunekitError(f"prunekit eval: mAP needs prunekit.metrics.detection and "
                            f"prunekit.models.yolo_postprocess ({exc})") from None
    dataset = _call_with_supported(DATASETS.get(data), split=split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    predictions, targets = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(n):
            image, target = dataset[i]
            size = image.shape[-1]
            predictions.append(non_max_suppression(model(image[None]), conf_thres=0.001, iou_thres=0.7)[0])
            targets.append(targets_to_pixels(target, size, image.shape[-2]))
    result = detection_map(predictions, targets, num_classes=getattr(dataset, "num_classes", 80))
    return {"metric": "mAP@0.5:0.95", "value": result["map50_95"], "items": n, "map50": result["map50"]}


def _quiet_transformers() -> None:
    """Turn off the Hugging Face weight-loading progress bars (they flood logs)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run(args) -> int:
    import json
    import time

    import torch

    from ..data import DATASETS
    from ..errors import ConfigError
    from ..models import build, info

    from ._models import is_pruned_folder, load_pruned_folder

    folder = is_pruned_folder(args.model)
    name = args.model
    if folder:
        model, name, _ = load_pruned_folder(args.model, args.allow_factory)
        if name is None:
            raise ConfigError(f"prunekit eval: {args.model} was not pruned from a registry model, so its task and "
                              f"input normalisation are unknown; evaluate it from Python (prunekit.load)")
    meta = info(name)  # unknown names raise UnknownNameError listing the known ones
    DATASETS.get(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if meta.task in ("causal-lm", "encoder"):
        _quiet_transformers()
    if not folder:
        model = build(args.model, pretrained=not args.random_init).eval()
    if meta.task == "classification":
        result = eval_classifier(model, meta, args.data, args.split, args.limit, args.batch_size)
    elif meta.task == "causal-lm":
        result = eval_causal_lm(model, name, args.data, args.split, args.limit, args.context, args.stride)
    elif meta.task == "detection":
        result = eval_detector(model, args.data, args.split, args.limit)
    else:
        raise ConfigError(f"prunekit eval: model '{args.model}' is a {meta.task} model; eval handles classification, "
                          f"causal-lm and detection models")
    report = {"model": args.model, "data": args.data, "split": args.split, **result,
              "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prunekit eval: {args.model} on {args.data}[{args.split}]")
    table.add_column("item")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0
