"""The study report (archspace.dashboards.report) on a study written like the runner writes one, its figures in
headless Chromium, and `archspace compare`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from browser import render, require_browser
from fake_study import LAWS, write_fake_study

from archspace.dashboards.data import load_study
from archspace.dashboards.report import build_report

SCALING_PLOTS = {"best_designs", "pareto", "curves", "slices", "ratio", "scaling_fit", "isoflop", "compute_optimal",
                 "state_frontier"}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    study = write_fake_study(root)
    report = build_report(load_study(study), log_mlflow=False, starts=16)  # 16 best grid starts: see test_scaling
    return root, study, report


def test_a_scaling_study_report_has_every_section(fake):
    _, study, report = fake
    assert set(report.plots) == SCALING_PLOTS
    assert json.loads((study / "report" / "plots.json").read_text()) == sorted(SCALING_PLOTS)
    text = report.html_path.read_text()
    for heading in ("Best designs", "Designs over seeds", "Pareto front", "Metric curves", "Per-slice recall",
                    "Attention share per memory mixer", "Scaling laws", "Iso-FLOP cross-check",
                    "Compute-optimal allocation", "State-optimal frontier"):
        assert f">{heading}" in text, heading
    assert "<script" not in text  # static: nothing to execute


def test_scaling_json_holds_fits_with_intervals_the_cross_check_and_the_table(fake):
    _, study, report = fake
    saved = json.loads((study / "scaling.json").read_text())
    fams = saved["families"]
    fitted = {k: v for k, v in fams.items() if "fit" in v}
    assert len(fitted) == 2 * len(LAWS)  # mixer x (pure, 1:1); pure attention has 2 points and a note instead
    assert "needs at least 5 points" in fams["mixer.preset=-, hybrid.ratio=0:1"]["note"]
    for label, fam in fitted.items():
        fit = fam["fit"]
        assert fit["converged"] and fit["bootstrap"] == 100 and fit["n_points"] == 24
        for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
            lo, hi = fit[f"{k}_interval"]
            assert lo <= fit[k] <= hi, (label, k)
        assert fam["cross_check"]["intervals_overlap"], label
        assert [row["budget"] for row in fam["compute_optimal"]] == pytest.approx([3e11, 1e12, 3e12, 3e13, 3e14])
        for row in fam["compute_optimal"]:
            assert row["n_interval"][0] <= row["n"] <= row["n_interval"][1]
    pure = [v["fit"] for k, v in fitted.items() if k.endswith("1:0")]
    truth = [law for law, _ in LAWS.values()]
    for fit, (e, a, b, alpha, beta) in zip(pure, truth):  # no attention layer: the law the losses were drawn from
        assert fit["E_interval"][0] <= e <= fit["E_interval"][1]
        assert fit["beta_interval"][0] <= beta <= fit["beta_interval"][1]
    assert {x["family"] for x in saved["compute_optimal_frontier"]} <= set(fitted)


def test_the_report_renders_in_headless_chromium(fake):
    _, study, report = fake
    state, console, title = render(report.html_path)
    assert title == "archspace study fake"
    assert len(state) == len(report.plots) == len(SCALING_PLOTS)
    assert {s["id"] for s in state} == {f"plot-{name}" for name in SCALING_PLOTS}
    for s in state:
        assert s["complete"] and min(s["natural"]) > 0 and min(s["shown"]) > 0, s
    errors = [e for e in console if e.get("level") == "SEVERE"]
    assert errors == [], errors


def test_the_browser_check_sees_a_broken_figure_and_a_console_error(tmp_path):
    """The check above can fail: a figure that does not decode and a script error are both seen."""
    require_browser()
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><title>broken</title></head><body>"
                    "<figure id='plot-x'><img class='plot' src='data:image/png;base64,AAAA'></figure>"
                    "<script>console.error('deliberate');</script></body></html>")
    state, console, _ = render(page)
    assert len(state) == 1 and state[0]["natural"] == [0, 0]
    assert any(e.get("level") == "SEVERE" and "deliberate" in e.get("message", "") for e in console)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "archspace.cli", *args], capture_output=True, text=True, timeout=300)


def test_compare_studies_and_runs_side_by_side(fake, tmp_path):
    root, study, _ = fake
    write_fake_study(root, "other")
    proc = _cli("compare", "fake", "other", "--results-dir", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "studies side by side" in proc.stdout and "fake" in proc.stdout and "other" in proc.stdout
    assert "best val/loss" in proc.stdout and "fit mixer.preset=gla" in proc.stdout  # fake has scaling.json
    proc = _cli("compare", str(study / "trials" / "t0001"), str(study / "trials" / "t0002"), "other",
                "--results-dir", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "runs side by side" in proc.stdout and "fake/t0001" in proc.stdout and "other best" in proc.stdout
    assert "test/acc/seq64_kv4" in proc.stdout and "train_flops" in proc.stdout
    proc = _cli("compare", "nosuch", "--results-dir", str(root))
    assert proc.returncode == 2 and "is not a study or run directory" in proc.stderr and "Traceback" not in proc.stderr
