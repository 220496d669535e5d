"""The README's "Metrics" table is `contracts.metrics.ALL`, row for row; names follow Prometheus' rules."""

from __future__ import annotations

import re
from pathlib import Path

from contracts import metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def row(metric: metrics.Metric) -> str:
    labels = ", ".join(f"`{label}`" for label in metric.all_labels()) or "\u2013"
    return f"| `{metric.name}` | {metric.kind.value} | {labels} | {metric.description} |"


def test_the_readme_lists_every_metric_as_declared() -> None:
    text = README.read_text()
    section = text[text.index("\n## Metrics\n"):]
    section = section[: section.index("\n## ", 1)]
    listed = [line for line in section.splitlines() if line.startswith("| `himig_")]
    assert listed == [row(m) for m in metrics.ALL], "update the README's Metrics table from contracts/metrics.py"


def test_names_and_labels_are_prometheus_names_without_ids() -> None:
    names = [m.name for m in metrics.ALL]
    assert len(set(names)) == len(names)
    for metric in metrics.ALL:
        assert re.fullmatch(r"himig_[a-z0-9_]+", metric.name), metric.name
        assert not metric.name.endswith(("_total", "_count", "_sum", "_bucket")), metric.name
        for label in metric.all_labels():
            assert re.fullmatch(r"[a-z_]+", label) and not label.endswith("_id"), (metric.name, label)
