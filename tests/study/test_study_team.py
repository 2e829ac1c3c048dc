"""The team path: a separately started Ray head and MLflow server, joined with --ray-address / --tracking-uri."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from test_study_e2e import run_cli, write_space

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop(proc: subprocess.Popen, extra_pids=()) -> None:
    """Stop a process we started, its process group and every descendant (by PID; never `ray stop`)."""
    pids = set(descendants(proc.pid)) | set(extra_pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        try:
            proc.wait(2)  # `ray start --block` may ignore SIGTERM: SIGKILL follows
            break
        except subprocess.TimeoutExpired:
            continue


def wait_for(check, what: str, timeout: float = 90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up in {timeout} s")


@pytest.mark.slow
def test_study_on_a_ray_cluster_with_an_mlflow_server(tmp_path):
    ray_port, mlflow_port = free_port(), free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    head = server = None
    head_pids: list[int] = []
    try:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={ray_port}", "--num-cpus=2",
             "--include-dashboard=false", "--block"],
            stdout=open(tmp_path / "ray.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
            cwd=tmp_path, env=env)

        def mlflow_up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=2).status == 200
            except OSError:
                return False

        def ray_up():
            return "Ray runtime started" in (tmp_path / "ray.log").read_text() or head.poll() is not None

        wait_for(ray_up, "the Ray head")
        assert head.poll() is None, (tmp_path / "ray.log").read_text()[-3000:]
        wait_for(mlflow_up, "the MLflow server")
        head_pids = descendants(head.pid)

        space = write_space(tmp_path, "team", """
            axes:
              lr: [0.001, 0.003]
            search: {sampler: grid}
            pruner: {kind: none}
            """)
        uri = f"http://127.0.0.1:{mlflow_port}"
        proc = run_cli(["study", str(space), "--results-dir", str(tmp_path / "res"),
                        "--ray-address", f"127.0.0.1:{ray_port}", "--tracking-uri", uri])
        assert proc.returncode == 0
        assert f"Ray at 127.0.0.1:{ray_port}" in proc.stdout

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("team")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if r.data.tags.get("archspace.role") == "trial"]
        trial_dirs = {p.name for p in (tmp_path / "res" / "studies" / "team" / "trials").iterdir()}
        ids = Counter(r.data.tags["archspace.trial_id"] for r in children)
        assert set(ids) == trial_dirs and set(ids.values()) == {1} and len(ids) == 2
        assert {r.info.status for r in children} == {"FINISHED"}
        for r in children:
            assert "resolved.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}
        assert not (tmp_path / "res" / "studies" / "team" / "mlflow.db").exists()  # nothing went to a local store
    finally:
        if server is not None:
            stop(server)
        if head is not None:
            stop(head, head_pids + descendants(head.pid))
