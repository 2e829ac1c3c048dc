"""A real study with seeds (embedded Ray and MLflow, through the CLI), then `archspace dashboard` on it: the MLflow UI
answers on 127.0.0.1 and lists the study's runs, the report is logged on the parent run and renders in headless
Chromium, and Ctrl-C (SIGINT) stops everything it started."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from browser import render

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "study"))
from test_study_e2e import mlflow_runs, run_cli, write_space  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Gated DeltaNet alone (1:0) and attention alone (0:1), 2 seeds each: 4 trials of 4 steps."""
    tmp = tmp_path_factory.mktemp("ui")
    space = write_space(tmp, "uistudy", """
        axes:
          hybrid.ratio: ["1:0", "0:1"]
        objectives: [{metric: val/acc, mode: max}, {metric: state_size, mode: min}]
        search: {sampler: grid}
        pruner: {kind: none}
        seeds: 2
        """)
    proc = run_cli(["study", str(space), "--results-dir", str(tmp / "res")], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials x 2 seeds" in proc.stdout
    return tmp / "res" / "studies" / "uistudy"


def test_every_design_ran_with_each_seed(study):
    summary = json.loads((study / "summary.json").read_text())
    assert summary["counts"]["completed"] == 4
    seeds = Counter((json.dumps(r["values"], sort_keys=True), r["seed"]) for r in summary["trials"])
    assert len(seeds) == 4 and set(seeds.values()) == {1}  # 2 designs x seeds 0 and 1, once each
    assert [len(d["trial_ids"]) for d in summary["designs"]] == [2, 2]
    report = (study / "report.md").read_text()
    assert "## Designs over seeds" in report and "## Attention share per memory mixer" in report
    _, parents, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "uistudy")
    assert len(parents) == 1 and parents[0].data.params["seeds"] == "2"
    assert Counter(r.data.params["train.seed"] for r in children) == {"0": 2, "1": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=30).read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


@pytest.mark.slow
def test_dashboard_serves_the_studys_runs_and_stops_on_ctrl_c(study, tmp_path):
    port = _free_port()
    log = tmp_path / "dashboard.log"
    env = dict(os.environ)
    env.pop("ARCHSPACE_RESULTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "archspace.cli", "dashboard", str(study), "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server_pid = None
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        t0 = time.time()
        while "Ctrl-C stops the dashboard." not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.time() - t0 < 300, "the dashboard did not come up:\n" + log.read_text()
            time.sleep(0.5)
        out = log.read_text()
        server_pid = int(re.search(r"server pid (\d+)", out).group(1))
        assert f"http://127.0.0.1:{port}/#/experiments/" in out and "report.html" in out
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status == 200 and b"<html" in page.read().lower()
        exp_id = _get(f"{api}/experiments/get-by-name?experiment_name=uistudy")["experiment"]["experiment_id"]
        runs = _post(f"{api}/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        role = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]}["archspace.role"] for r in runs}
        assert Counter(role.values()) == {"study": 1, "trial": 4}
        parent = next(run_id for run_id, r in role.items() if r == "study")
        paths = {f["path"] for f in _get(f"{api}/artifacts/list?run_id={parent}")["files"]}
        assert {"report.html", "report", "report.md", "summary.json"} <= paths
        plots = {f["path"] for f in _get(f"{api}/artifacts/list?run_id={parent}&path=report")["files"]}
        assert {"report/pareto.png", "report/ratio.png", "report/curves.png"} <= plots
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0, log.read_text()
    assert "dashboard stopped" in log.read_text()
    assert server_pid is not None and not Path(f"/proc/{server_pid}").exists()
    with socket.socket() as s:  # nothing listens on the port any more (REUSEADDR: closed connections may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_the_real_studys_report_renders_in_headless_chromium(study):
    from archspace.dashboards.data import load_study
    from archspace.dashboards.report import build_report

    report = build_report(load_study(study), log_mlflow=False)
    assert {"best_designs", "pareto", "curves", "slices", "ratio"} <= set(report.plots)
    state, console, _ = render(report.html_path)
    assert len(state) == len(report.plots)
    assert all(s["complete"] and min(s["natural"]) > 0 and min(s["shown"]) > 0 for s in state), state
    assert [e for e in console if e.get("level") == "SEVERE"] == []
