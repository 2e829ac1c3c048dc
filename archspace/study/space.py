"""Search-space files: a base design plus the axes to vary, validated like design files.

    schema_version: 1
    name: quickstart
    base:                          # a design (inline mapping, or a path relative to this file)
      model: {...}
      task: mqar_small             # inline task, or a recipe name from studies/
      train: {...}
    axes:                          # grammar key paths; `model.` / `train.` / `task.` may be left out
      hybrid.ratio: ["1:0", "3:1", "1:1"]                      # categorical
      mixer.preset: [gla, deltanet, gated_deltanet]
      mixer.short_conv: {choices: [0, 4], when: {mixer.preset: [deltanet, gated_deltanet]}}
      d_model: {int: [32, 128], log: true}
      lr: {float: [1e-4, 1e-2], log: true}
    objectives: [{metric: val/acc, mode: max}, {metric: state_size, mode: min}]
    search: {sampler: tpe, trials: 20, seed: 0}
    pruner: {kind: asha, metric: val/acc, mode: max, grace_period: 1, reduction_factor: 2}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: null}
    results_dir: null

Designs that the grammar's INCOMPATIBLE table forbids are never sampled: the grid leaves them out,
and define-by-run sampling drops, at each categorical axis, the choices that would complete a
forbidden combination.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import yamlio
from ..errors import ConfigError, closest, keypath
from ..grammar import Design, _unwrap, set_path, validate_data
from .spec import MadSpec, axis_spec, is_mad, load_spec, metric_ok

SECTIONS = ("model", "task", "train")
GRID_INDEX = "grid_index"


@dataclass(frozen=True)
class Axis:
    path: tuple
    kind: str  # "choice" | "int" | "float" | "bundle"
    choices: tuple = ()  # for a bundle: the labels
    bundle: tuple = ()  # bundle only: ((label, ((path, value), ...)), ...): one choice sets several keys
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    when: tuple = ()  # ((path, (allowed values...)), ...)

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def discrete(self) -> bool:
        return self.kind in ("choice", "bundle") or (self.kind == "int" and not self.log)

    def values(self) -> list:
        if self.kind in ("choice", "bundle"):
            return list(self.choices)
        if self.kind == "int" and not self.log:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        raise ValueError(f"axis {self.name} is continuous")


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # max | min


@dataclass(frozen=True)
class Space:
    name: str
    file: str
    base: dict
    axes: tuple
    objectives: tuple
    sampler: str
    seed: int
    trials: int
    pruner: dict
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: Optional[int]
    results_dir: Optional[str]
    description: str = ""
    mad: Optional[dict] = None  # the MAD-score evaluation of each trial (objective val/mad_score), else None
    grid: tuple = field(default=(), compare=False)  # the enumerated grid (grid sampler only)
    seeds: int = 1  # every design trained this many times, train.seed = base seed + 0 .. seeds-1 (study/seeds.py)
    scaling: Optional[dict] = field(default=None, compare=False)  # how the dashboard fits it (study/scaling_spec.py)

    @property
    def space_hash(self) -> str:
        """Identity of what is searched (base, axes, objectives, sampler, seed, trials)."""
        payload = {"base": self.base, "axes": [a.__dict__ for a in self.axes], "objectives": [o.__dict__ for o in self.objectives],
                   "sampler": self.sampler, "seed": self.seed, "trials": self.trials}
        if self.seeds > 1:  # only then: the hashes (and resumability) of one-seed studies are unchanged
            payload["seeds"] = self.seeds
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# key paths
# ----------------------------------------------------------------------------------------------
def _field_exists(path: tuple) -> bool:
    cls: Any = Design
    parts = list(path)
    while parts:
        part = parts.pop(0)
        if not (isinstance(cls, type) and hasattr(cls, "model_fields") and part in cls.model_fields):
            return False
        cls, _ = _unwrap(cls.model_fields[part].annotation)
        if typing.get_origin(cls) is dict:  # model.mixers.<letter>.<key>: any letter, then the value type
            if not parts:
                return True
            parts.pop(0)
            cls, _ = _unwrap(typing.get_args(cls)[1])
    return True


def _all_paths(cls=Design, prefix=()) -> list[str]:
    out = []
    for name, f in cls.model_fields.items():
        ann, _ = _unwrap(f.annotation)
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out += _all_paths(ann, prefix + (name,))
        else:
            out.append(".".join(prefix + (name,)))
    return out


def expand_path(text: str, marks: yamlio.Marks, where: tuple) -> tuple:
    """'hybrid.ratio' -> ('model', 'hybrid', 'ratio'); full paths pass through; errors name the axis."""
    parts = tuple(str(text).split("."))
    if parts[0] in SECTIONS:
        candidates = [parts] if _field_exists(parts) else []
    else:
        candidates = [(s,) + parts for s in SECTIONS if _field_exists((s,) + parts)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        guess = closest(str(text), _all_paths() + [p.split(".", 1)[1] for p in _all_paths() if "." in p])
        raise marks.error(f"'{text}' is not a key path of the grammar", where, at_key=True,
                          hint=f"Did you mean '{guess}'?" if guess else "Run `archspace schema` for every key.")
    raise marks.error(f"'{text}' is ambiguous: it could be {' or '.join('.'.join(c) for c in candidates)}", where,
                      at_key=True, hint="Write the full path.")


# ----------------------------------------------------------------------------------------------
# loading (the file's schema: archspace/study/spec.py)
# ----------------------------------------------------------------------------------------------
def _parse_bundle(name: str, bundle: dict, marks: yamlio.Marks) -> tuple:
    """`bundle: {label: {key.path: value, ...}, ...}` -> ((label, ((path, value), ...)), ...)."""
    where = ("axes", name, "bundle")
    out = []
    for label, settings in bundle.items():
        if not label:
            raise marks.error("bundle labels must be text", where + (label,), at_key=True)
        if not settings:
            raise marks.error("a bundle choice sets at least one key", where + (label,))
        out.append((label, tuple((expand_path(k, marks, where + (label, k)), copy.deepcopy(v))
                                 for k, v in settings.items())))
    return tuple(out)


def _parse_axis(name: str, raw: Any, marks: yamlio.Marks) -> Axis:
    where = ("axes", name)
    spec = axis_spec(name, raw, marks)
    when: tuple = ()
    if spec.bundle is not None:
        if "." in str(name) or not str(name).replace("_", "").replace("-", "").isalnum():
            raise marks.error(f"a bundle axis has a free name without dots (letters, digits, '_', '-'), got {name!r}",
                              where, at_key=True)
        path = (str(name),)
    else:
        path = expand_path(name, marks, where)
    if spec.when is not None:
        when = tuple((expand_path(ck, marks, where + ("when", ck)), tuple(cv) if isinstance(cv, list) else (cv,))
                     for ck, cv in spec.when.items())
    if spec.bundle is not None:
        bundle = _parse_bundle(name, spec.bundle, marks)
        return Axis(path, "bundle", choices=tuple(label for label, _ in bundle), bundle=bundle, when=when)
    if spec.choices is not None:
        if len({json.dumps(c, sort_keys=True, default=str) for c in spec.choices}) != len(spec.choices):
            raise marks.error("choices repeat a value", where + (("choices",) if isinstance(raw, dict) else ()))
        return Axis(path, "choice", choices=tuple(spec.choices), when=when)
    kind = "int" if spec.int is not None else "float"
    low, high = getattr(spec, kind)
    if not low < high:
        raise marks.error(f"range [{low}, {high}] is empty: low must be below high", where + (kind,))
    if spec.log and low <= 0:
        raise marks.error("a log-scaled range must be positive", where + (kind,))
    if spec.step is not None:
        if kind == "int" and not isinstance(spec.step, int):
            raise marks.error(f"expected an integer, got {spec.step!r}", where + ("step",))
        if spec.log:
            raise marks.error("step and log cannot be combined", where + ("step",))
    return Axis(path, kind, low=low, high=high, log=spec.log, step=spec.step, when=when)


def _parse_mad(mad: Optional[MadSpec], marks: yamlio.Marks) -> dict:
    """The `mad:` section: how each trial's MAD score is measured (archspace.tasks.mad_score)."""
    from ..tasks.mad_params import SWEEP_LR, SWEEP_WD, TASKS
    from ..tasks.mad_score import BUDGETS

    mad = mad or MadSpec()
    tasks = mad.tasks or list(TASKS.values())
    short = {v: k for k, v in TASKS.items()}
    for i, t in enumerate(tasks):
        if t not in short and t not in TASKS:
            guess = closest(str(t), list(short))
            raise marks.error(f"unknown MAD task {t!r}", ("mad", "tasks", i),
                              hint=(f"Did you mean '{guess}'? " if guess else "") + f"Tasks: {', '.join(short)}.")
    b = dict(BUDGETS[mad.budget])
    for key, target in (("steps", "max_steps"), ("batch_size", "batch_size"), ("test_examples", "num_test_examples")):
        if getattr(mad, key) is not None:
            b[target] = getattr(mad, key)
    return {"tasks": [short.get(t, t) for t in tasks], "settings": mad.settings, "budget": b,
            "lrs": list(mad.lrs or SWEEP_LR), "weight_decays": list(mad.weight_decays or SWEEP_WD)}


