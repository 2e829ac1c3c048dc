"""The typed schema of a search-space file, validated like a design file (archspace.grammar): unknown keys with
a suggestion, types, bounds and choices at file:line:col. What one key alone cannot say (an axis path of the
grammar, a `when` that refers to an earlier axis, a pruner metric the objectives report, a grid of discrete
axes) is checked by archspace.study.space.load_space on the validated spec.
"""
from __future__ import annotations

import builtins
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from .. import yamlio
from ..errors import ConfigError
from ..grammar import _int_to_float, _pydantic_to_config_error, _relocate, _Spec
from ..tasks.mad_score import BUDGETS

SAMPLERS = ("grid", "random", "tpe", "nsga2")
PRUNERS = ("none", "asha", "median", "hyperband")
STATIC_METRICS = ("params", "active_params", "state_size", "flops_per_token", "throughput_tok_s", "train_wall_s",
                  "params_non_embedding", "train_flops_per_token", "train_flops", "tokens")
AXIS_KINDS = ("choices", "int", "float", "bundle")


def metric_ok(metric: str) -> bool:
    """A metric a trial reports (objective or pruner metric)."""
    if metric in STATIC_METRICS or is_mad(metric):
        return True
    head, _, rest = metric.partition("/")
    if head not in ("val", "test"):
        return False
    return rest in ("acc", "loss", "ppl", "bpb") or rest.startswith("acc/")


def is_mad(metric: str) -> bool:
    """The MAD score of a trial (archspace.tasks.mad_score), measured on each MAD task's validation split."""
    return metric == "val/mad_score" or metric.startswith("val/mad/")


def measured_on_test(metric: str) -> Optional[str]:
    """The validation twin of a metric measured on test data (which a study must never select on), else None."""
    if metric.startswith("test/"):
        return "val/" + metric[5:]
    if metric == "mad_score" or metric.startswith("mad/"):
        return "val/" + metric
    return None


class ObjectiveSpec(_Spec):
    metric: str = Field(description="val/acc, val/loss, val/ppl, val/bpb, val/acc/<slice>, val/mad_score, "
                        "val/mad/<task>, " + ", ".join(STATIC_METRICS) + " (never a test/ metric: designs are "
                        "selected on validation; every trial reports its test metrics once at its end)")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise")

    @field_validator("metric")
    @classmethod
    def _known(cls, v):
        twin = measured_on_test(v)
        if twin is not None:
            raise ValueError(f"{v} is measured on the test data, which a study must not select designs on (the best "
                             f"trial would be chosen by its test score); every trial reports its test metrics at "
                             f"its end. Use {twin}")
        if not metric_ok(v):
            raise ValueError(f"unknown metric {v!r}; use val/acc, val/loss, val/ppl, val/bpb, val/acc/<slice>, "
                             f"val/mad_score, val/mad/<task>, {', '.join(STATIC_METRICS)}")
        return v


class SearchSpec(_Spec):
    sampler: Optional[Literal[SAMPLERS]] = Field(None, description="grid if every axis is discrete and one objective; "
                                                 "nsga2 for several objectives; else tpe")
    trials: Optional[int] = Field(None, ge=1, description="number of trials (default: the grid size)")
    seed: int = Field(0, description="the same space and seed give the same sampled designs")


class PrunerSpec(_Spec):
    kind: Literal[PRUNERS] = Field("asha", description="Ray Tune scheduler that stops poor trials")
    metric: Optional[str] = Field(None, description="intermediate metric the pruner watches (default val/acc, "
                                  "val/mad_score in a MAD study)")
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="in validation rounds")
    reduction_factor: int = Field(2, ge=2)


class ResourcesSpec(_Spec):
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per trial (= torch threads)")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial (several: Lightning DDP)")
    max_concurrent: Optional[int] = Field(None, ge=1, description="trials at a time (default CPUs // cpus_per_trial)")


