"""The report's figures, drawn with matplotlib's object API (Figure, no pyplot state, no display needed).

Every function takes what dashboards.data / archspace.analysis computed and returns a Figure, or None when the
study has nothing to show for it (a single objective has no two-objective front, a study without ratio axes no
ratio curve, ...).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from archspace.analysis.stats import group_replicates, metric_of, ratio_curves
from archspace.study.progress import rank_rows, short_values

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
LEVEL = 0.95


class _Obj:
    """An objective as progress.rank_rows expects it."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode


def objectives(study) -> list[_Obj]:
    return [_Obj(o["metric"], o.get("mode", "max")) for o in study.objectives]


def ranked_completed(study) -> list[dict]:
    return [r for r in rank_rows(study.rows, objectives(study)) if r.get("status") == "completed"]


def _label(values: dict, limit: int = 48) -> str:
    return short_values(values, limit) or "base design"


def _figure(width: float = 8.0, height: float = 4.5, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _panels(n: int, width: float = 5.5, height: float = 4.5, max_cols: int = 3) -> tuple[Figure, list]:
    """n panels in rows of at most max_cols (one per family); unused cells hidden."""
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# ----------------------------------------------------------------------------------------------
# any study
# ----------------------------------------------------------------------------------------------
def best_designs(study, top: int = 15) -> Optional[Figure]:
    """The first objective of the best designs (mean and interval over seeds when there are several)."""
    obj = objectives(study)[0]
    ranked = ranked_completed(study)
    if not ranked:
        return None
    groups = group_replicates(ranked, [obj.metric], LEVEL)[:top]  # in rank order: the best seed's design first
    groups = [g for g in groups if g["estimates"][obj.metric].n]
    if not groups:
        return None
    groups.sort(key=lambda g: g["estimates"][obj.metric].mean, reverse=obj.mode == "max")
    fig, (ax,) = _figure(9, 0.9 + 0.38 * len(groups))
    means = np.array([g["estimates"][obj.metric].mean for g in groups])
    lo = np.array([g["estimates"][obj.metric].lo for g in groups])
    hi = np.array([g["estimates"][obj.metric].hi for g in groups])
    y = np.arange(len(groups))[::-1]
    err = np.where(np.isfinite(lo), np.vstack([means - lo, hi - means]), 0.0)
    ax.barh(y, means, xerr=err, color=COLORS[0], alpha=0.85, capsize=3)
    ax.set_yticks(y, [_label(g["values"]) + (f"  (n={g['estimates'][obj.metric].n})" if study.seeds > 1 else "")
                      for g in groups], fontsize=8)
    ax.set_xlabel(f"{obj.metric} ({obj.mode})" + (f", mean and {LEVEL:.0%} interval over seeds" if study.seeds > 1
                                                 else ""))
    ax.set_title(f"{study.name}: best designs")
    return fig


def pareto(study) -> Optional[Figure]:
    """Two objectives (or the first objective against state size) with the non-dominated front."""
    objs = objectives(study)
    done = [r for r in study.completed]
    if len(objs) >= 2:
        ox, oy = objs[1], objs[0]
    else:
        ox, oy = _Obj("state_size", "min"), objs[0]
    pts = [(metric_of(r, ox.metric), metric_of(r, oy.metric), r) for r in done]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    if len(pts) < 2:
        return None
    sx = 1 if ox.mode == "min" else -1
    sy = 1 if oy.mode == "min" else -1
    front = [p for p in pts if not any(sx * q[0] <= sx * p[0] and sy * q[1] <= sy * p[1]
                                       and (sx * q[0] < sx * p[0] or sy * q[1] < sy * p[1]) for q in pts)]
    front.sort(key=lambda p: p[0])
    fig, (ax,) = _figure(8, 5)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, color="#999999", label="completed trials")
    ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color=COLORS[3], ms=6, label="Pareto front")
    for x, yv, r in front:
        ax.annotate(_label(r.get("values") or {}, 28), (x, yv), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if all(p[0] > 0 for p in pts) and max(p[0] for p in pts) / max(min(p[0] for p in pts), 1e-300) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{ox.metric} ({ox.mode})")
    ax.set_ylabel(f"{oy.metric} ({oy.mode})")
    ax.set_title("Pareto front" + ("" if len(objs) >= 2 else f" of {oy.metric} against state size"))
    ax.legend(fontsize=8)
    return fig


def curves(study, top: int = 8) -> Optional[Figure]:
    """Validation curves of every completed trial against the step; the best `top` in colour."""
    done = ranked_completed(study)
    metrics = [m for m in ("val/loss", "val/acc") if any(m in h for r in done for h in study.history(r["trial_id"]))]
    first = objectives(study)[0].metric
    if first.startswith("val/") and first not in metrics:
        metrics = [first] + metrics
    if not metrics:
        return None
    fig, axes = _figure(6 * len(metrics), 4.5, ncols=len(metrics))
    for ax, metric in zip(axes, metrics):
        for i, r in reversed(list(enumerate(done))):
            hist = [h for h in study.history(r["trial_id"]) if metric in h and "step" in h]
            if not hist:
                continue
            xs, ys = [h["step"] for h in hist], [h[metric] for h in hist]
            if i < top:
                ax.plot(xs, ys, "-o", ms=3, color=COLORS[i % len(COLORS)],
                        label=f"{r['trial_id']} {_label(r.get('values') or {}, 30)}")
            else:
                ax.plot(xs, ys, "-", color="#cccccc", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} during training")
    axes[0].legend(fontsize=7, loc="best")
    return fig


def slices(study, top: int = 15) -> Optional[Figure]:
    """Test accuracy per slice (e.g. MQAR's kv pairs and lengths) of the best designs, as a heatmap."""
    done = ranked_completed(study)[:top]
    names = sorted({k[len("test/acc/"):] for r in done for k in (r.get("final") or {}) if k.startswith("test/acc/")})
    if not done or not names:
        return None
    grid = np.array([[metric_of(r, f"test/acc/{s}") if metric_of(r, f"test/acc/{s}") is not None else np.nan
                      for s in names] for r in done])
    fig, (ax,) = _figure(max(6, 1.2 * len(names) + 4), 1.2 + 0.4 * len(done))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(done)), [f"{r['trial_id']} {_label(r.get('values') or {}, 36)}" for r in done], fontsize=7)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_title("per-slice recall (test accuracy), best designs first")
    return fig


