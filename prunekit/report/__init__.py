"""Reports people read: one self-contained ``report.html`` (tables and PNG plots embedded), written by
`prunekit prune`, `prunekit run` and `prunekit kv eval` beside their ``report.md`` (see `prunekit.report.html`)."""
from .html import HtmlReport, kv_report, prune_report, run_report

__all__ = ["HtmlReport", "kv_report", "prune_report", "run_report"]
