"""`archspace dashboard STUDY [STUDY ...]`: write each study's report, then serve its MLflow store with the MLflow
UI on 127.0.0.1 until Ctrl-C.

Each study has its own store (`<study>/mlflow.db`) unless the studies ran against a tracking server
(`--tracking-uri`, whose own UI is then the dashboard). One `mlflow server` per store, on consecutive ports from
`--port`, each in its own process group (so a terminal's Ctrl-C reaches archspace, which then stops them and waits
for them: nothing is left running). Job execution is off (MLflow 3's server otherwise leaves about 1.8 GB of
processes behind), one worker each.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from archspace.errors import ConfigError

from .data import Study, load_study, locate

READY_TIMEOUT_S = 180.0


@dataclass
class UIServer:
    uri: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_ui(uri: str, host: str, port: int, log: Path) -> UIServer:
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--backend-store-uri", uri,
           "--workers", "1"]
    # The study's experiment carries its own artifact location (<study>/mlartifacts, a file: URI): the server
    # reads those directly, so no --default-artifact-root is needed for the study's runs.
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=str(log.parent))
    return UIServer(uri=uri, port=port, proc=proc, log=log)


def wait_ready(server: UIServer, timeout: float = READY_TIMEOUT_S) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if server.proc.poll() is not None:
            tail = server.log.read_text()[-1500:] if server.log.exists() else ""
            raise RuntimeError(f"the MLflow UI for {server.uri} exited with code {server.proc.returncode}:\n{tail}")
        try:
            if urllib.request.urlopen(f"{server.url}/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow UI for {server.uri} did not answer on {server.url} within {timeout:.0f} s "
                       f"(log: {server.log})")


def stop_ui(server: UIServer, grace: float = 15.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds; waits for it."""
    if server.proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.proc.pid, sig)
        except OSError:
            pass
        try:
            server.proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # workers that outlived their parent are still in the group
        os.killpg(server.proc.pid, signal.SIGKILL)
    except OSError:
        pass


def run_dashboard(targets: list[str], *, results_dir: Optional[str] = None, host: str = "127.0.0.1",
                  port: int = 5000, ui: bool = True, tracking_uri: Optional[str] = None, starts: Optional[int] = None,
                  echo: Callable[[str], None] = print) -> int:
    from .report import build_report

    studies: list[Study] = [load_study(locate(t, results_dir, runs=False)) for t in targets]
    experiments: dict[str, Optional[str]] = {}
    for study in studies:
        t0 = time.perf_counter()
        rep = build_report(study, tracking_uri=tracking_uri, starts=starts)
        echo(f"study {study.name}: report {rep.html_path} ({len(rep.plots)} plots, {time.perf_counter() - t0:.1f} s)"
             + (f"; scaling fits {rep.scaling_json}" if rep.scaling_json else ""))
        if rep.mlflow_run_id:
            echo(f"  logged on the study's MLflow parent run {rep.mlflow_run_id}")
        for w in rep.warnings:
            echo(f"  warning: {w}")
        experiments[study.name] = rep.mlflow_experiment_id
    if not ui:
        return 0
    if tracking_uri and not tracking_uri.startswith("sqlite:"):
        echo(f"the studies are tracked on {tracking_uri}: open its UI there")
        return 0
    stores: list[tuple[str, list[Study]]] = []
    for study in studies:
        uri = tracking_uri or study.tracking_uri
        if not uri.startswith("sqlite:") or not Path(uri[len("sqlite:///"):]).exists():
            raise ConfigError(f"study {study.name} has no MLflow store at {uri}", file="<command line>",
                              hint="A study that ran against a tracking server: give --tracking-uri")
        for u, group in stores:
            if u == uri:
                group.append(study)
                break
        else:
            stores.append((uri, [study]))
    for i in range(len(stores)):
        if not port_free(host, port + i):
            raise ConfigError(f"port {port + i} on {host} is in use", file="<command line>",
                              hint="Choose another with --port")
    servers: list[UIServer] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        for i, (uri, group) in enumerate(stores):
            servers.append(start_ui(uri, host, port + i, group[0].dir / "mlflow-ui.log"))
        for server, (uri, group) in zip(servers, stores):
            wait_ready(server)
            for study in group:
                exp = experiments.get(study.name)
                echo(f"MLflow UI for study {study.name}: {server.url}" + (f"/#/experiments/{exp}" if exp else "")
                     + f"  (server pid {server.proc.pid})")
        echo("Ctrl-C stops the dashboard.")
        while True:
            for server in servers:
                if server.proc.poll() is not None:
                    echo(f"the MLflow UI for {server.uri} stopped by itself (code {server.proc.returncode}); "
                         f"log: {server.log}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("stopping the MLflow UI ...")
        return 0
    except RuntimeError as exc:
        echo(f"error: {exc}")
        return 1
    finally:
        for server in servers:
            stop_ui(server)
        signal.signal(signal.SIGTERM, previous)
        if servers:
            echo("dashboard stopped")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
