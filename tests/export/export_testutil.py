"""Helpers of the export tests: the tiny design, the CLI, and fresh virtual environments without archspace
(torch only; torch + transformers) cached across test sessions under $ARCHSPACE_EXPORT_VENVS."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_ROOT = Path(os.environ.get("ARCHSPACE_EXPORT_VENVS", "/tmp/archspace-export-venvs"))
TORCH_PIN = "torch==2.13.0"  # an unpinned torch pulls a multi-GB CUDA build

TINY = """
schema_version: 1
name: tiny-hybrid
model:
  d_model: 16
  n_layers: 2
  hybrid: {pattern: MA}
  mixer: {preset: gated_deltanet, heads: 2}
  attention: {preset: attention, heads: 2}
task:
  vocab_size: 64
  train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
  test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 32}]
train:
  max_steps: 5
  batch_size: 16
  eval_every: 5
  warmup_steps: 1
  lr: 0.01
  checkpoint: false
"""


def run_cli(args: list[str], *, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ARCHSPACE_RESULTS", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    print(f"$ archspace {' '.join(args)} -> rc {proc.returncode} ({time.time() - t0:.1f} s)")
    print(proc.stdout[-3000:])
    print(proc.stderr[-3000:], file=sys.stderr)
    return proc


def resolve_text(text: str, tmp: Path, name: str = "design.yaml"):
    from archspace.compiler import resolve
    from archspace.grammar import load_design

    path = tmp / name
    path.write_text(text)
    design, _ = load_design(str(path))
    return path, resolve(design)


# ------------------------------------------------------------------------------ venvs
def _venv_ok(venv: Path, probe: str) -> bool:
    py = venv / "bin" / "python"
    if not py.exists():
        return False
    try:
        proc = subprocess.run([str(py), "-I", "-c", probe], capture_output=True, text=True, timeout=120, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def ensure_venv(name: str, packages: list[str], probe: str) -> Path:
    """VENV_ROOT/<name> with `packages` (reused if it exists and passes `probe`; built otherwise)."""
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    venv = VENV_ROOT / name
    with open(VENV_ROOT / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time across concurrent sessions
        if _venv_ok(venv, probe):
            return venv
        t0 = time.time()
        tmp = VENV_ROOT / f"{name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *packages],
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail(f"cannot build the {name} venv (pip install {' '.join(packages)}):\n{proc.stderr[-3000:]}")
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)
        if not _venv_ok(venv, probe):
            pytest.fail(f"the freshly built {name} venv at {venv} fails its probe: {probe}")
        print(f"built venv {venv} in {time.time() - t0:.0f} s")
        return venv


NO_ARCHSPACE = ("import importlib.util as u; "
                "assert u.find_spec('archspace') is None, 'archspace is importable'; ")


def run_isolated(python: Path, script: str, tmp: Path, env_extra: dict | None = None, timeout: float = 300) -> dict:
    """Run `script` with `python -I` from a directory outside the repository; it writes result.json."""
    work = tmp / f"isolated-{int(time.time() * 1e6)}"
    work.mkdir()
    (work / "script.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "ARCHSPACE"))}
    env.update(env_extra or {})
    t0 = time.time()
    proc = subprocess.run([str(python), "-I", "-W", "ignore", str(work / "script.py")], capture_output=True,
                          text=True, cwd=str(work), env=env, timeout=timeout)
    print(f"{python} script.py -> rc {proc.returncode} ({time.time() - t0:.1f} s)")
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:], file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "result.json").read_text()) if (work / "result.json").exists() else {}
