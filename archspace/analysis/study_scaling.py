"""A study's scaling laws: its trials grouped into design families, each fitted (archspace.analysis.scaling).

Per family (the trials sharing the values of `scaling.family`'s axes), from its completed trials:
- N: the trial's `scaling.params` count (default: parameters without the embedding), D: the tokens it trained,
  L: its `scaling.loss` (default val/loss), C: the training FLOPs it spent (`train_flops`);
- the Chinchilla fit (approach 3) with bootstrap intervals, when the family has at least 5 points on at least
  2 sizes and 2 token counts;
- the iso-FLOP cross-check (approach 2) over the trials of each FLOP budget (`train.flops`, the sampled budget);
- f(N), training FLOPs per token against N (a line through the trials' own accounting), and from it the
  compute-optimal N*, D*, L* at each budget of the table, with intervals from the bootstrap fits;
and across families the state-optimal frontier at each budget: the least loss for at most that much state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import scaling as S
from .stats import metric_of

BUDGET_AXIS = "train.flops"
BOOT_GRID_STARTS = 4


@dataclass
class Family:
    label: str
    values: dict
    trial_ids: list
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    c: np.ndarray  # FLOPs spent
    budget: np.ndarray  # the sampled FLOP budget (nan without a train.flops budget)
    fpt: np.ndarray  # training FLOPs per token
    state: np.ndarray
    fit: Optional[S.ChinchillaFit] = None
    iso: Optional[S.IsoFlopFit] = None
    flops: Optional[S.FlopsModel] = None
    optimal: dict = field(default_factory=dict)  # "n", "d", "loss": {"value": (K,), "lo": (K,), "hi": (K,)}
    note: str = ""


def _family_label(values: dict, family: list) -> str:
    parts = [f"{k.split('.', 1)[-1] if k.startswith('model.') else k}={values.get(k, '-')}" for k in family]
    return ", ".join(parts) or "all designs"


def _budget_of(row: dict) -> float:
    v = (row.get("values") or {}).get(BUDGET_AXIS)
    if v is None:
        v = row.get("budget")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def families(rows: list[dict], spec: dict) -> list[Family]:
    """The completed trials with every quantity a fit needs, grouped by the family axes (first-seen order)."""
    groups: dict[str, list] = {}
    for r in rows:
        if r.get("status") != "completed":
            continue
        vals = [metric_of(r, spec["params"]), metric_of(r, "tokens"), metric_of(r, spec["loss"]),
                metric_of(r, "train_flops"), metric_of(r, "train_flops_per_token"), metric_of(r, "state_size")]
        if any(v is None or not v > 0 for v in vals[:5]):
            continue
        label = _family_label(r.get("values") or {}, spec["family"])
        groups.setdefault(label, []).append((r, vals))
    out = []
    for label, items in groups.items():
        arr = np.array([v for _, v in items], dtype=np.float64)
        out.append(Family(label=label, values={k: (items[0][0].get("values") or {}).get(k) for k in spec["family"]},
                          trial_ids=[r["trial_id"] for r, _ in items], n=arr[:, 0], d=arr[:, 1], loss=arr[:, 2],
                          c=arr[:, 3], fpt=arr[:, 4], state=arr[:, 5],
                          budget=np.array([_budget_of(r) for r, _ in items])))
    return out


def default_budgets(fams: list[Family]) -> list[float]:
    """The study's FLOP budgets (or the span of the FLOPs it spent) and 10x, 100x its largest."""
    budgets = sorted({float(b) for f in fams for b in f.budget if math.isfinite(b)})
    if not budgets:
        spent = np.concatenate([f.c for f in fams]) if fams else np.array([])
        if spent.size == 0:
            return []
        budgets = [float(x) for x in np.geomspace(spent.min(), spent.max(), 3)]
    return budgets + [budgets[-1] * 10, budgets[-1] * 100]


