"""Running a study: Optuna samples designs, Ray Tune runs and early-stops them, MLflow records them.

    archspace study spaces/quickstart.yaml

Layout of a study directory (`<results>/studies/<space name>/`):

    study.json        which space (file and hash) this directory belongs to
    space.yaml        a copy of the space file as it was when the study started
    tune/             Ray Tune's experiment state (what `Tuner.restore` resumes from)
    trials/<id>/      one run directory per trial: resolved.yaml, history.csv, metrics.json, error.json
    mlflow.db         the embedded MLflow store (when no --tracking-uri is given), mlartifacts/ its artifacts
    report.md         the final table of designs, counts, and the Pareto front for several objectives
    summary.json      the same, machine-readable

Running the same command again resumes an interrupted study (Ctrl-C or a killed driver):
finished trials are kept, unfinished ones start again, and MLflow runs are reused by trial id.

Ray: by default archspace starts an embedded Ray sized to this machine and stops it at the end.
With `--ray-address HOST:PORT` it joins a running cluster instead, e.g. one started by

    ray start --head --node-ip-address=<ip> --port=6379 --num-cpus=<n> --include-dashboard=false

Since Ray 2.59 the head enables token authentication and writes the token to ~/.ray/auth_token;
every worker node (`ray start --address=<ip>:6379`) and every driver needs that token (copy the
file to the same place on each machine, or export RAY_AUTH_TOKEN). Workers import archspace, so it
must be installed in the workers' Python environment, and the results directory should be on a
file system that all nodes share (the driver reads trials/<id>/ to log kernel paths and files).

Several GPUs per trial (resources.gpus_per_trial >= 2) train with Lightning DDP: the design's
train.accelerator/train.devices are set from the space's resources.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError

OBJECT_STORE_BYTES = 256 * 1024 ** 2  # trials pass only small dicts; Ray's default would take 30% of RAM
EXPERIMENT_NAME = "tune"
# Test hook: "key=value:kind" (value "*" for any) makes the trials whose sampled `key` has that value fail
# at their start with kind nan (NonFiniteLoss), oom (MemoryError) or error (RuntimeError).
FAULT_ENV = "ARCHSPACE_STUDY_FAULT"
EXIT_OK, EXIT_ALL_FAILED, EXIT_INTERRUPTED = 0, 1, 130


# ----------------------------------------------------------------------------------------------
# The trial (runs inside a Ray worker; module level so Tuner.restore can import it)
# ----------------------------------------------------------------------------------------------
class TrialFailed(RuntimeError):
    """Raised by a trial with a one-line reason; the driver records it in MLflow."""


def _numbers(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _with_proxies(metrics: dict, elapsed: float) -> dict:
    """Intermediate reports carry every objective (Tune and OptunaSearch require it): train_wall_s is stood
    in for by the elapsed time, so a pruned trial reaches Optuna with its partial-budget values. (Objectives
    are validation metrics or static sizes; test metrics are reported once, at the trial's end.)"""
    out = dict(metrics)
    out.setdefault("train_wall_s", elapsed)
    return out


def _inject_fault(spec: Optional[str], values: dict) -> None:
    if not spec:
        return
    cond, _, kind = spec.rpartition(":")
    key, _, want = cond.partition("=")
    if key not in values or (want != "*" and str(values[key]) != want):
        return
    if kind == "nan":
        from ..training import NonFiniteLoss

        raise NonFiniteLoss(f"non-finite training loss (nan) at step 0 (injected by {FAULT_ENV})")
    if kind == "oom":
        raise MemoryError(f"injected by {FAULT_ENV}")
    raise RuntimeError(f"injected failure ({FAULT_ENV}={spec})")


def _reason(exc: BaseException) -> str:
    """One line: what kind of failure (non-finite loss, out of memory, invalid design, other) and its message."""
    training = sys.modules.get("archspace.training")  # not imported (and not worth importing) if training never ran
    torch = sys.modules.get("torch")
    oom = (MemoryError,) + ((torch.OutOfMemoryError,) if torch is not None else ())
    msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
    if training is not None and isinstance(exc, training.NonFiniteLoss):
        return f"non-finite loss: {msg}"
    if isinstance(exc, oom):
        return f"out of memory ({type(exc).__name__}): {msg}".rstrip(": ")
    if isinstance(exc, ConfigError):
        return f"invalid design: {msg}"
    return f"{type(exc).__name__}: {msg}".rstrip(": ")


def run_trial(config: dict, space=None, study_dir: str = "", execution: Optional[dict] = None) -> None:
    """Ray Tune function trainable: sampled values -> resolved design -> train() -> reports.

    Reports after every validation (the scheduler prunes on these; each report also carries the training
    curve since the previous one) and once more with the final, tested metrics plus `archspace/final = 1`.
    Every report names its attempt (this execution of the trial) and the step the attempt started from:
    a trial restarted after its driver was killed continues from its last checkpoint (start step > 0) and
    first reports the validations it already holds again, or starts over (start step 0); the driver's
    tracker keeps each step of a curve once, and gives a trial that starts over a clean MLflow run.
    A trial directory that already holds the final metrics.json of the same design is not trained again (a
    resumed study whose driver died just after a trial finished): only the final report is sent (the
    tracker takes the curve from history.csv). Failures write error.json with a one-line reason and
    error.log with the traceback, and raise TrialFailed.
    """
    import traceback

    from ray import tune

    from .seeds import replicate_values
    from .space import resolve_values, values_from_config
    from .tracking import ATTEMPT_KEY, FINAL_KEY, START_KEY, TRAIN_ROWS_KEY

    execution = dict(execution or {})
    fault = execution.pop("_fault", None)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(study_dir) / "trials" / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    last = run_dir / "checkpoints" / "last.ckpt"
    attempt = {ATTEMPT_KEY: f"{os.getpid()}-{time.time_ns()}", START_KEY: 0.0}

    def report(step: int, metrics: dict) -> None:
        rows = metrics.pop("train_rows", [])
        out = _with_proxies(_numbers(metrics), time.perf_counter() - t0)
        tune.report({**out, "step": float(step), **attempt, TRAIN_ROWS_KEY: json.dumps(rows)})

    held = None
    try:
        held = _hold_trial_dir(run_dir)
        values = values_from_config(space, config)
        resolved = resolve_values(space, {**values, **execution, **replicate_values(space, config)})
        done = run_dir / "metrics.json"
        final = None
        if done.exists():
            try:
                saved = json.loads(done.read_text())
                if (saved.get("design_hash") == resolved.design_hash and "test/acc" in saved
                        and saved.get("status", "finished") == "finished"):
                    final = saved
            except ValueError:
                final = None
        if final is None:
            (run_dir / "error.json").unlink(missing_ok=True)
            (run_dir / "error.log").unlink(missing_ok=True)
            _inject_fault(fault, values)
            if space.mad is not None:
                final = _mad_trial(space, resolved, run_dir, t0, attempt)
            else:
                from ..training import checkpoint_step, train

                attempt[START_KEY] = float(checkpoint_step(last)) if last.is_file() else 0.0
                final = train(resolved, run_dir, progress=False, report=report, resume=True)
    except Exception as exc:
        reason = _reason(exc)
        (run_dir / "error.json").write_text(json.dumps({"reason": reason, "type": type(exc).__name__}, indent=2))
        (run_dir / "error.log").write_text(traceback.format_exc())
        raise TrialFailed(reason) from None  # the traceback is in error.log, not in the study's output
    finally:
        if held is not None:
            os.close(held)
    out = _numbers(final)
    out["step"] = float(final.get("steps", 0))
    out[FINAL_KEY] = 1.0
    tune.report({**out, **attempt})


def _hold_trial_dir(run_dir: Path, patience_s: float = 120.0) -> int:
    """An exclusive flock on trials/<id>/trial.lock for this attempt: a worker of a killed driver that Ray
    has not stopped yet must not write into the directory of the attempt that replaces it. Waits for it to
    end (Ray stops the actors of a dead driver, the next driver kills what it recorded) up to patience_s."""
    import fcntl

    fd = os.open(run_dir / "trial.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"another process still runs this trial in {run_dir} after {patience_s:g} s "
                                   "(a worker of a killed driver?)") from None
            time.sleep(0.2)



def _mad_trial(space, resolved, run_dir: Path, t0: float, attempt: dict) -> dict:
    """A MAD-score trial: the lr x weight-decay sweep over every MAD task (archspace.tasks.mad_score).

    After each task it reports `val/mad_score`, the validation MAD score over the tasks finished so far (the
    pruner's intermediate metric; trials are compared after the same tasks), and at the end the validation
    scores `val/mad_score`, `val/mad/<task>` (what the study selects on), the test scores `mad_score`,
    `mad/<task>` and the design's size; metrics.json holds them with `val/acc` and `test/acc` = the MAD scores.
    """
    from ray import tune

    from ..blocks.model import SequenceModel
    from ..tasks.mad_score import evaluate

    cfg = space.mad
    cost = SequenceModel.cost_of(resolved.model, 128)
    from ..training import budget_static

    static = {"params": cost.params, "active_params": cost.active, "state_size": cost.state,
              "flops_per_token": cost.flops_per_token, **budget_static(cost, resolved.model)}
    done: list = []

    def on_task(task: str, scores: dict) -> None:
        done.append(scores["val"])
        partial = {**static, "val/mad_score": sum(done) / len(done), f"val/mad/{task}": scores["val"]}
        tune.report({**_with_proxies(partial, time.perf_counter() - t0), "step": float(len(done)), **attempt})

    result = evaluate(resolved, run_dir / "mad", tasks=cfg["tasks"], which=cfg["settings"], budget=cfg["budget"],
                      lrs=cfg["lrs"], wds=cfg["weight_decays"], log=None, on_task=on_task)
    final = {**static, "mad_score": result["mad_score"], "test/acc": result["mad_score"],
             "val/mad_score": result["val_mad_score"], "val/acc": result["val_mad_score"],
             **{f"mad/{k}": v for k, v in result["tasks"].items()},
             **{f"val/mad/{k}": v for k, v in result["val_tasks"].items()},
             "steps": len(result["runs"]), "train_wall_s": result["wall_s"], "design_hash": resolved.design_hash,
             "data_hash": result.get("data_hash", "")}
    (run_dir / "resolved.yaml").write_text(resolved.to_yaml())
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2))
    return final


