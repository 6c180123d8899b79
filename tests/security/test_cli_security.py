"""`prunekit security simulate` end to end on the digits CNN (untrained: the attack needs only weights), with a small
trace budget."""
from __future__ import annotations

import json

from prunekit.cli.main import main


def test_security_simulate_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    plot, report = tmp_path / "cpa.png", tmp_path / "cpa.json"
    code = main(["security", "simulate", "--model", "digits_cnn", "--train-epochs", "0", "--seeds", "0",
                 "--attacks", "2", "--max-traces", "300", "--keep-prob", "0.5", "--top-q", "0.25",
                 "--importance-images", "64", "--plot", str(plot), "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "undefended" in out and "realigned" in out and "importance q=0.25, p=0.5" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(report.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["undefended"] <= 300 and rows[0]["theoretical_ratio"] > 1
    assert main(["security"]) == 2
