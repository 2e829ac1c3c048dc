"""`archspace compare A B ...`: runs or studies side by side in the terminal.

- Runs (a run directory, a study's trials/<id>/, or a run name under the results root): one column per run, one
  row per quantity: design, size, cost, budget spent, and every final val/ and test/ metric; the best value of a
  row in bold where its direction is known (accuracy up; loss, perplexity, bits per byte, size and cost down).
- Studies: one column per study: trial counts, seeds, objectives, the best design and its values, the scaling
  fit's coefficients when the study has scaling.json (written by `archspace dashboard`).
- A mix: each study stands in by its best trial, as a run column.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from archspace.study.progress import fmt_num

from .data import is_study_dir, load_study, locate, read_json

RUN_ROWS = ("layout", "design_hash", "params", "params_non_embedding", "active_params", "state_size",
            "flops_per_token", "steps", "tokens", "train_flops", "train_wall_s", "throughput_tok_s")
LOWER_BETTER = ("loss", "ppl", "bpb", "params", "params_non_embedding", "active_params", "state_size",
                "flops_per_token", "train_flops", "train_wall_s")
HIGHER_BETTER = ("acc", "throughput_tok_s", "mad_score")


def _direction(key: str) -> Optional[str]:
    last = key.rsplit("/", 1)[-1]
    head = key.split("/")[1] if key.count("/") >= 1 else key
    if key.startswith(("val/acc", "test/acc")) or last in HIGHER_BETTER or head == "acc":
        return "max"
    if last in LOWER_BETTER or head in ("loss", "ppl", "bpb"):
        return "min"
    return None


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt_num(v)


def _run_column(path: Path, label: Optional[str] = None) -> tuple[str, dict]:
    from archspace import yamlio

    metrics = read_json(path / "metrics.json")
    try:
        resolved, _ = yamlio.load(path / "resolved.yaml")
    except Exception:  # noqa: BLE001 - a run directory without a readable resolved.yaml shows less
        resolved = {}
    name = label or (f"{path.parent.parent.name}/{path.name}" if path.parent.name == "trials" else path.name)
    col = {k: metrics.get(k) for k in RUN_ROWS}
    col["layout"] = resolved.get("layout") if isinstance(resolved, dict) else None
    col["design_hash"] = (metrics.get("design_hash") or "")[:12] or None
    for k, v in metrics.items():
        if k.startswith(("val/", "test/", "mad")) and isinstance(v, (int, float)):
            col[k] = float(v)
    return name, col


def _study_column(study) -> dict:
    from .plots import objectives, ranked_completed

    s = study.summary
    counts = s.get("counts", {})
    col: dict = {"trials": f"{counts.get('completed', 0)} done / {counts.get('pruned', 0)} pruned / "
                           f"{counts.get('failed', 0)} failed", "seeds": study.seeds}
    ranked = ranked_completed(study)
    objs = objectives(study)
    col["objectives"] = ", ".join(f"{o.mode} {o.metric}" for o in objs)
    if ranked:
        best = ranked[0]
        col["best trial"] = best["trial_id"]
        col["best values"] = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in (best.get("values") or {}).items())
        for o in objs:
            col[f"best {o.metric}"] = (best.get("objectives") or {}).get(o.metric)
        col["best params"] = best.get("params")
        col["best state"] = best.get("state_size")
    scaling = read_json(study.dir / "scaling.json")
    for label, fam in (scaling.get("families") or {}).items():
        fit = fam.get("fit") or {}
        if fit:
            col[f"fit {label}"] = (f"alpha {fit['alpha']:.3g} beta {fit['beta']:.3g} E {fit['E']:.3g}; "
                                   f"N*~C^{fit['a']:.2f}")
    return col


def compare(targets: list[str], *, results_dir: Optional[str] = None, console=None) -> int:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 200)
    paths = [locate(t, results_dir) for t in targets]
    studies = [p for p in paths if is_study_dir(p)]
    columns: list[tuple[str, dict]] = []
    if len(studies) == len(paths):
        loaded = [load_study(p) for p in paths]
        columns = [(st.name, _study_column(st)) for st in loaded]
        title = "studies side by side"
    else:
        for p in paths:
            if is_study_dir(p):
                from .plots import ranked_completed

                st = load_study(p)
                ranked = ranked_completed(st)
                if not ranked:
                    columns.append((f"{st.name}: no completed trial", {}))
                    continue
                columns.append(_run_column(p / "trials" / ranked[0]["trial_id"],
                                           f"{st.name} best ({ranked[0]['trial_id']})"))
            else:
                columns.append(_run_column(p))
        title = "runs side by side"
    keys: list[str] = []
    for _, col in columns:
        for k in col:
            if k not in keys:
                keys.append(k)
    fixed = [k for k in keys if not k.startswith(("val/", "test/", "mad"))]
    keys = fixed + sorted(k for k in keys if k.startswith(("val/", "test/", "mad")))
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name, _ in columns:
        table.add_column(name, justify="right", overflow="fold")
    for k in keys:
        vals = [col.get(k) for _, col in columns]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        best = None
        if len(nums) >= 2 and _direction(k) and len(set(nums)) > 1:
            best = max(nums) if _direction(k) == "max" else min(nums)
        cells = [f"[bold]{_fmt(v)}[/bold]" if best is not None and v == best else _fmt(v) for v in vals]
        table.add_row(k, *cells)
    console.print(table)
    if any(_direction(k) for k in keys):
        console.print("bold: the best of a row (accuracy higher; loss, perplexity, size and cost lower)")
    return 0

