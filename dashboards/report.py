"""The static study report: `<study>/report.html`, its figures in `<study>/report/*.png`, and for scaling studies
`<study>/scaling.json`; the same files logged as artifacts of the study's parent MLflow run.

report.html is self-contained (every figure embedded as a PNG data URI, no script), so it opens from disk, from
MLflow's artifact view or as an e-mail attachment. Sections, each present when the study has the data:
best designs, designs over seeds, the Pareto front, validation curves, per-slice recall, recall and loss against
the attention share, and for a space with a `scaling:` section the fitted laws with intervals, the iso-FLOP
cross-check, the compute-optimal table and frontier, and the state-optimal frontier.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from archspace.analysis.stats import group_replicates, metric_of, ratio_curves, trend_sentence
from archspace.study.progress import fmt_num

from . import plots
from .data import Study

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; } .note { color: #666; font-size: .9em; }
"""


@dataclass
class Report:
    html_path: Path
    plots: dict  # name -> png path
    scaling_json: Optional[Path] = None
    scaling: Optional[dict] = None
    mlflow_run_id: Optional[str] = None
    mlflow_experiment_id: Optional[str] = None
    warnings: list = field(default_factory=list)


def _esc(x) -> str:
    return html.escape(str(x))


def _num(v) -> str:
    """progress.fmt_num's numbers (4 significant digits, k/M/G for counts), '-' for missing or non-finite."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt_num(v)


def _iv(x, iv) -> str:
    if x is None:
        return "-"
    return _num(x) + (f" [{_num(iv[0])}, {_num(iv[1])}]" if iv else "")


def _table(header: list, rows: list, left: int = 1) -> str:
    th = "".join(f"<th class='l'>{_esc(h)}</th>" if i < left else f"<th>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='l'>{_esc(c)}</td>" if i < left else f"<td>{_esc(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: the same bytes each time
    return buf.getvalue()


class _Builder:
    def __init__(self, study: Study, out_dir: Path):
        self.study = study
        self.out_dir = out_dir
        self.parts: list[str] = []
        self.plots: dict[str, Path] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, fig, caption: str) -> None:
        if fig is None:
            return
        data = _png(fig)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        self.plots[name] = path
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        self.add(f"<figure id='plot-{name}'><img class='plot' alt='{_esc(caption)}' src='{uri}'>"
                 f"<figcaption>{_esc(caption)}</figcaption></figure>")


def build_report(study: Study, *, log_mlflow: bool = True, tracking_uri: Optional[str] = None,
                 starts: Optional[int] = None) -> Report:
    """Write report.html, report/*.png (and scaling.json) for a loaded study; log them to its parent MLflow run."""
    t0 = time.perf_counter()
    out_dir = study.dir / "report"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.png"):  # figures of an earlier report that this one may not draw
        old.unlink()
    b = _Builder(study, out_dir)
    s = study.summary
    counts = s.get("counts", {})
    objs = plots.objectives(study)
    b.add(f"<h1>Study <code>{_esc(study.name)}</code></h1>")
    b.add("<p>" + _esc(f"{s.get('total', len(study.rows))} trials: completed {counts.get('completed', 0)}, "
                       f"pruned {counts.get('pruned', 0)}, failed {counts.get('failed', 0)}"
                       + (f"; every design trained with {study.seeds} seeds" if study.seeds > 1 else "")
                       + "; objectives " + ", ".join(f"{o.mode} {o.metric}" for o in objs)) + "</p>")
    b.add(f"<p class='note'>{_esc(str(study.dir))}; MLflow store {_esc(study.tracking_uri)}</p>")

    # best designs
    ranked = plots.ranked_completed(study)
    b.add("<h2>Best designs</h2>")
    if ranked:
        header = ["rank", "trial", "values"] + [f"{o.metric} ({o.mode})" for o in objs] + ["params", "state", "design"]
        rows = [[i, r["trial_id"], plots._label(r.get("values") or {}, 300)]
                + [_num(metric_of(r, o.metric)) for o in objs]
                + [_num(r.get("params")), _num(r.get("state_size")), (r.get("design_hash") or "-")[:12]]
                for i, r in enumerate(ranked[:15], 1)]
        b.add(_table(header, rows, left=3))
        b.figure("best_designs", plots.best_designs(study), f"{objs[0].metric} of the best designs")
    else:
        b.add("<p>No completed trial.</p>")
    if study.seeds > 1 and ranked:
        metrics = [o.metric for o in objs] + [m for m in ("test/acc", "test/loss")
                                               if m not in [o.metric for o in objs]
                                               and any(metric_of(r, m) is not None for r in ranked)]
        groups = group_replicates(ranked, metrics)
        b.add("<h2>Designs over seeds</h2><p class='note'>Mean over the completed seeds of each design with a 95% "
              "Student-t interval (t quantile with n-1 degrees of freedom).</p>")
        b.add(_table(["values", "seeds"] + metrics,
                     [[plots._label(g["values"], 300), f"{max(e.n for e in g['estimates'].values())}/{study.seeds}"]
                      + [g["estimates"][m].text() for m in metrics] for g in groups], left=1))

    # Pareto front, curves, slices
    b.add("<h2>Pareto front</h2>")
    fig = plots.pareto(study)
    b.figure("pareto", fig, "completed trials and their non-dominated front")
    if fig is None:
        b.add("<p>Fewer than two completed trials with both quantities.</p>")
    b.add("<h2>Metric curves</h2>")
    fig = plots.curves(study)
    b.figure("curves", fig, "validation metrics during training (history.csv of each trial)")
    if fig is None:
        b.add("<p>No trial wrote validation curves.</p>")
    fig = plots.slices(study)
    if fig is not None:
        b.add("<h2>Per-slice recall</h2>")
        b.figure("slices", fig, "test accuracy per slice of the best designs")

    # hybridization
    fig = plots.ratio(study)
    if fig is not None:
        b.add("<h2>Attention share per memory mixer</h2>")
        b.figure("ratio", fig, "recall and loss against the share of attention layers")
        for metric in ("test/acc", "test/loss", objs[0].metric):
            curves = ratio_curves(study.completed, metric)
            if not curves:
                continue
            mode = "min" if metric.endswith(("loss", "ppl", "bpb")) else "max"
            cols = sorted({(p["attention_layers"], p["layers"]) for c in curves.values() for p in c},
                          key=lambda k: k[0] / k[1])
            table_rows = []
            for label, curve in curves.items():
                by = {(p["attention_layers"], p["layers"]): p["estimate"].text() for p in curve}
                table_rows.append([label] + [by.get(c, "-") for c in cols])
            b.add(f"<h3>{_esc(metric)}</h3>" + _table(["memory mixer"] + [f"{a}/{n}" for a, n in cols], table_rows))
            b.add("<ul>" + "".join(f"<li>{_esc(trend_sentence(label, c, mode, metric))}</li>"
                                   for label, c in curves.items()) + "</ul>")

    # scaling
    scaling = None
    scaling_json = None
    if study.scaling is not None:
        scaling = _scaling_section(b, study, starts)
        scaling_json = study.dir / "scaling.json"
        scaling_json.write_text(json.dumps(scaling, indent=2, default=_json_default))

    b.add(f"<p class='note'>Written by archspace dashboard in {time.perf_counter() - t0:.1f} s.</p>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>archspace study {_esc(study.name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(b.parts) + "</body></html>")
    html_path = study.dir / "report.html"
    html_path.write_text(page)
    (out_dir / "plots.json").write_text(json.dumps(sorted(b.plots)))
    report = Report(html_path=html_path, plots=b.plots, scaling_json=scaling_json, scaling=scaling)
    if log_mlflow:
        try:
            report.mlflow_run_id, report.mlflow_experiment_id = log_to_mlflow(study, report, tracking_uri)
        except Exception as exc:  # noqa: BLE001 - the files are written; say why MLflow did not get them
            report.warnings.append(f"MLflow: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    return report


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _scaling_section(b: _Builder, study: Study, starts: Optional[int]) -> dict:
    from archspace.analysis.study_scaling import analyse

    spec = study.scaling
    result = analyse(study.rows, spec, starts=starts)
    summ = result["summary"]
    loss = spec["loss"]
    b.add("<h2>Scaling laws</h2>")
    b.add("<p class='note'>" + _esc(
        f"L(N, D) = E + A/N^alpha + B/D^beta fitted per family ({', '.join(spec['family']) or 'one family'}) to "
        f"{loss} of every completed trial, N = {spec['params']}, D = tokens trained: Huber loss (delta 1e-3) on log "
        f"residuals in log-sum-exp form, L-BFGS from Hoffmann et al.'s 4,500-point grid of starts; "
        f"{spec['level']:.0%} percentile intervals from {spec['bootstrap']} bootstrap resamples of the trials. "
        "Training FLOPs are 3 x the accounting's forward FLOPs per token (archspace.budget).") + "</p>")
    rows = []
    for label, e in summ["families"].items():
        fit = e.get("fit")
        if fit is None:
            rows.append([label, e["points"]] + ["-"] * 7 + [e.get("note", "")])
            continue
        rows.append([label, e["points"]] + [_iv(fit[k], fit.get(f"{k}_interval")) for k in ("E", "A", "B", "alpha", "beta")]
                    + [_iv(fit["a"], fit.get("a_interval")), _iv(fit["b"], fit.get("b_interval")),
                       ("converged" if fit["converged"] else "NOT converged") + (f"; {e['note']}" if e.get("note") else "")])
    b.add(_table(["family", "points", "E", "A", "B", "alpha", "beta", "a (N* ~ C^a)", "b (D* ~ C^b)", ""], rows))
    b.figure("scaling_fit", plots.scaling_fits(result, loss), "loss against training tokens per model size, and the fit")
    iso_rows = []
    for label, e in summ["families"].items():
        iso = e.get("isoflop")
        if iso:
            cc = e.get("cross_check")
            verdict = "-" if not cc else ("intervals overlap" if cc["intervals_overlap"] else "DISAGREE")
            if len(iso["budgets"]) == 2:
                verdict += "; a slope through two vertices: weak evidence either way"
            iso_rows.append([label, len(iso["budgets"]), _iv(iso["a"], iso.get("a_interval")),
                             _iv(iso["b"], iso.get("b_interval")), verdict])
    fig = plots.isoflop(result, loss)
    if fig is not None:
        b.add("<h3>Iso-FLOP cross-check (approach 2)</h3>")
        b.figure("isoflop", fig, "loss against N at each FLOP budget, parabolas in log N and their minima")
        b.add(_table(["family", "profiles", "a (N* ~ C^a)", "b (D* ~ C^b)", "against the parametric fit"], iso_rows)
              if iso_rows else "<p>No family has two budgets whose profile has its minimum inside the sampled sizes: "
                               "approach 2 needs sizes on both sides of the optimum.</p>")
    table = []
    for label, e in summ["families"].items():
        for row in e.get("compute_optimal", []):
            table.append([label, f"{row['budget']:.3g}", _iv(row["n"], row.get("n_interval")),
                          _iv(row["d"], row.get("d_interval")), _iv(row["loss"], row.get("loss_interval"))])
    if table:
        b.add("<h3>Compute-optimal allocation</h3><p class='note'>N*, D* minimise the fitted L subject to "
              "C = f(N) D, f the family's training FLOPs per token (a line through its trials' accounting); budgets "
              "beyond the trained ones are extrapolations.</p>")
        b.add(_table(["family", "FLOPs C", "N*", "D* (tokens)", f"{loss} at the optimum"], table))
        frontier = summ.get("compute_optimal_frontier") or []
        if frontier:
            b.add(_table(["FLOPs C", "best family", f"{loss}"],
                         [[f"{x['budget']:.3g}", x["family"], _num(x["loss"])] for x in frontier], left=2))
        b.figure("compute_optimal", plots.compute_optimal(result, loss), "the compute-optimal frontier")
    b.add("<h3>State-optimal frontier</h3>")
    b.figure("state_frontier", plots.state_frontier(result, loss),
             "loss against recurrent state size; the frontier holds the least loss for at most that much state")
    return summ


def log_to_mlflow(study: Study, report: Report, tracking_uri: Optional[str] = None) -> tuple[str, str]:
    """Log the report, its figures and the scaling fits on the study's parent run (tag archspace.role=study);
    returns (run id, experiment id)."""
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from archspace.study.tracking import mlflow_name

    uri = tracking_uri or study.tracking_uri
    if uri.startswith("sqlite:") and not (study.dir / "mlflow.db").exists() and tracking_uri is None:
        raise FileNotFoundError(f"no MLflow store at {study.dir / 'mlflow.db'} (the study used a tracking server? "
                                "give --tracking-uri)")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study.dir.name)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {study.dir.name!r} in {uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`archspace.role` = 'study'", max_results=1)
    if not runs:
        raise LookupError(f"experiment {study.dir.name!r} has no parent run (tag archspace.role = study)")
    run_id = runs[0].info.run_id
    client.log_artifact(run_id, str(report.html_path))
    for path in report.plots.values():
        client.log_artifact(run_id, str(path), "report")
    if report.scaling_json is not None:
        client.log_artifact(run_id, str(report.scaling_json))
        now = int(time.time() * 1000)
        metrics = []
        for label, e in (report.scaling or {}).get("families", {}).items():
            fit = e.get("fit") or {}
            for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
                if k in fit:
                    metrics.append(Metric(mlflow_name(f"scaling/{label}/{k}"), float(fit[k]), now, 0))
                for side, i in (("lo", 0), ("hi", 1)):
                    iv = fit.get(f"{k}_interval")
                    if iv and math.isfinite(iv[i]):
                        metrics.append(Metric(mlflow_name(f"scaling/{label}/{k}_{side}"), float(iv[i]), now, 0))
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i:i + 900])
    client.set_tag(run_id, "archspace.report", str(report.html_path))
    return run_id, exp.experiment_id
