"""report.html of `prunekit prune`, `prunekit run` and `prunekit kv eval`, opened in headless Chromium (Playwright
driving the system's Chromium, which scripts/setup.sh installs): every section and image renders, nothing is fetched
from outside the file, and a screenshot is saved."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from prunekit.cli.main import main

torch.set_num_threads(1)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def system_chromium():
    """$PRUNEKIT_CHROMIUM, else the first Chromium on PATH (None when there is none)."""
    override = os.environ.get("PRUNEKIT_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    path = system_chromium()
    if path is None:
        pytest.skip("no system Chromium (chromium / chromium-browser on PATH, or PRUNEKIT_CHROMIUM): "
                    "scripts/setup.sh installs it with `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu",
                                                                 "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def open_report(browser, report: Path, screenshot: Path):
    """Open `report` and return (section titles with their rendered heights, images' natural widths)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.resolve().as_uri())
    page.wait_for_load_state("load")
    sections = page.eval_on_selector_all(
        "section", "els => els.map(e => [e.querySelector('h2').textContent, e.getBoundingClientRect().height])")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # one self-contained file
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(height > 20 for _, height in sections), sections
    assert images and all(complete and width > 0 for _, complete, width in images), images
    return [title for title, _ in sections], [alt for alt, _, _ in images]


def test_prune_report_renders_every_section(browser, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "digits_cnn", "--ratio", "0.5", "--sensitivity", "true", "--data", "digits",
                 "--out", str(out)]) == 0
    assert (out / "report.md").is_file()
    titles, images = open_report(browser, out / "report.html", tmp_path / "prune.png")
    assert titles == ["Before and after", "Verification", "Per-layer widths", "Per-layer sensitivity",
                      "Latency per runtime", "Refused groups"]
    assert images == ["per-layer widths before and after", "per-group sensitivity curves",
                      "latency per runtime before and after"]
    text = (out / "report.html").read_text()
    assert "conv2" in text and "it is part of the model&#x27;s output" in text and "onnxruntime" in text


def test_run_report_shows_training_curves(browser, tmp_path):
    config = {"out_dir": str(tmp_path / "run"),
              "task": {"model": "digits_cnn", "dataset": "digits", "pretrained": False, "augment": None,
                       "train_subset": 384, "test_limit": 96, "batch_size": 32, "latency_repeats": 2,
                       "eval_original": True, "num_threads": 1},
              "stage1": {"epochs": 2, "lr": 0.1, "s": 1e-3}, "stage2": {"keep_macs": 0.5},
              "stage3": {"epochs": 1, "lr": 0.05, "distill": {"weight": 10.0}}}
    path = tmp_path / "slim.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "slim-cwd", "--config", str(path)]) == 0
    out = tmp_path / "run"
    assert "| params |" in (out / "report.md").read_text()
    from prunekit.report.html import stage_losses
    import json

    losses = stage_losses(out, json.loads((out / "result.json").read_text()))
    assert len(losses["sparse"]) == 2 and losses["sparse"][0][0] == 10 and len(losses["finetune"]) == 1
    titles, images = open_report(browser, out / "report.html", tmp_path / "run.png")
    assert titles == ["Before and after", "Stages", "Per-layer widths", "Per-layer sensitivity",
                      "Latency per runtime", "Refused groups", "Training curves"]
    assert images == ["per-layer widths before and after", "latency per runtime before and after",
                      "training loss per stage"]


def test_kv_eval_report_renders(browser, tmp_path):
    out = tmp_path / "kv"
    assert main(["kv", "eval", "--method", "think", "--set", "key_ratio=0.4", "--task", "memory",
                 "--memory-tokens", "64", "--decode-tokens", "2", "--threads", "1", "--out", str(out)]) == 0
    assert "| think |" in (out / "report.md").read_text()
    titles, images = open_report(browser, out / "report.html", tmp_path / "kv.png")
    assert titles == ["Results", "Quality and speed"] and images == ["quality and decode speed per method"]