class MadSpec(_Spec):
    tasks: Optional[list[str]] = Field(None, min_length=1, description="MAD tasks (default all six)")
    settings: Literal["baseline", "grid"] = "baseline"
    budget: Literal[tuple(BUDGETS)] = Field("cpu", description="steps, batch and test examples per MAD run")
    steps: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    test_examples: Optional[int] = Field(None, ge=1)
    lrs: Optional[list[float]] = Field(None, min_length=1)
    weight_decays: Optional[list[float]] = Field(None, min_length=1)


class AxisSpec(_Spec):
    """One axis: a list of choices, an int or float range, or a bundle of labelled settings."""

    choices: Optional[list[Any]] = Field(None, min_length=1)
    int: Optional[list[builtins.int]] = Field(None, min_length=2, max_length=2, description="[low, high]")
    float: Optional[list[builtins.float]] = Field(None, min_length=2, max_length=2, description="[low, high]")
    bundle: Optional[dict[str, dict[str, Any]]] = Field(None, min_length=1)
    log: bool = False
    step: Optional[Union[builtins.int, builtins.float]] = None
    when: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _one_kind(self):
        if sum(getattr(self, k) is not None for k in AXIS_KINDS) != 1:
            raise ValueError("an axis needs exactly one of choices, int, float or bundle")
        return self


class SpaceSpec(_Spec):
    """A search-space file: a base design, the axes to vary, objectives, sampler, pruner, resources."""

    schema_version: Literal[1] = Field(1, description="grammar version; only 1 is read")
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$", description="study name (default: file stem)")
    description: str = ""
    base: Union[str, dict[str, Any]] = Field(description="a design mapping, or a path to a design file")
    axes: dict[str, Any] = Field(min_length=1, description="grammar key path -> AxisSpec or a list of choices")
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [ObjectiveSpec(metric="val/acc")], min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    results_dir: Optional[str] = Field(None, description="results root (relative to the space file)")
    mad: Optional[MadSpec] = Field(None, description="with the objective val/mad_score: the MAD sweep of each trial")
    seeds: int = Field(1, ge=1, description="train every design this many times (train.seed = base seed + 0..N-1); "
                       "the report gives means and intervals over seeds")
    scaling: Optional[dict[str, Any]] = Field(None, description="how the dashboard fits scaling laws "
                                              "(archspace.study.scaling_spec)")


def validated(spec: type, data: Any, marks: yamlio.Marks, where: tuple = ()) -> Any:
    """``spec`` validated from ``data`` (found at ``where`` in the file), or a ConfigError at file:line:col."""
    if not isinstance(data, dict):
        raise marks.error("expected a mapping", where)
    data = _int_to_float(data, spec)
    try:
        return spec.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_to_config_error(_relocate(exc, where) if where else exc, marks, data, root=spec,
                                        skip=len(where)) from None


def load_spec(data: Any, marks: yamlio.Marks) -> SpaceSpec:
    if not isinstance(data, dict):
        raise marks.error("a space file must be a mapping with base, axes, objectives, search", ())
    if isinstance(data.get("objectives"), dict):  # one objective may be written without the list
        data = {**data, "objectives": [data["objectives"]]}
    return validated(SpaceSpec, data, marks)


def axis_spec(name: str, raw: Any, marks: yamlio.Marks) -> AxisSpec:
    """An axis value of the file (a list is its choices) as a validated AxisSpec; errors at axes.<name>."""
    if isinstance(raw, list):
        if not raw:
            raise marks.error("choices must be a non-empty list", ("axes", name))
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        raise marks.error("an axis is a list of choices or a mapping with choices / int / float / bundle",
                          ("axes", name))
    return validated(AxisSpec, raw, marks, ("axes", name))


__all__ = ["SpaceSpec", "AxisSpec", "ObjectiveSpec", "SearchSpec", "PrunerSpec", "ResourcesSpec", "MadSpec",
           "SAMPLERS", "PRUNERS", "STATIC_METRICS", "metric_ok", "is_mad", "measured_on_test", "load_spec", "axis_spec",
           "validated", "ConfigError"]