def load_space(path, overrides: Optional[dict] = None, trials: Optional[int] = None,
               seeds: Optional[int] = None) -> Space:
    """Load and validate a space file: every problem is a ConfigError (file:line:col, key path).

    `overrides`: {key path: value} applied to the base design (the CLI's --set; short forms such as
    `lr` or `hybrid.ratio` expand as axis names do). `trials`: cap on the number of designs (--trials).
    `seeds`: replaces the space's `seeds` (--seeds).
    """
    file = str(Path(path).absolute())
    trials_cap = trials
    data, marks = yamlio.load(path)
    marks.file = str(path)
    spec = load_spec(data, marks)  # every key's type, bounds and choices (archspace/study/spec.py)
    name = spec.name or Path(path).stem

    # base design: inline, or a path relative to the space file
    base = spec.base
    base_marks = marks.child(("base",))
    if isinstance(base, str):
        bpath = (Path(path).parent / base)
        base, base_marks = yamlio.load(bpath)
    if not isinstance(base, dict):
        raise marks.error("base must be a design mapping (model, task, train) or a path to a design file", ("base",))
    base = copy.deepcopy(base)
    if not isinstance(spec.base, str):
        base_marks.file = str(path)
    cli = yamlio.Marks("<command line>")
    for key, value in (overrides or {}).items():
        dotted = ".".join(key)  # not `name`: that is the study's name, which --set must not change
        set_path(base, expand_path(dotted, cli, (f"--set {dotted}",)), value)
    validate_data(base, base_marks)  # the base itself must be a valid design
    if isinstance(base.get("task"), str):  # inline the referenced recipe so trials need no file lookups
        from ..grammar import load_task_ref

        base["task"] = load_task_ref(base["task"], base_marks)

    axes_raw = data["axes"]
    axes = tuple(_parse_axis(k, v, marks) for k, v in axes_raw.items())
    names = [a.name for a in axes]
    for a in axes:
        for cpath, _ in a.when:
            cname = ".".join(cpath)
            if cname in names and names.index(cname) >= names.index(a.name):
                raise marks.error(f"'when' may only refer to axes listed before this one ({cname} comes later)",
                                  ("axes", [k for k in axes_raw][names.index(a.name)], "when"))
    if len(set(names)) != len(names):
        dup = [n for n in names if names.count(n) > 1][0]
        raise marks.error(f"axis {dup} is given twice (under two spellings)", ("axes",))

    objectives = [Objective(o.metric, o.mode) for o in spec.objectives]

    default_sampler = "nsga2" if len(objectives) > 1 else ("grid" if all(a.discrete for a in axes) else "tpe")
    sampler = spec.search.sampler or default_sampler
    seed = spec.search.seed
    grid: tuple = ()
    if sampler == "grid":
        cont = [a.name for a in axes if not a.discrete]
        if cont:
            raise marks.error(f"the grid sampler needs discrete axes; {', '.join(cont)} is continuous", ("search", "sampler"),
                              hint="Give it choices, or use random / tpe.")
    trials = spec.search.trials

    pr = spec.pruner.model_dump()
    uses_mad = any(is_mad(o.metric) for o in objectives)
    if pr["metric"] is None:
        pr["metric"] = "val/mad_score" if uses_mad else "val/acc"
    intermediate = pr["metric"].startswith("val/")
    if not intermediate or not metric_ok(pr["metric"]) or (is_mad(pr["metric"]) and not uses_mad):
        raise marks.error(f"the pruner needs an intermediate validation metric (val/acc, val/loss, val/ppl, val/bpb, "
                          f"val/acc/<slice>; val/mad_score in a MAD study), got {pr['metric']!r}", ("pruner", "metric"))
    if uses_mad and pr["metric"] != "val/mad_score":
        raise marks.error("a MAD-score study reports val/mad_score (the running mean over finished tasks) as it goes, "
                          "not per-step val/ metrics: set pruner.metric: val/mad_score or pruner.kind: none",
                          ("pruner", "metric"))
    spent = [i for i, o in enumerate(objectives) if o.metric in ("train_flops", "tokens")]
    if uses_mad and spent:
        raise marks.error(f"{objectives[spent[0]].metric} is what one training run spends; a MAD-score trial is a sweep of "
                          "many runs and does not report it", ("objectives", spent[0], "metric"))
    if spec.mad is not None and not uses_mad:
        raise marks.error("a `mad:` section needs the objective val/mad_score (or val/mad/<task>)", ("mad",),
                          at_key=True)
    mad = _parse_mad(spec.mad, marks) if uses_mad else None

    cpus, gpus = spec.resources.cpus_per_trial, spec.resources.gpus_per_trial
    if gpus >= 2:  # trials then train on int(gpus) devices (execution_values): the base must allow it
        trial_base = copy.deepcopy(base)
        set_path(trial_base, ("train", "devices"), int(gpus))
        try:
            validate_data(trial_base, base_marks)
        except ConfigError as e:
            raise marks.error(f"gpus_per_trial {gpus:g} trains every trial on {int(gpus)} devices, which the base "
                              f"design does not allow: {e.message}", ("resources", "gpus_per_trial"),
                              hint=e.hint) from None
    maxc = spec.resources.max_concurrent
    results_dir = spec.results_dir
    if results_dir is not None and not Path(results_dir).is_absolute():
        results_dir = str((Path(path).parent / results_dir).absolute())

    n_seeds = _parse_seeds(data, marks, seeds, axes, uses_mad)
    from .scaling_spec import parse_scaling

    scaling = parse_scaling(data.get("scaling"), marks, [a.name for a in axes],
                            lambda text, where: expand_path(text, marks, where))
    space = Space(name=name, file=file, base=base, axes=axes, objectives=tuple(objectives), sampler=sampler, seed=seed,
                  trials=trials or 0, pruner=pr, cpus_per_trial=float(cpus), gpus_per_trial=float(gpus),
                  max_concurrent=maxc, results_dir=results_dir, description=spec.description, mad=mad,
                  seeds=n_seeds, scaling=scaling)
    # Check every value of every axis against the grammar (incompatible combinations are fine here:
    # the sampler skips them), so a typo fails now, not in a worker.
    # Each value is probed with every other axis at its first value, so an axis may rely on another
    # (a pattern letter defined by a `model.mixers.X` axis).
    firsts = {b.name: (b.choices[0] if b.kind in ("choice", "bundle") else b.low) for b in axes}
    for a, key in zip(axes, axes_raw):
        probes = a.choices if a.kind in ("choice", "bundle") else (a.low, a.high)
        for i, v in enumerate(probes):
            try:
                _validate(space, {**firsts, a.name: v}, check=False)
            except ConfigError as exc:
                if exc.kind == "incompatible":
                    continue
                if a.kind == "bundle":
                    where = ("axes", key, "bundle", v)
                else:
                    where = ("axes", key) + (("choices", i) if a.kind == "choice" and isinstance(axes_raw[key], dict)
                                             else (i,) if a.kind == "choice" else (a.kind, i))
                raise marks.error(f"value {v!r} for {a.name} is invalid: {exc.message}", where, hint=exc.hint) from None
    if trials_cap is not None:
        trials = min(trials, trials_cap) if trials else trials_cap
        space = Space(**{**space.__dict__, "trials": trials})
    if sampler == "grid":
        grid = tuple(enumerate_grid(space))
        if not grid:
            raise marks.error("every design of this grid is forbidden by the incompatibility table", ("axes",))
        trials = min(trials or len(grid), len(grid))
        if trials_cap is not None:
            grid = grid[:trials]  # --trials N on a grid: its first N designs
        space = Space(**{**space.__dict__, "grid": grid, "trials": trials})
    elif not trials:
        raise marks.error("search.trials is required for the random, tpe and nsga2 samplers", ("search",), at_key=True)
    return space