def analyse(rows: list[dict], spec: dict, *, seed: int = 0, starts: Optional[int] = None) -> dict:
    """Fit every family; returns {"families": [Family], "budgets": [...], "frontier": {...}, "summary": JSON-able}."""
    fams = families(rows, spec)
    budgets = spec.get("budgets") or default_budgets(fams)
    level = spec["level"]
    for f in fams:
        f.flops = S.FlopsModel.fit(f.n, f.fpt)
        if f.loss.size >= 5 and np.unique(f.n).size >= 2 and np.unique(f.d).size >= 2:
            # A study's family has few points, and its optimum can sit on a boundary (E -> 0 when the data do not
            # reach the irreducible loss), where a refit started there cannot leave it: each resample also starts
            # from its own best grid points (scaling.BOOT_GRID_STARTS explains the cost of that).
            f.fit = S.fit_chinchilla(f.n, f.d, f.loss, bootstrap=spec["bootstrap"], seed=seed, starts=starts,
                                     level=level, boot_grid_starts=BOOT_GRID_STARTS)
            if f.fit.E < 1e-6 * float(f.loss.min()):
                f.note = ("E -> 0: these points do not identify an irreducible loss; the fit extrapolates a power law "
                          "to zero loss, so read budgets beyond the trained ones with care")
        else:
            f.note = (f"{f.loss.size} points on {np.unique(f.n).size} sizes and {np.unique(f.d).size} token counts: "
                      "a fit of 5 coefficients needs at least 5 points on 2 sizes and 2 token counts")
        if np.isfinite(f.budget).any():
            keep = np.isfinite(f.budget)
            f.iso = S.fit_isoflop(f.budget[keep], f.n[keep], f.loss[keep], f.flops,
                                  bootstrap=min(spec["bootstrap"], 1000), seed=seed, level=level)
        if f.fit is not None and budgets:
            n_opt, d_opt, l_opt = S.compute_optimal(f.fit.theta, budgets, f.flops)
            f.optimal = {"n": {"value": n_opt}, "d": {"value": d_opt}, "loss": {"value": l_opt}}
            if len(f.fit.boot):
                boot = S.compute_optimal(S.coeffs_to_theta(f.fit.boot), budgets, f.flops)
                q = [(1 - level) / 2, (1 + level) / 2]
                for key, arr in zip(("n", "d", "loss"), boot):
                    lo, hi = np.nanquantile(arr, q, axis=0)
                    f.optimal[key].update(lo=lo, hi=hi)
    return {"families": fams, "budgets": list(budgets), "frontier": state_frontiers(fams),
            "summary": summary(fams, budgets, spec)}


def state_frontiers(fams: list[Family]) -> dict:
    """Per FLOP budget (all trials when there is none): the trials on the least-loss-for-this-much-state frontier,
    as {budget label: [(state, loss, family label, trial id), ...] by rising state}."""
    pts = [(b, s, l, f.label, t) for f in fams for b, s, l, t in zip(f.budget, f.state, f.loss, f.trial_ids)]
    groups: dict = {}
    for b, s, l, lab, t in pts:
        groups.setdefault(f"{b:.3g} FLOPs" if math.isfinite(b) else "all trials", []).append((s, l, lab, t))
    out = {}
    for key, items in groups.items():
        keep = S.lower_frontier([x[0] for x in items], [x[1] for x in items])
        out[key] = [items[i] for i in keep]
    return out


def _interval(obj, name):
    iv = obj.interval(name) if obj is not None else None
    return list(iv) if iv is not None else None


def summary(fams: list[Family], budgets: list, spec: dict) -> dict:
    """JSON-able results (scaling.json, MLflow): coefficients with intervals, the cross-check, the table."""
    out = {"spec": {k: spec[k] for k in ("family", "loss", "params", "bootstrap", "level")}, "budgets": budgets,
           "families": {}}
    for f in fams:
        entry: dict = {"points": int(f.loss.size), "trial_ids": f.trial_ids, "note": f.note,
                       "flops_per_token": {"k": f.flops.k, "c0": f.flops.c0} if f.flops else None}
        if f.fit is not None:
            entry["fit"] = f.fit.to_dict()
        if f.iso is not None:
            entry["isoflop"] = f.iso.to_dict()
            if f.fit is not None:
                lo, hi = (entry["fit"].get("a_interval") or [math.nan, math.nan])
                ilo, ihi = (entry["isoflop"].get("a_interval") or [f.iso.a, f.iso.a])
                entry["cross_check"] = {"a_parametric": f.fit.allocation_exponents[0], "a_isoflop": f.iso.a,
                                        "intervals_overlap": bool(max(lo, ilo) <= min(hi, ihi))}
        if f.optimal:
            entry["compute_optimal"] = [
                {"budget": c, **{key: float(f.optimal[key]["value"][i]) for key in ("n", "d", "loss")},
                 **{f"{key}_interval": [float(f.optimal[key]["lo"][i]), float(f.optimal[key]["hi"][i])]
                    for key in ("n", "d", "loss") if "lo" in f.optimal[key]}}
                for i, c in enumerate(budgets)]
        out["families"][f.label] = entry
    best = []
    for i, c in enumerate(budgets):
        cands = [(float(f.optimal["loss"]["value"][i]), f.label) for f in fams if f.optimal]
        if cands:
            best.append({"budget": c, "family": min(cands)[1], "loss": min(cands)[0]})
    out["compute_optimal_frontier"] = best
    return out
