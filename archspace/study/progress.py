"""What a study shows its user: the live view, the final table of top designs and `report.md`.

The live view is refreshed from a driver-side Tune callback (Tune's own console reporter is off).
On a terminal it is a rich Live panel; otherwise (CI logs, tests) one line per trial event.
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import Any, Optional

from ray.tune import Callback

from .analysis_report import ratio_markdown, replicates_summary, seeds_markdown
from .seeds import base_seed, replicate_of
from .tracking import ended_state, failure_reason, is_number, trial_state

STATE_ORDER = {"completed": 0, "pruned": 1, "failed": 2, "running": 3, "pending": 4}
# Besides test/ and val/ metrics, the final numbers a row keeps for the analyses (archspace.analysis).
FINAL_ROW_KEYS = ("params", "active_params", "state_size", "flops_per_token", "params_non_embedding",
                  "train_flops_per_token", "tokens", "train_flops", "steps", "train_wall_s", "throughput_tok_s")


# ----------------------------------------------------------------------------------------------
# Rows and ranking
# ----------------------------------------------------------------------------------------------
def trial_row(trial, space, study_dir: str, state: Optional[str] = None) -> dict:
    """One trial as a plain dict: id, state, sampled values, objective values, size, hash, reason."""
    from .space import resolve_values, values_from_config

    state = state or trial_state(trial)
    result = dict(trial.last_result or {})
    try:
        values = values_from_config(space, trial.config)
    except Exception:  # noqa: BLE001 - a config the space cannot read is shown as empty
        values = {}
    design_hash = layout = attention_layers = None
    try:
        resolved = resolve_values(space, values)
        design_hash, layout = resolved.design_hash, resolved.layout
        attention_layers = resolved.attention_layers
    except Exception:  # noqa: BLE001 - the trial failed on this; its reason says why
        pass
    objectives = {o.metric: float(result[o.metric]) for o in space.objectives if is_number(result.get(o.metric))}
    return {
        "trial_id": trial.trial_id,
        "status": state,
        "values": values,
        "objectives": objectives,
        "params": int(result["params"]) if is_number(result.get("params")) else None,
        "state_size": int(result["state_size"]) if is_number(result.get("state_size")) else None,
        "steps": int(result["step"]) if is_number(result.get("step")) else None,
        "design_hash": design_hash,
        "layout": layout,
        "attention_layers": attention_layers,
        "slices": {k: float(v) for k, v in result.items() if k.startswith("test/acc/") and is_number(v)},
        "reason": failure_reason(trial, study_dir) if state == "failed" else None,
        "final": {k: float(v) for k, v in result.items()
                  if is_number(v) and (k.startswith(("test/", "val/", "mad")) or k in FINAL_ROW_KEYS)},
        "replicate": replicate_of(trial.config or {}),
        "seed": base_seed(space) + replicate_of(trial.config or {}),
    }


def _key(row: dict, objectives) -> tuple:
    out = []
    for o in objectives:
        v = row["objectives"].get(o.metric)
        out.append(math.inf if v is None else (-v if o.mode == "max" else v))
    return tuple(out)


def dominates(a: tuple, b: tuple) -> bool:
    """a is at least as good everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(rows: list[dict], objectives) -> list[dict]:
    """Non-dominated completed rows (pruned trials have partial-budget values and stay out)."""
    cand = [r for r in rows if r["status"] == "completed" and len(r["objectives"]) == len(objectives)]
    keys = [_key(r, objectives) for r in cand]
    return [r for r, k in zip(cand, keys) if not any(dominates(k2, k) for k2 in keys if k2 is not k)]


def rank_rows(rows: list[dict], objectives) -> list[dict]:
    """Completed first (Pareto layers, then the first objective), then pruned, failed, unfinished."""
    layer: dict[str, int] = {}
    remaining = [r for r in rows if r["status"] == "completed"]
    depth = 0
    while remaining:
        front = pareto_front(remaining, objectives) if len(objectives) > 1 else remaining
        if not front:
            break
        for r in front:
            layer[r["trial_id"]] = depth
        ids = {r["trial_id"] for r in front}
        remaining = [r for r in remaining if r["trial_id"] not in ids]
        depth += 1
        if len(objectives) == 1:
            break
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r["status"], 9), layer.get(r["trial_id"], 99),
                                       _key(r, objectives), r["trial_id"]))