def _parse_seeds(data: dict, marks: yamlio.Marks, cli: Optional[int], axes: tuple, uses_mad: bool) -> int:
    """`seeds: N` (or --seeds N): replicates of every design (archspace.study.seeds)."""
    if cli is not None:
        if isinstance(cli, bool) or not isinstance(cli, int) or cli < 1:
            raise ConfigError(f"--seeds must be at least 1, got {cli!r}", file="<command line>")
        n = cli
    else:
        n = data.get("seeds", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise marks.error(f"seeds must be a whole number of at least 1, got {n!r}", ("seeds",))
    if n > 1 and any(tuple(a.path) == ("train", "seed") for a in axes):
        raise marks.error("seeds replicates every design over train.seed, which is also an axis here: drop one",
                          ("seeds",) if "seeds" in data else ("axes",), at_key=True)
    if n > 1 and uses_mad:
        raise marks.error("a MAD-score study sweeps its own runs; seeds is for studies that train once per trial",
                          ("seeds",) if "seeds" in data else ("objectives",), at_key=True)
    return n


# ----------------------------------------------------------------------------------------------
# designs from values
# ----------------------------------------------------------------------------------------------
def _with_values(space: Space, values: dict) -> dict:
    data = copy.deepcopy(space.base)
    bundles = {a.name: dict(a.bundle) for a in space.axes if a.kind == "bundle"}
    for name, v in values.items():
        if name in bundles:
            for path, value in bundles[name][v]:
                set_path(data, path, copy.deepcopy(value))
        else:
            set_path(data, tuple(name.split(".")), v)
    return data


def _validate(space: Space, values: dict, check: bool = True):
    marks = yamlio.Marks(f"{space.file} (sampled {', '.join(f'{k}={v!r}' for k, v in values.items())})")
    return validate_data(_with_values(space, values), marks)


def is_incompatible(space: Space, values: dict) -> bool:
    try:
        _validate(space, values)
    except ConfigError as exc:
        return exc.kind == "incompatible"
    return False


def _current(space: Space, values: dict, path: tuple):
    name = ".".join(path)
    if name in values:
        return values[name]
    node: Any = space.base
    for part in path:
        if not isinstance(node, dict) or part not in node:
            if path[:2] in (("model", "mixer"), ("model", "attention")) and len(path) == 3:
                return _preset_value(space, values, path)
            return None
        node = node[part]
    return node


def _preset_value(space: Space, values: dict, path: tuple):
    from ..grammar import PRESETS

    preset = _current(space, values, path[:2] + ("preset",))
    return PRESETS.get(preset, {}).get(path[2]) if isinstance(preset, str) else None


def _active(space: Space, axis: Axis, values: dict) -> bool:
    return all(_current(space, values, p) in allowed for p, allowed in axis.when)


def enumerate_grid(space: Space) -> list[dict]:
    """Every compatible combination of the discrete axes, in a fixed order (inactive axes omitted)."""
    out: list[dict] = []

    def rec(i: int, values: dict):
        if i == len(space.axes):
            if not is_incompatible(space, values):
                out.append(dict(values))
            return
        a = space.axes[i]
        if not _active(space, a, values):
            rec(i + 1, values)
            return
        for v in a.values():
            values[a.name] = v
            rec(i + 1, values)
            del values[a.name]

    rec(0, {})
    return out


def _param_name(axis: Axis, allowed: list) -> str:
    """Optuna needs a fixed choice set per name: a filtered set gets a name of its own."""
    if len(allowed) == len(axis.choices):
        return axis.name
    return f"{axis.name}|{','.join(str(c) for c in allowed)}"


def define_by_run(space: Space, trial) -> None:
    """Optuna define-by-run search space (module level, so Ray can pickle it for restore)."""
    if space.sampler == "grid":
        trial.suggest_categorical(GRID_INDEX, list(range(len(space.grid))))
        return None
    values: dict = {}
    for a in space.axes:
        if not _active(space, a, values):
            continue
        if a.kind in ("choice", "bundle"):
            allowed = [c for c in a.choices if not is_incompatible(space, {**values, a.name: c})]
            if not allowed:  # nothing compatible: keep the base value for this axis
                continue
            values[a.name] = trial.suggest_categorical(_param_name(a, allowed), allowed)
        elif a.kind == "int":
            values[a.name] = trial.suggest_int(a.name, int(a.low), int(a.high), log=a.log,
                                               step=int(a.step) if a.step else 1)
        else:
            values[a.name] = trial.suggest_float(a.name, float(a.low), float(a.high), log=a.log, step=a.step)
    return None


def values_from_config(space: Space, config: dict) -> dict:
    """The sampled values of one trial, keyed by full dotted path."""
    if space.sampler == "grid":
        return dict(space.grid[int(config[GRID_INDEX])])
    names = {a.name for a in space.axes}
    out = {}
    for key, v in config.items():
        base = key.split("|", 1)[0]
        if base in names:
            out[base] = v
    return out


def resolve_values(space: Space, values: dict, name: Optional[str] = None):
    """base + sampled values -> a validated, resolved design."""
    from ..compiler import resolve

    design = _validate(space, values)
    if design.name is None:
        design = design.model_copy(update={"name": name or space.name})
    return resolve(design)


def make_sampler(space: Space):
    import optuna

    if space.sampler == "grid":
        return optuna.samplers.GridSampler({GRID_INDEX: list(range(len(space.grid)))}, seed=space.seed)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.TPESampler(seed=space.seed, multivariate=True, group=True)


def grid_size(space: Space) -> Optional[int]:
    return len(space.grid) if space.sampler == "grid" else None


def describe(space: Space) -> str:
    lines = [f"space {space.name}: {len(space.axes)} axes, sampler {space.sampler}, {space.trials} trials"
             + (f" x {space.seeds} seeds" if space.seeds > 1 else "")]
    for a in space.axes:
        dom = (", ".join(map(str, a.choices)) if a.kind in ("choice", "bundle")
               else f"{a.kind} [{a.low}, {a.high}]{' log' if a.log else ''}")
        cond = (" when " + ", ".join(f"{'.'.join(p)} in {list(v)}" for p, v in a.when)) if a.when else ""
        lines.append(f"  {a.name}: {dom}{cond}")
    lines.append("  objectives: " + ", ".join(f"{o.mode} {o.metric}" for o in space.objectives))
    return "\n".join(lines)


__all__ = ["Axis", "Objective", "Space", "load_space", "define_by_run", "values_from_config", "resolve_values",
           "make_sampler", "grid_size", "enumerate_grid", "is_incompatible", "describe", "keypath", "math", "itertools"]
