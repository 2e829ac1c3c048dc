"""archspace.analysis.select: the swept value is chosen on validation, test is reported only at that value, and
Zoology's max-test pick is shown beside it."""
from __future__ import annotations

import math

import pytest

from archspace.analysis.select import main, select, table


def _row(design: str, lr: float, seed: int, val: float, test: float, status: str = "completed") -> dict:
    return {"trial_id": f"{design}-{lr}-{seed}", "status": status, "seed": seed,
            "values": {"mixer.preset": design, "train.lr": lr}, "final": {"val/acc": val, "test/acc": test}}


# Design "a": lr 1e-3 is best on validation, lr 1e-2 is best on test (the case where the two picks differ).
ROWS = [
    _row("a", 1e-3, 0, 0.80, 0.60), _row("a", 1e-3, 1, 0.70, 0.50), _row("a", 1e-3, 2, 0.90, 0.70),
    _row("a", 1e-2, 0, 0.50, 0.90), _row("a", 1e-2, 1, 0.60, 0.80), _row("a", 1e-2, 2, 0.40, 1.00),
    _row("b", 1e-3, 0, 0.10, 0.10), _row("b", 1e-2, 0, 0.20, 0.30),
    _row("b", 1e-2, 1, 0.99, 0.99, status="failed"),  # not completed: ignored
]


def test_chooses_on_validation_and_reports_test_there():
    by = {e["values"]["mixer.preset"]: e for e in select(ROWS, "train.lr")}
    a = by["a"]
    assert a["chosen"] == 1e-3 and a["zoology_at"] == 1e-2
    assert a["test"].mean == pytest.approx(0.60) and a["test"].n == 3
    assert a["test"].sd == pytest.approx(0.10)  # sample sd of 0.6, 0.5, 0.7
    assert a["val"].mean == pytest.approx(0.80)
    assert a["zoology"].mean == pytest.approx(0.90)  # the optimistic, test-selected number
    b = by["b"]
    assert b["chosen"] == 1e-2 and b["test"].n == 1 and b["test"].mean == pytest.approx(0.30)
    assert math.isnan(b["test"].lo)


def test_table_and_cli(tmp_path, capsys):
    text = table(select(ROWS, "train.lr"), "train.lr", ["mixer.preset"])
    assert "| a | 0.001 | 0.800 | 0.600 +- 0.100 [" in text and "0.900 (at 0.01)" in text
    assert "| b | 0.01 | 0.200 | 0.300 | 0 |" in text
    import json

    (tmp_path / "summary.json").write_text(json.dumps({"trials": ROWS}))
    assert main([str(tmp_path), "--over", "train.lr", "--by", "mixer.preset"]) == 0
    assert capsys.readouterr().out.strip() == text


def test_a_row_without_the_swept_axis_is_an_error():
    with pytest.raises(ValueError, match="no sampled 'train.lr'"):
        select([{**ROWS[0], "values": {"mixer.preset": "a"}}], "train.lr")


def test_cli_errors_name_the_file_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'summary.json'}: no such file" in capsys.readouterr().err
    import json

    (tmp_path / "summary.json").write_text(json.dumps({"trials": ROWS}))
    assert main([str(tmp_path), "--over", "train.wd"]) == 2
    assert "no sampled 'train.wd'" in capsys.readouterr().err