def ratio(study) -> Optional[Figure]:
    """Recall and loss against the attention share, one line per memory mixer, intervals over seeds."""
    done = study.completed
    if len({(r.get("attention_layers"), len(r.get("layout") or "")) for r in done if r.get("layout")}) < 2:
        return None
    first = objectives(study)[0]
    metrics = [first.metric] if first.metric.startswith(("val/", "test/")) else []
    for m in ("test/acc", "test/loss"):
        if m not in metrics and any(metric_of(r, m) is not None for r in done):
            metrics.append(m)
    if not metrics:
        return None
    fig, axes = _figure(5.5 * len(metrics), 4.5, ncols=len(metrics))
    for ax, metric in zip(axes, metrics):
        for i, (label, curve) in enumerate(ratio_curves(done, metric, LEVEL).items()):
            x = np.array([p["share"] for p in curve])
            m = np.array([p["estimate"].mean for p in curve])
            lo = np.array([p["estimate"].lo for p in curve])
            hi = np.array([p["estimate"].hi for p in curve])
            err = np.where(np.isfinite(lo), np.vstack([m - lo, hi - m]), 0.0)
            ax.errorbar(x + 0.006 * i, m, yerr=err, fmt="-o", capsize=4, color=COLORS[i % len(COLORS)], label=label)
        ax.set_xlabel("share of attention layers")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against the attention share")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over seeds with {LEVEL:.0%} Student-t intervals" if study.seeds > 1
                 else "one seed per design (no interval)", fontsize=9)
    return fig