def trial_dirname(trial) -> str:
    """Tune's per-trial directory: just the trial id (the default name embeds the whole config)."""
    return trial.trial_id


# ----------------------------------------------------------------------------------------------
# Study directory
# ----------------------------------------------------------------------------------------------
def results_root(cli_dir: Optional[str], space) -> Path:
    root = cli_dir or space.results_dir or os.environ.get("ARCHSPACE_RESULTS") or "results"
    return Path(root).expanduser().absolute()


def choose_study_dir(space, root: Path, fresh: bool) -> Path:
    """<root>/studies/<name>/, or a new <name>-<k>/ with --fresh. Never deletes recorded results."""
    base = root / "studies" / space.name
    if fresh:
        if not base.exists():
            return base
        k = 2
        while (base.parent / f"{space.name}-{k}").exists():
            k += 1
        return base.parent / f"{space.name}-{k}"
    meta = base / "study.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = {}
        if old.get("space_hash") != space.space_hash:
            raise ConfigError(
                f"the study directory {base} holds a study of a different space (hash {old.get('space_hash')} from "
                f"{old.get('space_file')}; this space has hash {space.space_hash})", file=space.file,
                hint="Rerun with --fresh to start a new study directory next to it (nothing is deleted), "
                     "or give another --results-dir")
    return base


