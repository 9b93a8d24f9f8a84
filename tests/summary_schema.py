"""The summary schema every job shares (percli.commands.run.normalise), asserted by the per-group job tests."""

from __future__ import annotations

import re
from typing import Any

COMMON_KEYS = {"status", "run_dir", "metrics", "counts"}
# shares reported by the jobs (top-k, accuracy, mAP, R@k, error rates): fractions in JSON, never percent
SHARE = re.compile(r"(?:^|[/_ .])(?:top\d+(?:acc)?|acc|accuracy|mAP|map|R@\d+|eer|cer|wer|bleu4)$")


def assert_common_schema(summary: dict[str, Any]) -> None:
    """`status`, `run_dir`, a flat `metrics` mapping of numbers (shares in [0, 1]) and a flat `counts`
    mapping of integers."""
    assert COMMON_KEYS <= set(summary), f"missing {COMMON_KEYS - set(summary)}"
    assert isinstance(summary["status"], str)
    metrics, counts = summary["metrics"], summary["counts"]
    assert isinstance(metrics, dict) and isinstance(counts, dict)
    for name, value in metrics.items():
        assert value is None or (isinstance(value, int | float) and not isinstance(value, bool)), (name, value)
        if SHARE.search(name) and value is not None:
            assert 0.0 <= value <= 1.0, f"{name}={value}: shares are fractions in JSON"
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()), counts
