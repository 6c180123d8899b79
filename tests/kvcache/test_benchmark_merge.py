"""benchmarks/kvcache.py: partial reports (``--parts`` / ``--methods``) merge into the same figures and targets."""
import pytest

from ..benchmarks._bench_module import bench_module

FULL_TOKEN = 46080  # bytes per token of SmolLM2's fp32 cache


def _report(settings, **parts):
    base = {"mode": "quick", "settings": settings, "memory": {}, "decode_ms": {}, "ppl": {}, "retrieval": {},
            "torch_threads": 1, "refused": True, "seconds": 10.0}
    base.update(parts)
    return base


def _mem(contexts, per_token, fixed):
    return {"bytes": {c: {"fp32": per_token * c, "fp16": per_token * c // 2} for c in contexts},
            "fixed": {"fp32": fixed, "fp16": fixed // 2}}


def _found(per_prompt):
    return {"found": sum(per_prompt), "needles": 3 * len(per_prompt), "per_prompt": per_prompt}


def test_partial_reports_merge_into_the_targets():
    with bench_module("kvcache.py", "_kvcache_bench") as bench:
        settings = dict(bench.SETTINGS["quick"])
        ctxs = (1024, 2048, 4096)  # the memory part ran at other contexts than the settings of the other parts
        mem_settings = dict(settings, memory_contexts=ctxs)
        parts = [
            _report(mem_settings, memory={"full": _mem(ctxs, FULL_TOKEN, 0), "think40": _mem(ctxs, 0.8 * FULL_TOKEN, 0),
                                          "cskv80": _mem(ctxs, 0.2 * FULL_TOKEN, 0.05 * FULL_TOKEN * 4096)},
                    decode_ms={1024: {"full": 10.0, "think40": 9.0, "cskv80": 20.0},
                               2048: {"full": 20.0, "think40": 16.0, "cskv80": 25.0}}),
            _report(settings, ppl={"full": {"ppl": 20.0}, "think40": {"ppl": 20.2}, "cskv80": {"ppl": 23.0}}),
            _report(settings, retrieval={1024: {"full": _found([3, 3, 2, 3, 1, 3]),
                                                "think40": _found([3, 2, 2, 3, 1, 3])}}),
            _report(settings, retrieval={1024: {"cskv80": _found([3, 3, 2, 0, 1, 3])}}, refused=True),
        ]
        merged = bench.finish(bench.merge(parts[1:] + parts[:1]))  # the memory report need not come first
    assert merged["seconds"] == pytest.approx(40.0)
    values = {t["name"]: t["value"] for t in merged["targets"]}
    passed = {t["name"]: t["passed"] for t in merged["targets"]}
    assert len(values) == 9
    assert values["think40_bytes_vs_full_fp32_4096"] == pytest.approx(0.8)
    assert values["cskv80_bytes_with_factors_vs_full_fp32_4096"] == pytest.approx(0.25)
    assert values["think40_ppl_ratio"] == pytest.approx(1.01) and passed["think40_ppl_ratio"]
    assert values["cskv80_ppl_ratio"] == pytest.approx(1.15) and not passed["cskv80_ppl_ratio"]
    # one needle lost in 6 prompts of 3 -> 1/3 prompt -> 2/3 per 12; three lost -> 2 per 12
    assert values["think40_retrieval_1024_prompts_below_full_per12"] == pytest.approx(2 / 3)
    assert values["cskv80_retrieval_1024_prompts_below_full_per12"] == pytest.approx(2.0)
    assert values["think40_decode_speed_vs_full_2048"] == pytest.approx(1.25)
    assert values["cskv80_decode_speed_vs_full_2048"] == pytest.approx(0.8)
    assert passed["cskv_press_without_factors_refused"]
    with bench_module("kvcache.py", "_kvcache_bench") as bench:
        full_mode = _report(dict(bench.SETTINGS["full"]))
        full_mode["mode"] = "full"
        with pytest.raises(Exception, match="mix quick and full"):
            bench.merge([parts[0], full_mode])
