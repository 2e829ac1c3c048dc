"""Select a hyper-parameter on validation, report test once: the table of a study swept over, e.g., learning rates.

Zoology (Arora et al. 2023) reports, per design, the best accuracy over its learning-rate sweep, where "best" is
the largest final TEST accuracy (its trainer has no validation split). Picking on the test set makes the reported
number an optimistic, selection-biased estimate. This module does it the other way: per design (the trial's
sampled values without the swept axis and the seed), the value of the swept axis whose mean validation metric
over seeds is highest is chosen, and the test metric is reported at that value only: mean, standard deviation
and Student-t interval over the seeds (archspace.analysis.stats). Zoology's own pick (the mean test metric at the
value with the best mean test metric) is given beside it, for comparison with published numbers.

    python -m archspace.analysis.select STUDY_DIR --over train.lr [--metric acc] [--by model.d_model ...]

Rows are the study's trial rows (summary.json: `values`, `status`, `final`, `seed`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

from .stats import Estimate, t_interval


def _key(values: dict, over: str) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in values.items() if k != over))


def select(rows: list[dict], over: str, metric: str = "acc") -> list[dict]:
    """One entry per design: {values, chosen, val, test, test_sd, zoology, zoology_at, per_value}."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") != "completed" or not r.get("final"):
            continue
        values = r.get("values") or {}
        if over not in values:
            raise ValueError(f"trial {r.get('trial_id')} has no sampled {over!r}; sampled: {', '.join(values)}")
        g = groups.setdefault(_key(values, over), {"values": {k: v for k, v in values.items() if k != over},
                                                     "by": {}})
        g["by"].setdefault(json.dumps(values[over], default=str), []).append(r)
    out = []
    for g in groups.values():
        per_value = {}
        for v, trials in g["by"].items():
            per_value[json.loads(v)] = {
                "val": t_interval([t["final"].get(f"val/{metric}") for t in trials]),
                "test": t_interval([t["final"].get(f"test/{metric}") for t in trials]),
                "seeds": sorted(t.get("seed") for t in trials),
            }
        chosen = max(per_value, key=lambda v: _mean(per_value[v]["val"]))
        zoo_at = max(per_value, key=lambda v: _mean(per_value[v]["test"]))
        out.append({"values": g["values"], "chosen": chosen, "val": per_value[chosen]["val"],
                    "test": per_value[chosen]["test"], "zoology": per_value[zoo_at]["test"], "zoology_at": zoo_at,
                    "per_value": per_value})
    return out


def _mean(e: Estimate) -> float:
    return e.mean if math.isfinite(e.mean) else -math.inf


def table(entries: list[dict], over: str, columns: Optional[list[str]] = None) -> str:
    """A markdown table: design columns, the chosen value, validation and test at it, Zoology's pick."""
    columns = columns or sorted({k for e in entries for k in e["values"]})
    head = [c.split(".")[-1] for c in columns] + [f"{over.split('.')[-1]} (on val)", "val", "test mean +- sd [95% CI]",
                                                  "seeds", "Zoology-style: max test over " + over.split(".")[-1]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in sorted(entries, key=lambda e: [str(e["values"].get(c)) for c in columns]):
        t = e["test"]
        test = f"{t.mean:.3f} +- {t.sd:.3f} [{t.lo:.3f}, {t.hi:.3f}]" if t.n > 1 else f"{t.mean:.3f}"
        seeds = e["per_value"][e["chosen"]]["seeds"]
        lines.append("| " + " | ".join([str(e["values"].get(c, "-")) for c in columns] + [
            f"{e['chosen']:g}" if isinstance(e["chosen"], float) else str(e["chosen"]), f"{e['val'].mean:.3f}", test,
            ",".join(map(str, seeds)), f"{e['zoology'].mean:.3f} (at {e['zoology_at']})"]) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", help="a study directory (with summary.json)")
    ap.add_argument("--over", default="train.lr", help="the swept axis to select on validation (default train.lr)")
    ap.add_argument("--metric", default="acc", help="val/<metric> selects, test/<metric> is reported (default acc)")
    ap.add_argument("--by", nargs="*", default=None, help="design columns to show (default: every other axis)")
    args = ap.parse_args(argv)
    path = Path(args.study) / "summary.json"
    if not path.is_file():
        print(f"error: {path}: no such file. A study writes summary.json when it finishes (or is interrupted); "
              f"give a study directory (RESULTS/studies/<name>), or run `archspace study` on its space again to "
              f"finish it.", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text())
    try:
        entries = select(summary["trials"], args.over, args.metric)
    except ValueError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    print(table(entries, args.over, args.by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
