"""What a study or a run directory holds, read back for the report, the dashboard and `archspace compare`.

A study directory (`<results>/studies/<name>/`, written by archspace.study.runner) has study.json, space.yaml (the
space as it ran), summary.json (every trial's row: sampled values, status, final metrics), trials/<id>/ (each
trial's metrics.json and history.csv) and, by default, its MLflow store mlflow.db. A run directory (`archspace
train`'s, or a study's trials/<id>/) has resolved.yaml, metrics.json and history.csv.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from archspace.errors import ConfigError


def _err(message: str, hint: Optional[str] = None) -> ConfigError:
    return ConfigError(message, file="<command line>", hint=hint)


def is_study_dir(p: Path) -> bool:
    return (p / "study.json").is_file() and (p / "summary.json").is_file()


def is_run_dir(p: Path) -> bool:
    return (p / "metrics.json").is_file() and (p / "resolved.yaml").is_file()


def locate(target: str, results_dir: Optional[str] = None, *, runs: bool = True) -> Path:
    """A study (or, with runs=True, a run) directory: the path as given, else a name under the results root
    (`--results-dir`, $ARCHSPACE_RESULTS or ./results: studies/<name>, then runs/<name>)."""
    root = Path(results_dir or os.environ.get("ARCHSPACE_RESULTS") or "results").expanduser().absolute()
    candidates = [Path(target).expanduser(), root / "studies" / target] + ([root / "runs" / target] if runs else [])
    for p in candidates:
        if is_study_dir(p) or (runs and is_run_dir(p)):
            return p.absolute()
    what = "a study or run directory" if runs else "a study directory"
    near = candidates[0] if candidates[0].exists() else None
    raise _err(f"{target!r} is not {what}" + (f" ({near} has no study.json and summary.json"
                                               + (" nor metrics.json and resolved.yaml" if runs else "") + ")"
                                               if near else f", nor a study name under {root}"),
               hint="A study writes summary.json when it ends (an interrupted one too); give its directory, or its "
                    "name with --results-dir")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_history(path: Path) -> list[dict]:
    """history.csv -> rows of floats (empty cells left out)."""
    try:
        with open(path, newline="") as f:
            out = []
            for row in csv.DictReader(f):
                parsed = {}
                for k, v in row.items():
                    try:
                        x = float(v)
                    except (TypeError, ValueError):
                        continue
                    if math.isfinite(x):
                        parsed[k] = x
                out.append(parsed)
            return out
    except OSError:
        return []


@dataclass
class Study:
    dir: Path
    name: str
    summary: dict
    space_raw: dict  # space.yaml as it ran (plain data)
    rows: list  # summary["trials"], each with "final" filled from metrics.json when summary.json predates it
    scaling: Optional[dict] = None  # the validated `scaling:` section, or None
    seeds: int = 1
    _histories: dict = field(default_factory=dict)

    @property
    def objectives(self) -> list[dict]:
        return self.summary.get("objectives") or [{"metric": "val/acc", "mode": "max"}]

    @property
    def completed(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "completed"]

    def history(self, trial_id: str) -> list[dict]:
        if trial_id not in self._histories:
            self._histories[trial_id] = read_history(self.dir / "trials" / trial_id / "history.csv")
        return self._histories[trial_id]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.dir / 'mlflow.db'}"


def _axis_expander(axis_names: list[str]):
    def expand(text: str, where) -> tuple:
        hits = [n for n in axis_names if n == text or n.endswith("." + text)]
        return tuple((hits[0] if len(hits) == 1 else text).split("."))
    return expand


def load_study(path: Path) -> Study:
    from archspace import yamlio
    from archspace.study.scaling_spec import parse_scaling

    path = Path(path)
    summary = read_json(path / "summary.json")
    if not summary:
        raise _err(f"{path / 'summary.json'} is missing or unreadable", hint="It is written when a study ends")
    rows = [dict(r) for r in summary.get("trials") or []]
    for r in rows:
        if not r.get("final"):  # summary.json from before trial rows kept their final metrics
            saved = read_json(path / "trials" / r["trial_id"] / "metrics.json")
            r["final"] = {k: float(v) for k, v in saved.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}
    space_raw, scaling = {}, None
    space_file = path / "space.yaml"
    if space_file.is_file():
        space_raw, marks = yamlio.load(space_file)
        space_raw = space_raw if isinstance(space_raw, dict) else {}
        axis_names = sorted({k for r in rows for k in (r.get("values") or {})})
        scaling = parse_scaling(space_raw.get("scaling"), marks, axis_names, _axis_expander(axis_names))
    seeds = space_raw.get("seeds", 1) if isinstance(space_raw.get("seeds", 1), int) else 1
    seeds = max([seeds] + [int(r.get("replicate", 0)) + 1 for r in rows])
    return Study(dir=path.absolute(), name=summary.get("study") or path.name, summary=summary, space_raw=space_raw,
                 rows=rows, scaling=scaling, seeds=seeds)
