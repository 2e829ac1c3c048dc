"""Sections of report.md over seeds and attention shares (archspace.analysis.stats does the numbers).

- "Designs over seeds" (a space with `seeds: N`): every design's mean and 95% Student-t interval over its seeds.
- "Attention share per memory mixer" (a study whose designs differ in their share of attention layers): recall and
  loss against the share, one row per memory mixer, each cell the mean over seeds with its interval, and what the
  means do along each row.
"""
from __future__ import annotations

import math

from ..analysis.stats import design_key, group_replicates, metric_of, ratio_curves, trend_sentence

LEVEL = 0.95
QUALITY_PREFIXES = ("val/", "test/", "mad")


def _metrics(rows: list[dict], space) -> list[tuple[str, str]]:
    """(metric, mode): the objectives, then test accuracy and loss when the trials have them."""
    out = [(o.metric, o.mode) for o in space.objectives]
    for extra, mode in (("test/acc", "max"), ("test/loss", "min")):
        if extra not in {m for m, _ in out} and any(metric_of(r, extra) is not None for r in rows):
            out.append((extra, mode))
    return out


def replicates_summary(rows: list[dict], space) -> dict:
    """{"designs": [...]} for a space with several seeds (summary.json), best mean of the first objective first."""
    if getattr(space, "seeds", 1) <= 1:
        return {}
    metrics = _metrics(rows, space)
    designs = group_replicates(rows, [m for m, _ in metrics], LEVEL)
    first, mode = metrics[0]
    designs.sort(key=lambda d: (math.inf if not math.isfinite(d["estimates"][first].mean) else
                                (-d["estimates"][first].mean if mode == "max" else d["estimates"][first].mean)))
    for d in designs:
        d["estimates"] = {m: e.to_dict() for m, e in d["estimates"].items()}
    return {"designs": designs}


def _cell(e: dict) -> str:
    """mean [lo, hi] to 4 significant digits; the mean alone for one seed or no spread (a size)."""
    if not e or e.get("n", 0) == 0:
        return "-"
    if e["n"] < 2 or not math.isfinite(e["lo"]) or e["lo"] == e["hi"]:
        return f"{e['mean']:.4g}"
    return f"{e['mean']:.4g} [{e['lo']:.4g}, {e['hi']:.4g}]"


def seeds_markdown(summary: dict, space) -> list[str]:
    designs = summary.get("designs")
    if not designs:
        return []
    metrics = list(designs[0]["estimates"])
    from .progress import fmt_num, short_values

    out = ["## Designs over seeds", "",
           f"Each design trained with {space.seeds} seeds; mean over its completed seeds with a {LEVEL:.0%} Student-t "
           "interval (t quantile with n-1 degrees of freedom; with 3 seeds it is 4.30 standard errors wide on each "
           "side), best mean first.", "",
           "| rank | values | seeds | " + " | ".join(metrics) + " | params | state |",
           "|---|---|---|" + "---|" * len(metrics) + "---|---|"]
    for i, d in enumerate(designs, 1):
        n = max(e.get("n", 0) for e in d["estimates"].values())
        cells = [_cell(d["estimates"][m]) for m in metrics]
        out.append(f"| {i} | {short_values(d['values'], 400).replace('|', chr(92) + '|')} | {n}/{space.seeds} | "
                   + " | ".join(cells) + f" | {fmt_num(d['params'])} | {fmt_num(d['state_size'])} |")
    return out + [""]


def ratio_markdown(summary: dict, space) -> list[str]:
    rows = [r for r in summary["trials"] if r["status"] == "completed"]
    shares = {(r.get("attention_layers"), len(r.get("layout") or "")) for r in rows if r.get("layout")}
    if len(shares) < 2:
        return []
    seeds = getattr(space, "seeds", 1)
    out = ["## Attention share per memory mixer", "",
           "Recall and loss against the share of softmax-attention layers, one row per memory mixer (and per value of "
           "the other axes); the all-attention design ends every row. Cells: mean over "
           + (f"the {seeds} seeds of each design with its {LEVEL:.0%} Student-t interval" if seeds > 1
              else "one seed per design (no interval: run the space with `--seeds N` for intervals)") + ".", ""]
    for metric, mode in _metrics(rows, space):
        if not metric.startswith(QUALITY_PREFIXES):  # sizes follow the layout; recall and loss are the question
            continue
        curves = ratio_curves(rows, metric, LEVEL)
        if not curves:
            continue
        cols = sorted({(p["attention_layers"], p["layers"]) for c in curves.values() for p in c},
                      key=lambda k: k[0] / k[1])
        out += [f"**{metric}** ({mode})", "",
                "| memory mixer | " + " | ".join(f"{a}/{n}" for a, n in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for label, curve in curves.items():
            by = {(p["attention_layers"], p["layers"]): p["estimate"].to_dict() for p in curve}
            out.append(f"| {label} | " + " | ".join(_cell(by.get(c, {})) for c in cols) + " |")
        out += [""] + [f"- {trend_sentence(label, curve, mode, metric)}" for label, curve in curves.items()] + [""]
    return out


__all__ = ["replicates_summary", "seeds_markdown", "ratio_markdown", "design_key"]