def summarize(rows: list[dict], space) -> dict:
    counts = Counter(r["status"] for r in rows)
    ranked = rank_rows(rows, space.objectives)
    best = ranked[0] if ranked and ranked[0]["status"] == "completed" else None
    return {
        "study": space.name,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in space.objectives],
        "counts": {k: counts.get(k, 0) for k in ("completed", "pruned", "failed", "running", "pending")},
        "total": len(rows),
        "best": best,
        "pareto": pareto_front(rows, space.objectives) if len(space.objectives) > 1 else [],
        "failures": dict(Counter(r["reason"] for r in rows if r["status"] == "failed")),
        "trials": ranked,
        **replicates_summary(ranked, space),
    }


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------
def fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def short_values(values: dict, limit: int = 60) -> str:
    text = ", ".join(f"{k.split('.', 1)[-1] if k.startswith(('model.', 'train.', 'task.')) else k}={v}"
                     for k, v in values.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_columns(space) -> list[str]:
    return (["rank"] + [f"{o.metric} ({o.mode})" for o in space.objectives]
            + ["values", "params", "state", "design", "status"])


def table_cells(rank: int, row: dict, space, limit: int = 60) -> list[str]:
    status = row["status"] + (f" @{row['steps']}" if row["status"] == "pruned" and row.get("steps") else "")
    return ([str(rank)] + [fmt_num(row["objectives"].get(o.metric)) for o in space.objectives]
            + [short_values(row["values"], limit), fmt_num(row["params"]), fmt_num(row["state_size"]),
               (row["design_hash"] or "-")[:12], status])


def rich_table(summary: dict, space, top: int = 10):
    from rich.table import Table

    table = Table(title=f"study {summary['study']}: top designs", title_justify="left")
    for col in table_columns(space):
        table.add_column(col, justify="right" if col not in ("values", "design", "status") else "left",
                         overflow="fold")
    for i, row in enumerate(summary["trials"][:top], 1):
        style = {"failed": "red", "pruned": "yellow"}.get(row["status"])
        table.add_row(*table_cells(i, row, space), style=style)
    return table


def markdown_table(rows: list[dict], space, start: int = 1) -> str:
    cols = table_columns(space)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, row in enumerate(rows, start):
        cells = table_cells(i, row, space, limit=400)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def report_markdown(summary: dict, space, *, study_dir: str, tracking_uri: str, wall_s: float) -> str:
    c = summary["counts"]
    out = [f"# Study `{summary['study']}`", "",
           f"- space file: `{space.file}`  (hash `{space.space_hash}`)",
           f"- sampler: {space.sampler}, seed {space.seed}, {space.trials} trials"
           + (f" x {space.seeds} seeds (train.seed {base_seed(space)}..{base_seed(space) + space.seeds - 1})"
              if space.seeds > 1 else "") + f"; pruner: {space.pruner.get('kind')}",
           "- objectives: " + ", ".join(f"{o.mode} `{o.metric}`" for o in space.objectives),
           f"- trials: {summary['total']} (completed {c['completed']}, pruned {c['pruned']}, failed {c['failed']}"
           + (f", unfinished {c['running'] + c['pending']}" if c['running'] + c['pending'] else "") + ")",
           f"- wall time of the last session: {wall_s:.1f} s",
           f"- study directory: `{study_dir}`",
           f"- MLflow: `{tracking_uri}`" + (f" (open with `mlflow ui --backend-store-uri {tracking_uri}`)"
                                               if tracking_uri.startswith("sqlite:") else ""),
           "", "## Designs, best first", "", markdown_table(summary["trials"], space), ""]
    if len(space.objectives) > 1:
        out += ["## Pareto front", "",
                "Completed designs that no other completed design beats on every objective "
                "(pruned trials stopped at a partial budget and are left out).", ""]
        out += [markdown_table(rank_rows(summary["pareto"], space.objectives), space) if summary["pareto"]
                else "(no completed trial)", ""]
    out += effects_markdown(summary["trials"], space)
    out += seeds_markdown(summary, space) + ratio_markdown(summary, space)
    if summary["failures"]:
        out += ["## Failures", ""] + [f"- {n} x {reason}" for reason, n in summary["failures"].items()] + [""]
    return "\n".join(out)


def _mean(xs: list) -> float:
    return sum(xs) / len(xs)


def effects_markdown(rows: list[dict], space) -> list[str]:
    """How the first objective (and per-slice test accuracy) moves with each axis and with the
    share of attention layers, over completed trials: mean and best per value."""
    done = [r for r in rows if r["status"] == "completed" and r["objectives"]]
    if len(done) < 2:
        return []
    obj = space.objectives[0]
    out = ["## Effect of each axis", "",
           f"Mean and best `{obj.metric}` of completed trials for each value of each axis.", ""]
    for a in space.axes:
        groups: dict = {}
        for r in done:
            if a.name in r["values"] and obj.metric in r["objectives"]:
                groups.setdefault(str(r["values"][a.name]), []).append(r["objectives"][obj.metric])
        if len(groups) < 2:
            continue
        out += [f"**{a.name}**", "", f"| value | trials | mean {obj.metric} | best |", "|---|---|---|---|"]
        for value, xs in groups.items():
            best = max(xs) if obj.mode == "max" else min(xs)
            out.append(f"| {value} | {len(xs)} | {_mean(xs):.4f} | {best:.4f} |")
        out.append("")
    shares: dict = {}
    for r in done:
        if r.get("layout") and r.get("attention_layers") is not None and obj.metric in r["objectives"]:
            key = (r["attention_layers"], len(r["layout"]))
            shares.setdefault(key, []).append(r)
    if len(shares) >= 2:
        slices = sorted({k for r in done for k in r.get("slices", {})})
        out += ["## Attention share", "",
                f"Completed designs grouped by the number of softmax-attention layers: mean `{obj.metric}`"
                + (" and mean test accuracy per slice." if slices else "."), "",
                "| attention layers | trials | mean " + obj.metric + " | best | " + " | ".join(s[9:] for s in slices)
                + (" |" if slices else ""),
                "|---|---|---|---|" + "---|" * len(slices)]
        means = []
        for (n_a, n), rs in sorted(shares.items()):
            xs = [r["objectives"][obj.metric] for r in rs]
            means.append(_mean(xs))
            cells = [f"{_mean([r['slices'][s] for r in rs if s in r.get('slices', {})]):.4f}"
                     if any(s in r.get("slices", {}) for r in rs) else "-" for s in slices]
            best = max(xs) if obj.mode == "max" else min(xs)
            out.append(f"| {n_a}/{n} | {len(rs)} | {_mean(xs):.4f} | {best:.4f} | " + " | ".join(cells)
                       + (" |" if slices else ""))
        better = (lambda x, y: y >= x) if obj.mode == "max" else (lambda x, y: y <= x)
        steps = [better(x, y) for x, y in zip(means, means[1:])]
        trend = " -> ".join(f"{m:.4f}" for m in means)
        word = "rises" if obj.mode == "max" else "falls"
        if all(steps):
            out += ["", f"Mean `{obj.metric}` {word} monotonically as the share of attention layers rises: {trend}."]
        else:
            best_i = max(range(len(means)), key=lambda i: means[i] if obj.mode == "max" else -means[i])
            n_a, n = sorted(shares)[best_i]
            out += ["", f"Mean `{obj.metric}` does not {'rise' if obj.mode == 'max' else 'fall'} monotonically with the "
                        f"share of attention layers; it is best at {n_a}/{n} attention layers: {trend}."]
        if getattr(space, "seeds", 1) <= 1:  # a trend from single runs: say so (see "Attention share per memory mixer")
            out[-1] += " These means pool designs trained with one seed each: no interval."
        out.append("")
    return out


# ----------------------------------------------------------------------------------------------
# Live view
# ----------------------------------------------------------------------------------------------
class StudyView:
    """Counts, best-so-far and recent events; a rich Live panel on a terminal, plain lines otherwise."""

    def __init__(self, space, study_dir: str, *, console=None, live: Optional[bool] = None):
        from rich.console import Console

        self.space = space
        self.study_dir = study_dir
        self.console = console or Console()
        self.live_enabled = self.console.is_terminal if live is None else live
        self.states: dict[str, str] = {}
        self.rows: dict[str, dict] = {}
        self.events: list[str] = []
        self.t0 = time.time()
        self._live = None
        self._last = 0.0

    # state
    def set_state(self, trial, state: str, note: str = "") -> None:
        prev = self.states.get(trial.trial_id)
        self.states[trial.trial_id] = state
        if state in ("completed", "pruned", "failed"):
            self.rows[trial.trial_id] = trial_row(trial, self.space, self.study_dir, state)
        if prev != state:
            row = self.rows.get(trial.trial_id)
            if row is None:
                from .space import values_from_config

                try:
                    vals = short_values(values_from_config(self.space, trial.config))
                except Exception:  # noqa: BLE001
                    vals = ""
            else:
                vals = short_values(row["values"])
            objs = ""
            if row and row["objectives"]:
                objs = " " + " ".join(f"{k}={fmt_num(v)}" for k, v in row["objectives"].items())
            line = f"trial {trial.trial_id} {state}{objs} [{vals}]" + (f": {note}" if note else "")
            if state == "failed" and row:
                line += f": {row['reason']}"
            self.event(line)

    def event(self, line: str) -> None:
        stamp = f"{time.time() - self.t0:6.1f}s"
        self.events = (self.events + [f"{stamp} {line}"])[-6:]
        if not self.live_enabled:
            self.console.print(f"[study] {stamp} {line}", markup=False, highlight=False, soft_wrap=True)
        self.refresh(force=True)

    def counts(self) -> Counter:
        return Counter(self.states.values())

    def best(self) -> Optional[dict]:
        done = [r for r in self.rows.values() if r["status"] == "completed"]
        if not done:
            return None
        return rank_rows(done, self.space.objectives)[0]

    # rendering
    def render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        c = self.counts()
        head = Text.assemble(
            (f"{self.space.name}", "bold"), f"  {len(self.states)}/{self.space.trials * self.space.seeds} trials  ",
            (f"done {c['completed']}", "green"), "  ", (f"running {c['running']}", "cyan"), "  ",
            (f"pruned {c['pruned']}", "yellow"), "  ", (f"failed {c['failed']}", "red"),
            f"  elapsed {time.time() - self.t0:.0f}s")
        best = self.best()
        lines = [head]
        if best:
            objs = ", ".join(f"{k} {fmt_num(v)}" for k, v in best["objectives"].items())
            lines.append(Text(f"best so far: {objs}  [{short_values(best['values'], 100)}]  trial {best['trial_id']}"))
        lines += [Text(e, style="dim") for e in self.events]
        return Panel(Group(*lines), title="archspace study", title_align="left")

    def start(self) -> None:
        if self.live_enabled and self._live is None:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()

    def refresh(self, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.time()
        if force or now - self._last > 1.0:
            self._last = now
            self._live.update(self.render(), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None


class ProgressCallback(Callback):
    """Feeds Tune's trial events to a StudyView (not pickled: a restored Tuner gets a fresh one)."""

    def __init__(self, view: StudyView):
        self.view = view

    def __getstate__(self):
        return {"view": None}

    def _do(self, fn, *args):
        if self.view is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the view must never stop a study
            print(f"(progress view: {type(exc).__name__}: {exc})", file=sys.stderr)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._do(self.view and self.view.set_state, trial, "running")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._do(self.view and self.view.set_state, trial, ended_state(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._do(self.view and self.view.set_state, trial, "failed")

    def on_step_end(self, iteration, trials, **info):
        if self.view is not None:
            for t in trials:  # trials restored as finished never send events: count them once
                if t.trial_id not in self.view.states and trial_state(t) in ("completed", "pruned", "failed"):
                    self.view.states[t.trial_id] = trial_state(t)
                    self.view.rows[t.trial_id] = trial_row(t, self.view.space, self.view.study_dir)
            self._do(self.view.refresh)
