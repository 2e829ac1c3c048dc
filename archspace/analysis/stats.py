"""Means and intervals over seeds, and the hybridization analysis (a metric against the attention share).

Rows are the study's trial rows (archspace.study.progress.trial_row, as in summary.json): `values` (the
sampled axis values), `status`, `final` (the trial's final metrics), `attention_layers`, `layout`, `seed`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """The mean of n values with a two-sided Student-t interval (lo = hi = nan when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "sd": self.sd}

    def text(self, digits: int = 4) -> str:
        if self.n == 0:
            return "-"
        if self.n < 2 or not math.isfinite(self.lo):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def t_interval(values: Iterable[float], level: float = 0.95) -> Estimate:
    """mean +- t_{(1+level)/2, n-1} s / sqrt(n): the interval of a mean over n independent seeds (normal
    approximation of the seeds' spread; with n = 3 the t quantile is 4.30, so the interval is wide)."""
    from scipy.stats import t as student_t

    xs = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    n = int(xs.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(xs.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    sd = float(xs.std(ddof=1))
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, sd)


def design_key(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def metric_of(row: dict, metric: str) -> Optional[float]:
    """A row's value of `metric`: its final metrics, then its objectives and sizes."""
    for source in (row.get("final") or {}, row.get("objectives") or {}):
        v = source.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            return float(v)
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def group_replicates(rows: list[dict], metrics: list[str], level: float = 0.95) -> list[dict]:
    """Completed rows of the same design (the same sampled values, any seed) -> one entry per design:
    values, trial ids, seeds, and an Estimate per metric; in the order designs first appear."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") == "completed":
            groups.setdefault(design_key(r.get("values") or {}), []).append(r)
    out = []
    for rs in groups.values():
        out.append({
            "values": rs[0].get("values") or {},
            "trial_ids": [r["trial_id"] for r in rs],
            "seeds": [r.get("seed") for r in rs],
            "layout": rs[0].get("layout"),
            "attention_layers": rs[0].get("attention_layers"),
            "params": rs[0].get("params"),
            "state_size": rs[0].get("state_size"),
            "estimates": {m: t_interval([metric_of(r, m) for r in rs if metric_of(r, m) is not None], level)
                          for m in metrics},
        })
    return out


# ----------------------------------------------------------------------------------------------
# hybridization: a metric against the share of attention layers, per memory mixer
# ----------------------------------------------------------------------------------------------
def is_ratio_axis(name: str) -> bool:
    return name.startswith("model.hybrid.") or name.startswith("hybrid.")


def ratio_curves(rows: list[dict], metric: str, level: float = 0.95) -> dict[str, list[dict]]:
    """{series label: [{"share", "attention_layers", "layers", "estimate"}, ...] by rising share}.

    A series is one combination of the sampled values that do not set the layout (`model.hybrid.*`), e.g. one
    memory mixer. A design without memory layers (all attention) has no memory-mixer value (its axis is inactive):
    it is the common end point of every series. Each point pools the completed trials (seeds) of its designs.
    """
    points: dict[str, dict[tuple, list[float]]] = {}
    shared: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("status") != "completed" or r.get("attention_layers") is None or not r.get("layout"):
            continue
        v = metric_of(r, metric)
        if v is None:
            continue
        n_a, n = int(r["attention_layers"]), len(r["layout"])
        others = {k: val for k, val in (r.get("values") or {}).items() if not is_ratio_axis(k)}
        if n_a == n:
            shared.setdefault((n_a, n), []).append(v)
            continue
        label = ", ".join(f"{k.split('.', 1)[-1] if k.startswith('model.') else k}={val}"
                          for k, val in sorted(others.items())) or "all designs"
        points.setdefault(label, {}).setdefault((n_a, n), []).append(v)
    if not points and shared:
        points["all designs"] = {}
    out = {}
    for label, by_share in points.items():
        merged = {**{k: list(v) for k, v in by_share.items()}}
        for k, v in shared.items():
            merged.setdefault(k, []).extend(v)
        out[label] = [{"share": n_a / n, "attention_layers": n_a, "layers": n, "estimate": t_interval(xs, level)}
                      for (n_a, n), xs in sorted(merged.items(), key=lambda kv: kv[0][0] / kv[0][1])]
    return out


def trend_sentence(label: str, curve: list[dict], mode: str, metric: str) -> str:
    """What the means do along a ratio curve, and which neighbouring steps their intervals separate."""
    means = [p["estimate"].mean for p in curve]
    arrow = " -> ".join(f"{m:.4g}" for m in means)
    better = (lambda a, b: b >= a) if mode == "max" else (lambda a, b: b <= a)
    word = "rises" if mode == "max" else "falls"
    if len(set(means)) == 1:
        shape = "the mean does not change with the attention share"
    elif all(better(a, b) for a, b in zip(means, means[1:])):
        shape = f"the mean {word} monotonically with the attention share"
    else:
        shape = f"the mean does not {word[:-1]} monotonically with the attention share"
    ests = [p["estimate"] for p in curve]
    if any(e.n < 2 for e in ests):
        return f"{label}: {shape} ({arrow}); one seed at some shares, so no interval there."
    separated = [f"{p['attention_layers']}/{p['layers']}->{q['attention_layers']}/{q['layers']}"
                 for p, q in zip(curve, curve[1:]) if p["estimate"].hi < q["estimate"].lo or q["estimate"].hi < p["estimate"].lo]
    sep = (f"the intervals separate {', '.join(separated)}" if separated
           else "no neighbouring intervals separate")
    return f"{label}: {shape} ({arrow}); {sep}."