def _write_study_meta(study_dir: Path, space) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    meta = study_dir / "study.json"
    if not meta.exists():
        meta.write_text(json.dumps({"name": study_dir.name, "space_file": space.file, "space_hash": space.space_hash,
                                    "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
        try:
            (study_dir / "space.yaml").write_text(Path(space.file).read_text())
        except OSError:
            pass


class StudyLock:
    """One driver per study directory: an exclusive `flock` on <study>/study.lock for the driver's lifetime.

    The kernel drops the lock when the process ends however it ends (kill -9 included), so a lock left by
    a killed driver is never stale; the file's text (pid, host, start, command) only names the owner in the
    message a second driver gets. The descriptor is not inherited by the processes the driver starts.
    """

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / "study.lock"
        self.fd: Optional[int] = None
        self.previous: dict = {}  # the owner the file named before us (a driver that was killed)

    def acquire(self, space) -> "StudyLock":
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_json_text(os.pread(fd, 4096, 0))
            os.close(fd)
            who = (f"process {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')}: "
                   f"{owner.get('command')})" if owner else "another process")
            raise ConfigError(f"the study directory {self.path.parent} is in use by {who}; two drivers of one "
                              "study would train the same trials twice", file=space.file,
                              hint="Wait for it to finish (or stop it: Ctrl-C), then run the same command to "
                                   "resume; or give this one another --results-dir") from None
        self.previous = _read_json_text(os.pread(fd, 4096, 0))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _read_json_text(raw: bytes) -> dict:
    try:
        value = json.loads(raw.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_servers(ray_address: Optional[str], tracking_uri: Optional[str], timeout: float = 5.0) -> None:
    """Refuse an unreachable --ray-address or --tracking-uri before anything starts (exit 2): left to Ray and
    MLflow, a closed port meant minutes of silent retries and then a page of chained tracebacks."""
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    if ray_address and ray_address != "auto":
        target = ray_address.split("://", 1)[-1]
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--ray-address {ray_address!r} must look like HOST:PORT (the head's GCS port, e.g. "
                              "10.0.0.5:6379) or ray://HOST:PORT", file="<command line>")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {ray_address} within {timeout:g} s "
                              f"({exc.strerror or exc})", file="<command line>",
                              hint="Check the address (`ray status` on the head) and that the port is open "
                                   "from this machine") from None
    if not tracking_uri:
        return
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                resp.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ConfigError(f"cannot reach the MLflow tracking server at {tracking_uri} within {timeout:g} s "
                              f"({reason})", file="<command line>",
                              hint="Start it (`mlflow server --host 0.0.0.0 --port 5000 ...`) or leave "
                                   "--tracking-uri out to use the study's own mlflow.db") from None
    elif scheme == "file":
        raise ConfigError(f"--tracking-uri {tracking_uri}: MLflow 3 does not accept file: stores", file="<command line>",
                          hint="Use sqlite:///ABSOLUTE/PATH/mlflow.db or a server URL")


# ----------------------------------------------------------------------------------------------
# Ray processes we start (cleaned up by PID if a driver died)
# ----------------------------------------------------------------------------------------------
def _start_time(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class RayProcesses:
    """Records the processes of the embedded Ray in <study>/ray_processes.json (PID + start time)."""

    def __init__(self, study_dir: Path):
        self.path = study_dir / "ray_processes.json"
        self.me = os.getpid()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def reap_leftovers(self) -> list[int]:
        """Kill the processes a dead earlier driver of this study left behind; return their PIDs."""
        if not Path("/proc").exists() or not self.path.exists():
            return []
        try:
            rec = json.loads(self.path.read_text())
        except ValueError:
            return []
        if _start_time(rec.get("driver", -1)) == rec.get("driver_start"):
            return []  # that driver is still alive (another session runs this study)
        killed = []
        for pid, start in rec.get("pids", []):
            if pid != self.me and _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    pass
        self.path.unlink(missing_ok=True)
        return killed

    def record(self) -> None:
        if not Path("/proc").exists():
            return
        pids = [[p, _start_time(p)] for p in _descendants(self.me)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": self.me, "driver_start": _start_time(self.me),
                                   "pids": [p for p in pids if p[1]]}))
        tmp.replace(self.path)

    def start(self, every: float = 5.0) -> None:
        self.record()

        def loop():
            while not self._stop.wait(every):
                try:
                    self.record()
                except OSError:
                    pass

        self._thread = threading.Thread(target=loop, name="archspace-ray-pids", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """After ray.shutdown(): kill whatever of ours is still alive and forget the record."""
        self._stop.set()
        if not self.path.exists():
            return
        try:
            rec = json.loads(self.path.read_text())
        except ValueError:
            rec = {}
        for pid, start in rec.get("pids", []):
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.path.unlink(missing_ok=True)


def prepare_ray_auth(address: Optional[str]) -> None:
    """A `ray start --head` cluster (Ray >= 2.59) requires its token, and a driver sends it only in
    token mode, which it does not pick by itself: use token mode whenever a token is at hand.
    Ray reads this setting when it is imported, so this runs before `import ray`."""
    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def start_ray(address: Optional[str]) -> float:
    """Start an embedded Ray (or connect to `address`); return the seconds it took."""
    import ray

    t0 = time.perf_counter()
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True, namespace="archspace")
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError) as exc:
            last = [ln for ln in str(exc).splitlines() if ln.strip()][-1:] or [type(exc).__name__]
            raise ConfigError(f"cannot join the Ray cluster at {address}: {last[0][:300]}", file="<command line>",
                              hint="Check the address (`ray status` on the head) and that this machine has the "
                                   "cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN") from None
    else:
        # address="local": always a new instance, even when RAY_ADDRESS or a `ray start` of someone else
        # on this machine (/tmp/ray/ray_current_cluster) would make a bare ray.init() join theirs.
        # worker_niceness 0: Ray starts its workers at nice 15 by default, so on a machine shared with other work
        # every trial ran at a fraction of the CPU a plain `archspace train` gets (measured under a load average of
        # 12-18 on 2 cores: 2.8 s per step of a trial against 0.36 s for the same training outside Ray;
        # benchmarks/bench_concurrent_trials.py). The trials are this driver's work, not background tasks.
        local = dict(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, _system_config={"worker_niceness": 0}, **common)
        try:
            ray.init(**local)
        except Exception as exc:  # noqa: BLE001 - only Ray's startup timeout is retried
            # Ray gives its raylet 30 s to register; on an overloaded machine (seen at load 16 on 2 cores)
            # that can pass. One more start, from scratch, before giving up.
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            ray.init(**local)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Tune pieces
# ----------------------------------------------------------------------------------------------
def _max_reports(space) -> int:
    """Upper bound of a trial's reports (validations + the final one): max_t of the schedulers."""
    train = space.base.get("train") or {}
    if train.get("tokens") is not None or train.get("flops") is not None or any(
            tuple(a.path) in (("train", "tokens"), ("train", "flops")) for a in space.axes):
        return 10 ** 6  # each design's steps follow its budget (archspace.budget): no cap from here
    steps = [train.get("max_steps", 2000)]
    every = [train.get("eval_every", 250)]
    for a in space.axes:
        target = {("train", "max_steps"): steps, ("train", "eval_every"): every}.get(tuple(a.path))
        if target is not None:
            target.extend(a.choices if a.kind == "choice" else [a.low, a.high])
    return max(2, math.ceil(max(steps) / max(1, min(every))) + 1)


def make_scheduler(space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    pr = space.pruner
    kind = pr.get("kind", "none")
    if kind == "none":
        return FIFOScheduler()
    common = dict(time_attr="training_iteration", metric=pr["metric"], mode=pr["mode"])
    if kind == "median":
        return MedianStoppingRule(grace_period=float(pr["grace_period"]), min_samples_required=3, **common)
    max_t = max(_max_reports(space), int(pr["grace_period"]) + 1)
    if kind == "hyperband":
        # Asynchronous HyperBand (several ASHA brackets): the synchronous HyperBandScheduler pauses and
        # resumes trials, which needs checkpoint-resumable trials; this one only stops them.
        return ASHAScheduler(max_t=max_t, grace_period=int(pr["grace_period"]),
                             reduction_factor=int(pr["reduction_factor"]), brackets=3, **common)
    return ASHAScheduler(max_t=max_t, grace_period=int(pr["grace_period"]),
                         reduction_factor=int(pr["reduction_factor"]), **common)


def make_searcher(space):
    from ray.tune.search.optuna import OptunaSearch

    from .space import define_by_run, make_sampler

    metrics = [o.metric for o in space.objectives]
    modes = [o.mode for o in space.objectives]
    if len(metrics) == 1:
        metrics, modes = metrics[0], modes[0]
    searcher = OptunaSearch(partial(define_by_run, space), metric=metrics, mode=modes, sampler=make_sampler(space),
                            seed=space.seed)
    if space.seeds > 1:
        from .seeds import Replicates

        return Replicates(searcher, space.seeds)
    return searcher


def execution_values(space) -> dict:
    """Train-section values that come from the resources, not from the search: threads and devices."""
    out: dict[str, Any] = {"train.threads": max(1, int(space.cpus_per_trial))}
    if space.gpus_per_trial > 0:
        out["train.accelerator"] = "gpu"
        out["train.devices"] = max(1, int(space.gpus_per_trial))
    return out


# ----------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------
@dataclass
class StudyOutcome:
    exit_code: int
    study_dir: Path
    tracking_uri: str
    summary: dict
    ray_start_s: float
    wall_s: float


def run_study(space, *, results_dir: Optional[str] = None, ray_address: Optional[str] = None,
              tracking_uri: Optional[str] = None, max_concurrent: Optional[int] = None, fresh: bool = False,
              console=None, live: Optional[bool] = None) -> StudyOutcome:
    """Run (or resume) a study of `space`; print the live view, the final table and write report.md."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    t_start = time.perf_counter()
    check_servers(ray_address, tracking_uri)
    root = results_root(results_dir, space)
    study_dir = choose_study_dir(space, root, fresh)
    lock = StudyLock(study_dir).acquire(space)
    try:
        return _run_locked(space, study_dir, root=root, results_dir=results_dir, ray_address=ray_address,
                           tracking_uri=tracking_uri, max_concurrent=max_concurrent, console=console, live=live,
                           t_start=t_start)
    finally:
        lock.release()


def _run_locked(space, study_dir: Path, *, root: Path, results_dir, ray_address, tracking_uri,
                max_concurrent, console, live, t_start) -> StudyOutcome:
    """run_study's body, run while this driver holds the study directory's lock."""
    _write_study_meta(study_dir, space)
    study_id = study_dir.name
    uri = tracking_uri or default_tracking_uri_for(study_dir)
    procs = RayProcesses(study_dir)
    leftovers = procs.reap_leftovers() if not ray_address else []
    if leftovers:
        console.print(f"stopped {len(leftovers)} Ray processes left by an earlier driver of this study")

    prepare_ray_auth(ray_address)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # A tracking server that goes away mid-study costs a few retries per call, not minutes (the defaults);
    # tracking problems are counted and shown at the end, and the study goes on.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # small window between a trial ending and the state on disk
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    import ray
    from ray import tune

    from .progress import ProgressCallback, StudyView, rich_table, report_markdown, summarize, trial_row
    from .ray_adapter import experiment_trials, swap_callbacks
    from .tracking import MlflowCallback, StudyTracker, trial_state

    for name in ("mlflow", "optuna", "alembic", "ray", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Opening (or creating) the MLflow store takes seconds, like starting Ray: do both at once.
    made: dict = {}

    def open_tracker():
        try:
            made["tracker"] = StudyTracker(uri, study_id, str(study_dir), space, artifact_location=(
                (study_dir / "mlartifacts").as_uri() if not tracking_uri else None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            made["error"] = exc

    opener = threading.Thread(target=open_tracker, name="archspace-mlflow-open", daemon=True)
    opener.start()
    ray_start_s = start_ray(ray_address)
    # A failed trial is one line of the study view; its traceback is in trials/<id>/error.log. Tune would
    # log it again at ERROR level (about 40 lines per trial) and repeat the ids at the end.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    _dbg(t_start, "ray started")
    opener.join()
    _dbg(t_start, "tracker ready")
    if "error" in made:
        import ray as _ray

        _ray.shutdown()
        raise made["error"]
    tracker = made["tracker"]
    if not ray_address:
        procs.start()
    try:
        total_cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
        concurrency = max_concurrent or space.max_concurrent or max(1, int(total_cpus // space.cpus_per_trial))
        view = StudyView(space, str(study_dir), console=console, live=live)
        callbacks = [MlflowCallback(tracker), ProgressCallback(view)]
        resources = {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial}
        execution = execution_values(space)
        if os.environ.get(FAULT_ENV):
            execution["_fault"] = os.environ[FAULT_ENV]
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, space=space, study_dir=str(study_dir), execution=execution), resources)
        exp_path = study_dir / EXPERIMENT_NAME
        resumed = tune.Tuner.can_restore(str(exp_path))
        if resumed:
            tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=False)
            swap_callbacks(tuner, callbacks)  # those pickled with the first run belong to a dead driver
            console.print(f"resuming study {study_id} from {study_dir}")
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_searcher(space), scheduler=make_scheduler(space),
                                            num_samples=space.trials * space.seeds, max_concurrent_trials=concurrency,
                                            reuse_actors=True, trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=str(study_dir), verbose=0,
                                          callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=0)),
            )
        console.print(f"study {study_id}: {space.trials} trials" + (f" x {space.seeds} seeds" if space.seeds > 1 else "")
                      + f", sampler {space.sampler}, pruner "
                      f"{space.pruner.get('kind')}, up to {concurrency} at a time x {space.cpus_per_trial:g} CPU"
                      + (f" + {space.gpus_per_trial:g} GPU" if space.gpus_per_trial else "")
                      + f"; Ray {'at ' + ray_address if ray_address else 'embedded'} ({ray_start_s:.1f} s); "
                        f"MLflow {uri}")
        view.start()
        try:
            tuner.fit()
        finally:
            view.stop()
        _dbg(t_start, "fit returned")
        trials = experiment_trials(tuner)
        rows = [trial_row(t, space, str(study_dir)) for t in trials]
        summary = summarize(rows, space)
        summary["study"] = study_id
        unfinished = [t for t in trials if trial_state(t) in ("running", "pending")]
        interrupted = bool(unfinished) or len(trials) < space.trials * space.seeds
        wall = time.perf_counter() - t_start
        report = report_markdown(summary, space, study_dir=str(study_dir), tracking_uri=uri, wall_s=wall)
        (study_dir / "report.md").write_text(report)
        (study_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _dbg(t_start, "rows")
        tracker.reconcile(trials)
        _dbg(t_start, "reconciled")
        if interrupted:
            tracker.interrupted()
        else:
            tracker.finish_study(summary, report)
        cb_errors = callbacks[0].errors
        if cb_errors:
            console.print(f"[yellow]MLflow tracking had {len(cb_errors)} problem(s); first: {cb_errors[0]}[/yellow]")
        console.print(rich_table(summary, space))
        c = summary["counts"]
        console.print(f"trials: completed {c['completed']}, pruned {c['pruned']}, failed {c['failed']}"
                      + (f", unfinished {len(unfinished)}" if unfinished else "") + f"  ({wall:.1f} s)")
        if summary["pareto"]:
            console.print("Pareto front: " + ", ".join(r["trial_id"] for r in summary["pareto"]))
        console.print(f"report: {study_dir / 'report.md'}")
        if uri.startswith("sqlite:"):
            console.print(f"MLflow store: {uri}\n  open it with: mlflow ui --backend-store-uri {uri}", soft_wrap=True)
        else:
            console.print(f"MLflow: {uri} (experiment {study_id})")
        if interrupted:
            code = EXIT_INTERRUPTED
            console.print(f"[yellow]study interrupted; state saved in {exp_path}.[/yellow] Resume it with the same "
                          f"command: archspace study {space.file}"
                          + (f" --results-dir {root}" if results_dir else ""))
        else:
            code, lines = failure_verdict(summary)
            for line in lines:
                console.print(line)
        return StudyOutcome(code, study_dir, uri, summary, ray_start_s, wall)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not ray_address:
            procs.finish()
        _dbg(t_start, "ray stopped")


def failure_verdict(summary: dict) -> tuple[int, list[str]]:
    """The exit code of a study that ran to its end, and the lines that close it: EXIT_ALL_FAILED with one
    line per failure reason ("2 x out of memory (MemoryError): ...") when no trial completed or was pruned,
    else EXIT_OK and nothing."""
    c = summary["counts"]
    if c["completed"] + c["pruned"]:
        return EXIT_OK, []
    return EXIT_ALL_FAILED, ([f"[red]all {summary['total']} trials failed.[/red] Reasons:"]
                             + [f"  {n} x {reason}" for reason, n in summary["failures"].items()])


def _dbg(t0, what):
    if os.environ.get("ARCHSPACE_DEBUG_TIMING"):
        print(f"[timing] {time.perf_counter() - t0:7.2f}s {what}", file=sys.stderr, flush=True)


def default_tracking_uri_for(study_dir: Path) -> str:
    from .tracking import default_tracking_uri

    return default_tracking_uri(study_dir)

