"""Every shipped space runs as a study (smoke run: two trials of two steps each, through the real CLI,
embedded Ray and MLflow), so a space that loads but cannot train is caught."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_study_e2e import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("space", sorted((ROOT / "spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_space_smoke_run(space, tmp_path):
    res = tmp_path / "res"
    proc = run_cli(["study", str(space), "--results-dir", str(res), "--trials", "2",
                    "--set", "train.max_steps=2", "--set", "train.eval_every=1"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summaries = list(res.glob("studies/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["total"] == 2 and summary["counts"]["completed"] == 2, summary["counts"]
