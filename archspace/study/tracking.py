"""MLflow tracking of a study, written from the driver (never from trial workers).

One MLflow experiment per study, one parent run per study (found again by the tag
`archspace.study`), one child run per trial (tag `mlflow.parentRunId`, found again by the tag
`archspace.trial_id`). Because runs are looked up by those tags before any is created, a study
resumed after Ctrl-C or `kill -9` reuses its runs instead of duplicating them.

Statuses: FINISHED (trained to the end), KILLED with tag `archspace.status=pruned` (stopped early by
the scheduler), FAILED with tag `archspace.error` (exception, non-finite loss, out of memory).

Curves: every validation report carries the validation metrics at its step and the training curve since
the previous report (`train/loss`, `train/aux_loss` every 10 steps). Each metric's steps are logged once
and in increasing order: a trial that resumes from its checkpoint after the driver was killed reports the
validations it already holds again, and the steps already in MLflow are skipped. A trial that has to start
over (no checkpoint) gets a clean run; the run of the attempt that was killed is tagged
`archspace.status=restarted` and soft-deleted (`mlflow runs restore` brings it back).

Ray's MLflowLoggerCallback and Lightning's MLFlowLogger are deliberately not used: both open new
runs after a restore and run inside workers, which need the tracking store to be reachable from
every node. Here only the driver talks to MLflow.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

# Keys of a Tune result that are Tune's own bookkeeping, not archspace metrics.
FINAL_KEY = "archspace/final"  # 1.0 on the report sent after testing: the trial ran to the end
ATTEMPT_KEY = "archspace/attempt"  # which execution of the trial sent the report (one per restart)
START_KEY = "archspace/start_step"  # the step that execution started from (0: from scratch)
TRAIN_ROWS_KEY = "archspace/train_rows"  # JSON list of the training-curve rows since the previous report
STEP_METRIC_PREFIXES = ("val/", "train/", "test/")
MAD_PREFIXES = ("mad_score", "mad/")  # a MAD-score study reports these as each task finishes
STEP_METRICS = ("throughput_tok_s", "tokens", "train_flops")
STATIC_KEYS = ("params", "active_params", "state_size", "flops_per_token", "params_non_embedding",
               "train_flops_per_token")
FINAL_EXTRA = ("steps", "train_wall_s", "throughput_tok_s", "tokens", "train_flops")

_BAD = re.compile(r"[^/\w.\- :]")


def mlflow_name(name: str) -> str:
    """A param/metric name MLflow accepts: characters outside [/ \\w . - : space] become '_'."""
    out = _BAD.sub("_", str(name))
    out = re.sub(r"/{2,}", "/", out).strip("/") or "_"
    return "/".join(p if p not in (".", "..") else "_" for p in out.split("/"))


def default_tracking_uri(study_dir: Path) -> str:
    """The embedded store: an absolute sqlite URI (MLflow 3 refuses file: stores)."""
    return f"sqlite:///{Path(study_dir).absolute() / 'mlflow.db'}"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# ----------------------------------------------------------------------------------------------
# What happened to a trial (shared by tracking, the live view and the final report)
# ----------------------------------------------------------------------------------------------
def trial_run_dir(study_dir: str | Path, trial_id: str) -> Path:
    return Path(study_dir) / "trials" / trial_id


def failure_reason(trial, study_dir: str | Path) -> str:
    """One line saying why a trial failed: the trial's error.json, else the last line of Ray's trace."""
    path = trial_run_dir(study_dir, trial.trial_id) / "error.json"
    try:
        return json.loads(path.read_text())["reason"]
    except (OSError, ValueError, KeyError):
        pass
    text = None
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - storage may be gone; fall back to a generic reason
        text = None
    if text:
        lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and not ln.startswith("Failure #")]
        if lines:
            last = lines[-1]
            if "OutOfMemoryError" in str(text) and "out of memory" not in last.lower():
                last = f"out of memory: {last}"
            return last[:500]
    return "the trial failed (no error text was recorded)"


def history_reports(run_dir: Path) -> list[tuple[int, dict, list]]:
    """(step, validation metrics, training-curve rows since the previous validation) of a run's history.csv."""
    import csv

    try:
        with open(Path(run_dir) / "history.csv", newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    except (OSError, ValueError):
        return []
    out, since = [], []
    for row in rows:
        step = int(row.pop("step", 0))
        if any(k.startswith("val/") for k in row):
            out.append((step, row, since))
            since = []
        elif "train/loss" in row:
            since.append({"step": step, **row})
    return out


def ended_state(trial) -> str:
    """completed (reported its final, tested metrics) or pruned (stopped before): for a trial that ended without error."""
    return "completed" if (trial.last_result or {}).get(FINAL_KEY) == 1 else "pruned"


def trial_state(trial) -> str:
    """completed | pruned | failed | running | pending."""
    status = trial.status
    if status == "ERROR":
        return "failed"
    if status == "TERMINATED":
        return ended_state(trial)
    if status == "RUNNING":
        return "running"
    return "pending"


# ----------------------------------------------------------------------------------------------
# The tracker
# ----------------------------------------------------------------------------------------------
class StudyTracker:
    """Driver-side MLflow writer of one study."""

    def __init__(self, tracking_uri: str, study_id: str, study_dir: str, space, *, artifact_location: Optional[str] = None):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
        self.tracking_uri = tracking_uri
        self.study_id = study_id
        self.study_dir = str(study_dir)
        self.space = space
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(artifact_location)
        self.parent_run_id = self._parent_run()
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged_params: dict[str, set] = {}
        self._last_step: dict[str, int] = {}
        self._started: set[str] = set()
        self._attempts: dict[str, str] = {}  # trial id -> the attempt whose reports arrive
        self._logged_upto: dict[str, dict[str, int]] = {}  # trial id -> metric -> last step in MLflow

    # -------------------------------------------------------------------- experiment and runs
    def _experiment(self, artifact_location: Optional[str]) -> str:
        exp = self.client.get_experiment_by_name(self.study_id)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.study_id, artifact_location=artifact_location,
                                                 tags={"archspace.study": self.study_id})
        except Exception:  # noqa: BLE001 - created concurrently by another driver: use theirs
            exp = self.client.get_experiment_by_name(self.study_id)
            if exp is None:
                raise
            return exp.experiment_id

    def _find(self, tag: str, value: str, extra: str = "") -> Optional[str]:
        query = f"tags.`{tag}` = '{value}'" + extra
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=5,
                                       order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _parent_run(self) -> str:
        run_id = self._find("archspace.study", self.study_id, " and tags.`archspace.role` = 'study'")
        tags = {"archspace.study": self.study_id, "archspace.role": "study", "archspace.space_hash": self.space.space_hash,
                "archspace.space_file": self.space.file, "archspace.sampler": self.space.sampler,
                "archspace.objectives": ", ".join(f"{o.mode} {o.metric}" for o in self.space.objectives),
                "mlflow.runName": self.study_id}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study_id)
            run_id = run.info.run_id
            self.client.log_text(run_id, Path(self.space.file).read_text() if Path(self.space.file).exists() else "",
                                 "space.yaml")
            self.client.log_batch(run_id, params=[_param("sampler", self.space.sampler), _param("seed", self.space.seed),
                                                  _param("trials", self.space.trials),
                                                  _param("pruner", self.space.pruner.get("kind"))]
                                 + ([_param("seeds", self.space.seeds)] if self.space.seeds > 1 else []))
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def run_of(self, trial_id: str) -> str:
        """The child run of a trial: found by its trial id, created once."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        run_id = self._find("archspace.trial_id", trial_id, f" and tags.`archspace.study` = '{self.study_id}'")
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=trial_id,
                tags={"mlflow.parentRunId": self.parent_run_id, "archspace.trial_id": trial_id,
                      "archspace.study": self.study_id, "archspace.role": "trial",
                      "archspace.run_dir": str(trial_run_dir(self.study_dir, trial_id))})
            run_id = run.info.run_id
            self._logged_params[trial_id] = set()
        else:
            self._logged_params[trial_id] = set(self.client.get_run(run_id).data.params)
        self._runs[trial_id] = run_id
        return run_id

    def _log_params(self, trial_id: str, params: dict) -> None:
        run_id = self.run_of(trial_id)
        done = self._logged_params.setdefault(trial_id, set())
        new = [_param(k, v) for k, v in params.items() if mlflow_name(k) not in done]
        for i in range(0, len(new), 90):
            self.client.log_batch(run_id, params=new[i:i + 90])
        done.update(p.key for p in new)

    def _log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_name(k), float(v), now, int(step)) for k, v in metrics.items() if is_number(v)]
        for i in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[i:i + 900])

    # -------------------------------------------------------------------- trial events
    def trial_started(self, trial) -> None:
        """A trial began. Its run is created at its first result (see _ensure_started): a trial that
        starts just before the driver is killed may be missing from Tune's saved state, and on resume
        the searcher hands its values to a new trial id; deferring keeps such runs from being made."""
        self._started.discard(trial.trial_id)
        if trial.trial_id in self._runs or self._find(
                "archspace.trial_id", trial.trial_id, f" and tags.`archspace.study` = '{self.study_id}'"):
            self._ensure_started(trial)

    def _ensure_started(self, trial) -> None:
        if trial.trial_id in self._started:
            return
        self._started.add(trial.trial_id)
        from .space import resolve_values, values_from_config

        run_id = self.run_of(trial.trial_id)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "archspace.status", "running")
        from .seeds import replicate_values

        values = values_from_config(self.space, trial.config)
        self._log_params(trial.trial_id, {**values, **replicate_values(self.space, trial.config)})
        try:
            resolved = resolve_values(self.space, values)
        except Exception as exc:  # noqa: BLE001 - the trial itself will fail with this reason
            self.client.set_tag(run_id, "archspace.resolve_error", str(exc)[:5000])
            return
        self._log_params(trial.trial_id, {"design_hash": resolved.design_hash, "layout": resolved.layout})
        self.client.set_tag(run_id, "archspace.design_hash", resolved.design_hash)
        self.client.set_tag(run_id, "mlflow.runName", f"{trial.trial_id} {resolved.layout} {resolved.design_hash[:8]}")
        self.client.log_text(run_id, resolved.to_yaml(), "resolved.yaml")

    # -------------------------------------------------------------------- curves, once per step
    def _begin_attempt(self, trial, result: dict) -> None:
        """The first report of an execution of the trial: one that starts over while the trial's run
        already holds a curve gets a clean run (see the module notes)."""
        attempt = result.get(ATTEMPT_KEY)
        if attempt is None or self._attempts.get(trial.trial_id) == attempt:
            return
        self._attempts[trial.trial_id] = attempt
        if float(result.get(START_KEY) or 0) > 0:
            return
        run_id = self.run_of(trial.trial_id)
        if not self.client.get_run(run_id).data.metrics:
            return
        self.client.set_tag(run_id, "archspace.status", "restarted")
        self.client.set_terminated(run_id, status="KILLED")
        self.client.delete_run(run_id)
        for table in (self._runs, self._logged_params, self._logged_upto, self._last_step):
            table.pop(trial.trial_id, None)
        self._started.discard(trial.trial_id)
        self._ensure_started(trial)

    def _log_curve(self, trial_id: str, metrics: dict, step: int) -> None:
        """Log each metric at `step` unless the run holds that metric at this step or a later one."""
        run_id = self.run_of(trial_id)
        upto = self._logged_upto.setdefault(trial_id, {})
        new = {}
        for key, value in metrics.items():
            if not is_number(value):
                continue
            if key not in upto:  # first time in this driver: what an earlier driver logged
                history = self.client.get_metric_history(run_id, mlflow_name(key))
                upto[key] = max((m.step for m in history), default=-1)
            if step > upto[key]:
                new[key] = value
                upto[key] = step
        self._log_metrics(run_id, new, step)

    def _log_report(self, trial_id: str, step: int, metrics: dict, train_rows: list) -> None:
        """One validation report: the training-curve rows since the previous one, then the metrics at step."""
        for row in train_rows:
            self._log_curve(trial_id, {k: v for k, v in row.items() if k.startswith("train/")}, int(row["step"]))
        self._log_curve(trial_id, {k: v for k, v in metrics.items()
                                   if k.startswith(STEP_METRIC_PREFIXES[:2] + MAD_PREFIXES) or k in STEP_METRICS},
                        step)

    def trial_result(self, trial, result: dict) -> None:
        if result.get(FINAL_KEY) == 1:
            return  # logged by trial_finished with the final metrics
        self._ensure_started(trial)
        self._begin_attempt(trial, result)
        step = int(result.get("step", result.get("training_iteration", 0)))
        try:
            rows = json.loads(result.get(TRAIN_ROWS_KEY) or "[]")
        except (TypeError, ValueError):
            rows = []
        self._log_report(trial.trial_id, step, result, rows)
        self._last_step[trial.trial_id] = step
        if trial.trial_id not in self._logged_params or "params" not in self._logged_params[trial.trial_id]:
            self._log_params(trial.trial_id, {k: int(result[k]) for k in STATIC_KEYS if is_number(result.get(k))})

    def trial_finished(self, trial, state: Optional[str] = None) -> str:
        """Record the final state of a trial; return its state (completed/pruned/failed).

        Tune calls on_trial_complete while the trial is still RUNNING, so callers pass the state."""
        state = state or trial_state(trial)
        if state not in ("completed", "pruned", "failed"):
            return state
        self._ensure_started(trial)
        run_id = self.run_of(trial.trial_id)
        result = dict(trial.last_result or {})
        saved = _read_json(trial_run_dir(self.study_dir, trial.trial_id) / "metrics.json")
        static = {k: int(result[k]) for k in STATIC_KEYS if is_number(result.get(k))}
        self._log_params(trial.trial_id, static)
        if state == "completed":
            step = int(result.get("steps", result.get("step", 0)))
            # The val/ and train/ curves came with the validation reports, unless some were sent while no
            # driver listened (a trial that finished after its driver was killed): the trial's history.csv
            # fills them in (steps already logged are skipped). The final report adds test and totals.
            for at, metrics, rows in history_reports(trial_run_dir(self.study_dir, trial.trial_id)):
                self._log_report(trial.trial_id, at, metrics, rows)
            final = {k: v for k, v in result.items()
                     if k.startswith(("test/",) + MAD_PREFIXES) or k in STATIC_KEYS or k in FINAL_EXTRA}
            self._log_curve(trial.trial_id, final, step)
            extra = {"data_hash": saved.get("data_hash"), "kernel_paths": ",".join(saved.get("kernel_paths") or []) or None}
            self._log_params(trial.trial_id, {k: v for k, v in extra.items() if v})
            for key in ("data_hash", "kernel_paths"):
                if extra[key]:
                    self.client.set_tag(run_id, f"archspace.{key}", extra[key])
            run_dir = trial_run_dir(self.study_dir, trial.trial_id)
            for name in ("metrics.json", "history.csv"):
                if (run_dir / name).exists():
                    self.client.log_artifact(run_id, str(run_dir / name))
            self.client.set_tag(run_id, "archspace.status", "completed")
            self.client.set_terminated(run_id, status="FINISHED")
        elif state == "pruned":
            if "time_total_s" in result and is_number(result["time_total_s"]):
                self._log_metrics(run_id, {"train_wall_s": result["time_total_s"]}, int(result.get("step", 0)))
            self.client.set_tag(run_id, "archspace.status", "pruned")
            self.client.set_tag(run_id, "archspace.pruned_at_step", str(int(result.get("step", 0))))
            self.client.set_terminated(run_id, status="KILLED")
        else:
            reason = failure_reason(trial, self.study_dir)
            self.client.set_tag(run_id, "archspace.status", "failed")
            self.client.set_tag(run_id, "archspace.error", reason[:5000])
            self.client.set_terminated(run_id, status="FAILED")
        return state

    def reconcile(self, trials) -> None:
        """Make every finished trial's run agree with Tune's state (after a resume some events never fired),
        and retire orphans: RUNNING runs of trial ids that Tune's restored state does not know (their
        driver was killed before Tune saved them; the searcher re-issued their values under a new id).
        Orphans hold no results; they are soft-deleted (restorable with `mlflow runs restore`)."""
        known = {t.trial_id for t in trials}
        for run in self.children():
            tid = run.data.tags.get("archspace.trial_id")
            if tid and tid not in known and run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "archspace.status", "orphaned")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.delete_run(run.info.run_id)
                self._runs.pop(tid, None)
        for trial in trials:
            state = trial_state(trial)
            if state not in ("completed", "pruned", "failed"):
                continue
            run_id = self.run_of(trial.trial_id)
            run = self.client.get_run(run_id)
            want = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[state]
            if run.info.status != want or run.data.tags.get("archspace.status") != state:
                self.trial_finished(trial, state)

    # -------------------------------------------------------------------- study end
    def finish_study(self, summary: dict, report_md: str, status: str = "FINISHED") -> None:
        run_id = self.parent_run_id
        self.client.log_text(run_id, report_md, "report.md")
        self.client.log_text(run_id, json.dumps(summary, indent=2, default=str), "summary.json")
        counts = summary.get("counts", {})
        self._log_metrics(run_id, {f"trials_{k}": v for k, v in counts.items()}, 0)
        best = summary.get("best") or {}
        self._log_metrics(run_id, {f"best/{k}": v for k, v in (best.get("objectives") or {}).items()}, 0)
        if best.get("trial_id"):
            self.client.set_tag(run_id, "archspace.best_trial", best["trial_id"])
        if summary.get("pareto"):
            self.client.set_tag(run_id, "archspace.pareto_trials", ",".join(r["trial_id"] for r in summary["pareto"]))
        self.client.set_terminated(run_id, status=status)

    def interrupted(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="KILLED")

    def children(self) -> list:
        """All trial runs of this study (for tests and reports)."""
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                       max_results=10000)


def _param(key: str, value: Any):
    from mlflow.entities import Param

    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return Param(mlflow_name(key), text[:6000])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------
# The Tune callback
# ----------------------------------------------------------------------------------------------
class MlflowCallback(Callback):
    """Tune callback that forwards trial events to a StudyTracker (driver side).

    Tune pickles its run configuration (callbacks included) into the experiment directory; the live
    MLflow client is not pickled, and the runner hands a fresh callback to a restored Tuner.
    """

    def __init__(self, tracker: StudyTracker):
        self.tracker = tracker
        self.errors: list[str] = []  # tracking problems never stop a study; they are printed at the end

    def __getstate__(self):
        return {"tracker": None, "errors": []}

    def _safe(self, fn, *args):
        if self.tracker is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not kill the study
            self.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
            return None

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(self.tracker and self.tracker.trial_started, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safe(self.tracker and self.tracker.trial_result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe(self.tracker and self.tracker.trial_finished, trial, ended_state(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe(self.tracker and self.tracker.trial_finished, trial, "failed")