# ----------------------------------------------------------------------------------------------
# scaling studies (archspace.analysis.study_scaling.analyse)
# ----------------------------------------------------------------------------------------------
def scaling_fits(result: dict, loss_name: str) -> Optional[Figure]:
    """Per family: the loss against training tokens at each model size, with the fitted law."""
    fams = [f for f in result["families"] if f.loss.size]
    if not fams:
        return None
    fig, axes = _panels(len(fams))
    for ax, f in zip(axes, fams):
        sizes = np.unique(f.n)
        for i, n in enumerate(sizes):
            sel = f.n == n
            color = COLORS[i % len(COLORS)]
            ax.scatter(f.d[sel], f.loss[sel], color=color, s=24, label=f"N={n:,.0f}")
            if f.fit is not None:
                d = np.geomspace(f.d.min() / 1.5, f.d.max() * 1.5, 100)
                ax.plot(d, f.fit.predict(n, d), "-", color=color, lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel(loss_name)
        title = f.label
        if f.fit is not None:
            title += (f"\nE={f.fit.E:.3g} A={f.fit.A:.3g} B={f.fit.B:.3g} "
                      f"alpha={f.fit.alpha:.3g} beta={f.fit.beta:.3g}")
        else:
            title += "\n(no fit: " + f.note.split(":")[0] + ")"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def isoflop(result: dict, loss_name: str) -> Optional[Figure]:
    """Approach 2: per family and budget, the loss against N with its parabola and vertex N*."""
    fams = [f for f in result["families"] if np.isfinite(f.budget).any()]
    if not fams:
        return None
    fig, axes = _panels(len(fams))
    for ax, f in zip(axes, fams):
        budgets = sorted(set(f.budget[np.isfinite(f.budget)].tolist()))
        parab = {c: (coef, rng) for c, coef, rng in (f.iso.parabolas if f.iso else [])}
        for i, c in enumerate(budgets):
            sel = f.budget == c
            color = COLORS[i % len(COLORS)]
            ax.scatter(f.n[sel], f.loss[sel], color=color, s=24, label=f"C={c:.2g}")
            if c in parab:
                coef, (lo, hi) = parab[c]
                ln = np.linspace(lo, hi, 60)
                ax.plot(np.exp(ln), np.polyval(coef, ln), "--", color=color, lw=1)
                v = -coef[1] / (2 * coef[0])
                ax.plot([math.exp(v)], [np.polyval(coef, v)], "*", color=color, ms=12)
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel(loss_name)
        extra = (f"\nN* ~ C^{f.iso.a:.2f}" + (" [%.2f, %.2f]" % f.iso.interval("a") if f.iso.interval("a") else "")
                 if f.iso else "\n(no profile with an interior minimum in 2+ budgets)")
        ax.set_title(f"iso-FLOP profiles: {f.label}{extra}", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def compute_optimal(result: dict, loss_name: str) -> Optional[Figure]:
    """The compute-optimal frontier: L*(C) and N*(C) per family with intervals, and the measured runs."""
    fams = [f for f in result["families"] if f.optimal]
    if not fams:
        return None
    budgets = np.array(result["budgets"])
    fig, (ax, axn) = _figure(12, 4.8, ncols=2)
    for i, f in enumerate(fams):
        color = COLORS[i % len(COLORS)]
        opt = f.optimal
        ax.plot(budgets, opt["loss"]["value"], "-o", color=color, label=f"{f.label}: L*(C)")
        if "lo" in opt["loss"]:
            ax.fill_between(budgets, opt["loss"]["lo"], opt["loss"]["hi"], color=color, alpha=0.15)
        ax.scatter(f.c, f.loss, color=color, s=14, alpha=0.6, marker="x")
        axn.plot(budgets, opt["n"]["value"], "-o", color=color, label=f"{f.label}: N*(C)")
        if "lo" in opt["n"]:
            axn.fill_between(budgets, opt["n"]["lo"], opt["n"]["hi"], color=color, alpha=0.15)
        axn.scatter(f.c, f.n, color=color, s=14, alpha=0.6, marker="x")
    best = np.min(np.array([f.optimal["loss"]["value"] for f in fams]), axis=0)
    ax.plot(budgets, best, "k:", lw=2, label="frontier (best family)")
    for a in (ax, axn):
        a.set_xscale("log")
        a.set_xlabel("training FLOPs C")
    axn.set_yscale("log")
    ax.set_ylabel(loss_name)
    axn.set_ylabel("compute-optimal parameters N*")
    ax.set_title(f"compute-optimal loss ({LEVEL:.0%} bootstrap bands; x: trained runs)", fontsize=9)
    axn.set_title("compute-optimal model size", fontsize=9)
    ax.legend(fontsize=7)
    axn.legend(fontsize=7)
    return fig


def state_frontier(result: dict, loss_name: str) -> Optional[Figure]:
    """Loss against recurrent state size, per family, with the state-optimal frontier at each budget."""
    fams = [f for f in result["families"] if f.loss.size]
    if not fams:
        return None
    fig, (ax,) = _figure(8, 5)
    for i, f in enumerate(fams):
        ax.scatter(f.state, f.loss, color=COLORS[i % len(COLORS)], s=22, label=f.label)
    right = max(float(f.state.max()) for f in fams) * 1.3
    for j, (key, pts) in enumerate(result["frontier"].items()):
        xs = [p[0] for p in pts] + [right]  # the best loss so far holds for every larger state
        ys = [p[1] for p in pts] + [pts[-1][1]]
        ax.step(xs, ys, where="post", color="#444444", lw=1.2, ls=["-", "--", ":", "-."][j % 4],
                label=f"frontier, {key}")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", mfc="none", mec="#444444", ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("recurrent state size (numbers per sequence)")
    ax.set_ylabel(loss_name)
    ax.set_title("state-optimal frontier: least loss for at most this much state")
    ax.legend(fontsize=7)
    return fig
