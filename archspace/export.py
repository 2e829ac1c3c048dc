"""`archspace export`: a trained design -> a self-contained directory that loads with torch alone.

    archspace export STUDY_OR_RUN --out DIR [--rank N | --run-id ID] [--force]

STUDY_OR_RUN is a study directory (`<results>/studies/<name>/`), a study name under the results
root, or a run directory (`archspace train`'s, or a study's `trials/<id>/`). From a study the
trial of rank 1 is exported (the ranking of the study's report: completed trials, Pareto layers,
then the first objective), `--rank N` picks another, `--run-id` an MLflow child run.

DIR receives
    config.json             the resolved design (key "archspace") plus Hugging Face fields and auto_map
    model.safetensors       the run's final weights (same tensors, metadata {"format": "pt"} added)
    modeling_archspace.py   the entry module (archspace/blocks/modeling_archspace.py): load(), generate() and,
                            when transformers imports, ArchspaceConfig / ArchspaceForCausalLM
    <module>.py             every file of archspace.blocks and archspace.kernels the entry reaches through
                            relative imports, copied flat: only those imports are rewritten
                            (`from ..kernels.gla import x` -> `from .gla import x`), so the numerics are
                            archspace's own
    generate.py             `python generate.py --prompt 1,2,3 --max-new-tokens 16`
    README.md               the model card

The export checks itself: a separate Python process, in which archspace cannot be imported, loads the
written directory through its own files and must give archspace's logits on a fixed input.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

EXPORT_FORMAT = 1
MODELING_FILE = "modeling_archspace.py"
OUTPUT_FILES = ("config.json", "model.safetensors", MODELING_FILE, "generate.py", "README.md")


# ----------------------------------------------------------------------------------------------
# What to export
# ----------------------------------------------------------------------------------------------
@dataclass
class Selection:
    run_dir: Path
    study_dir: Optional[Path] = None
    trial_id: Optional[str] = None
    rank: Optional[int] = None
    mlflow_run_id: Optional[str] = None
    study: dict = field(default_factory=dict)  # name, objectives, counts, this trial's objective values


def _err(message: str, hint: Optional[str] = None, file: str = "<command line>") -> ConfigError:
    return ConfigError(message, file=file, hint=hint)


def _is_run_dir(p: Path) -> bool:
    return (p / "resolved.yaml").is_file()


def _is_study_dir(p: Path) -> bool:
    return (p / "study.json").is_file() or ((p / "trials").is_dir() and not _is_run_dir(p))


def find_target(target: str, results_dir: Optional[str]) -> Path:
    """A path as given, else a study (or run) name under the results root."""
    p = Path(target).expanduser()
    if p.exists():
        return p.absolute()
    if p.is_absolute() or len(p.parts) > 1:  # a path, not a name: joined to the results root it stays itself
        raise _err(f"nothing to export at {target!r}: no such file or directory",
                   hint="Give a study directory, a run directory (with resolved.yaml and model.safetensors), or a "
                        "study name with --results-dir")
    root = Path(results_dir or os.environ.get("ARCHSPACE_RESULTS") or "results").expanduser().absolute()
    for cand in (root / "studies" / target, root / "runs" / target):
        if cand.exists():
            return cand
    raise _err(f"nothing to export at {target!r}: it is neither a path nor a study or run name under the results "
               f"root {root} (looked for {root / 'studies' / target} and {root / 'runs' / target})",
               hint="Give a study directory, a run directory (with resolved.yaml and model.safetensors), or a "
                    "study name with --results-dir")


def _ranked_trials(study_dir: Path) -> tuple[list[dict], dict]:
    """The study's trials best first, as report.md ranks them, and the study summary."""
    summary_path = study_dir / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
            return list(summary.get("trials") or []), summary
        except ValueError:
            pass
    # No summary (an interrupted study): rank the trials that finished from their metrics.json.
    from .study.space import Objective

    objectives = None
    space_file = study_dir / "space.yaml"
    if space_file.exists():
        try:
            from .study.space import load_space

            objectives = list(load_space(str(space_file)).objectives)
        except ConfigError:
            objectives = None
    objectives = objectives or [Objective("val/acc", "max")]
    rows = []
    for d in sorted((study_dir / "trials").glob("*/")):
        m = d / "metrics.json"
        if not m.exists():
            continue
        try:
            metrics = json.loads(m.read_text())
        except ValueError:
            continue
        rows.append({"trial_id": d.name, "status": "completed", "values": {},
                     "objectives": {o.metric: float(metrics[o.metric]) for o in objectives
                                    if isinstance(metrics.get(o.metric), (int, float))},
                     "params": metrics.get("params"), "state_size": metrics.get("state_size"),
                     "design_hash": metrics.get("design_hash")})
    from .study.progress import rank_rows

    summary = {"study": study_dir.name, "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
               "counts": {"completed": len(rows)}, "source": "trials/*/metrics.json (no summary.json)"}
    return rank_rows(rows, objectives), summary


def _trial_of_run_id(study_dir: Path, run_id: str, tracking_uri: Optional[str]) -> str:
    uri = tracking_uri
    if uri is None:
        db = study_dir / "mlflow.db"
        if not db.exists():
            raise _err(f"--run-id needs the study's MLflow store, and {db} does not exist",
                       hint="Give --tracking-uri of the MLflow server the study logged to")
        uri = f"sqlite:///{db}"
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as exc:
        raise _err(f"MLflow run {run_id!r} not found in {uri}: {str(exc).splitlines()[0][:200]}") from None
    tags = run.data.tags
    trial_id = tags.get("archspace.trial_id")
    if not trial_id:
        role = tags.get("archspace.role", "not an archspace run")
        raise _err(f"MLflow run {run_id} is not a trial of a study (role: {role})",
                   hint="Give the run id of a trial (a child run), not the study's parent run")
    if tags.get("archspace.study") not in (None, study_dir.name):
        raise _err(f"MLflow run {run_id} is a trial of study {tags.get('archspace.study')!r}, not of {study_dir.name!r}")
    return trial_id


def select(target: str, *, results_dir: Optional[str] = None, rank: Optional[int] = None,
           run_id: Optional[str] = None, tracking_uri: Optional[str] = None) -> Selection:
    path = find_target(target, results_dir)
    if rank is not None and rank < 1:
        raise _err(f"--rank must be 1 or more, got {rank}")
    if rank is not None and run_id is not None:
        raise _err("give either --rank or --run-id, not both")
    if _is_run_dir(path):
        if rank is not None or run_id is not None:
            raise _err(f"{path} is a run directory: --rank and --run-id choose a trial of a study",
                       hint="Give the study directory instead, or leave them out")
        sel = Selection(run_dir=path)
        parent = path.parent.parent
        if path.parent.name == "trials" and _is_study_dir(parent):
            sel.study_dir, sel.trial_id = parent, path.name
            _attach_study_info(sel)
        return _check_run(sel)
    if not path.is_dir() or not _is_study_dir(path):
        raise _err(f"{path} is neither a run directory (no resolved.yaml) nor a study directory (no study.json "
                   f"or trials/)", hint="Give a study directory, a run directory or a study name")
    sel = Selection(run_dir=path, study_dir=path)
    if run_id is not None:
        sel.trial_id = _trial_of_run_id(path, run_id, tracking_uri)
        sel.mlflow_run_id = run_id
        sel.run_dir = path / "trials" / sel.trial_id
        if not sel.run_dir.is_dir():
            raise _err(f"MLflow run {run_id} is trial {sel.trial_id}, which has no directory {sel.run_dir}")
        _attach_study_info(sel)
        return _check_run(sel)
    ranked, _ = _ranked_trials(path)
    completed = [r for r in ranked if r.get("status") == "completed"]
    want = rank or 1
    if not completed:
        raise _err(f"study {path.name} at {path} has no completed trial to export",
                   hint="Pruned and failed trials have no final weights")
    if want > len(completed):
        raise _err(f"--rank {want}: study {path.name} has only {len(completed)} completed trial(s)")
    sel.trial_id = completed[want - 1]["trial_id"]
    sel.run_dir = path / "trials" / sel.trial_id
    _attach_study_info(sel)
    return _check_run(sel)


def _attach_study_info(sel: Selection) -> None:
    try:
        ranked, summary = _ranked_trials(sel.study_dir)
    except Exception:  # noqa: BLE001 - the card then says less about the study
        ranked, summary = [], {}
    completed = [r for r in ranked if r.get("status") == "completed"]
    row = next((r for r in ranked if r.get("trial_id") == sel.trial_id), None)
    if row is not None and row in completed:
        sel.rank = completed.index(row) + 1
    sel.study = {"name": summary.get("study") or sel.study_dir.name, "dir": str(sel.study_dir),
                 "objectives": summary.get("objectives") or [], "counts": summary.get("counts") or {},
                 "total": summary.get("total"), "rank": sel.rank,
                 "trial": row or {"trial_id": sel.trial_id},
                 "top": [{"trial_id": r["trial_id"], "objectives": r.get("objectives"), "values": r.get("values"),
                          "design_hash": r.get("design_hash")} for r in completed[:5]]}


def _check_run(sel: Selection) -> Selection:
    d = sel.run_dir
    what = f"trial {sel.trial_id} of study {sel.study_dir.name}" if sel.trial_id else f"run {d}"
    if not d.is_dir():
        raise _err(f"{what}: no run directory {d}")
    if not (d / "resolved.yaml").is_file():
        raise _err(f"{what}: {d} has no resolved.yaml")
    if not (d / "model.safetensors").is_file():
        why = "its training did not finish (pruned, failed or interrupted)"
        if (d / "error.json").exists():
            try:
                why = "it failed: " + json.loads((d / "error.json").read_text())["reason"]
            except (ValueError, KeyError):
                pass
        raise _err(f"{what} has no final weights ({d / 'model.safetensors'}): {why}",
                   hint="Export a completed run; runs trained before weights were saved must be trained again")
    return sel


def read_weights(path: Path, what: str) -> dict:
    """The tensors of a model.safetensors, or a ConfigError naming it (empty, truncated or not safetensors at
    all: the safetensors reader then raises its own exception type, a traceback for the user)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _err(f"{what}: the weights are not a readable safetensors file ({str(exc).splitlines()[0][:200]})",
                   hint="It was truncated or overwritten; train the run again (or export it again)",
                   file=str(path)) from None


def exported_design(config: Any, path: Path) -> dict:
    """The resolved design of an export's config.json (its "archspace" entry), or a ConfigError naming what is
    missing (a config.json of another model, or edited by hand)."""
    resolved = config.get("archspace") if isinstance(config, dict) else None
    missing = [k for k in ("model", "task", "train") if not isinstance((resolved or {}).get(k), dict)]
    if not isinstance(resolved, dict) or missing:
        where = "archspace" if not isinstance(resolved, dict) else f"archspace.{missing[0]}"
        raise _err(f"no resolved archspace design: key {where!r} is missing", file=str(path),
                   hint="Give a directory written by `archspace export`")
    return resolved


# ----------------------------------------------------------------------------------------------
# The modelling files: blocks/ and kernels/ files copied flat, relative imports rewritten
# ----------------------------------------------------------------------------------------------
ENTRY = "archspace.blocks.modeling_archspace"


def _module_file(name: str) -> Optional[Path]:
    """The source file of a module of archspace.blocks or archspace.kernels (subpackages included), or None."""
    import importlib.util

    if not name.startswith(("archspace.blocks.", "archspace.kernels.")):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    origin = None if spec is None or spec.origin is None else Path(spec.origin)
    return origin if origin is not None and origin.suffix == ".py" and origin.name != "__init__.py" else None


def _relative_imports(name: str, tree: ast.Module) -> list:
    """(node, absolute module) of every relative import in module ``name`` (function-level ones included)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = name.split(".")[: -node.level]
            if not node.module:
                raise RuntimeError(f"{name}: `from {'.' * node.level} import ...` cannot be flattened; "
                                   "import names from a module")
            out.append((node, ".".join(base + [node.module])))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.name if isinstance(node, ast.Import) else node.module or "").startswith("archspace")
                for a in node.names):
            raise RuntimeError(f"{name}: an absolute archspace import would not be self-contained in an export")
    return out


def modeling_sources() -> dict:
    """file name -> source of the export's modelling files: ENTRY and every blocks/kernels module it reaches
    through relative imports, each relative import rewritten to its flat sibling (`from ..kernels.gla import x`
    -> `from .gla import x`). The file stems are unique across the two packages, so nothing is renamed."""
    sources: dict[str, str] = {}
    origin: dict[str, str] = {}
    todo = [ENTRY]
    while todo:
        name = todo.pop()
        stem = name.rsplit(".", 1)[1]
        if origin.get(stem) == name:
            continue
        path = _module_file(name)
        if path is None:
            raise RuntimeError(f"{name} is not a file of archspace.blocks or archspace.kernels")
        if stem in origin:  # the export is flat: every module it carries needs a file name of its own
            raise RuntimeError(f"{name} and {origin[stem]} would both be {stem}.py in a flat export")
        origin[stem] = name
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        for node, target in sorted(_relative_imports(name, ast.parse(text, str(path))), key=lambda x: -x[0].lineno):
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            indent = lines[node.lineno - 1][: node.col_offset]
            lines[node.lineno - 1: node.end_lineno] = [f"{indent}from .{target.rsplit('.', 1)[1]} import {names}\n"]
            todo.append(target)
        sources[f"{stem}.py"] = "".join(lines)
    return dict(sorted(sources.items()))


GENERATE_PY = '''"""Generate with this export: python generate.py --prompt 3,17,5 --max-new-tokens 16 [--sample]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_archspace import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
'''


# ----------------------------------------------------------------------------------------------
# Writing the export
# ----------------------------------------------------------------------------------------------
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("archspace")
    except Exception:  # noqa: BLE001
        return "unknown"


_CHECK = r"""
import sys
sys.modules["archspace"] = None  # an export must not need archspace
sys.path.insert(0, sys.argv[1])
import torch
from modeling_archspace import load
model = load(sys.argv[1])
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model.logits(model(ids)), sys.argv[3])
"""


def verify(out: Path, run_dir: Path, model_cfg) -> float:
    """Load `out` through its own modelling files in a separate Python process (torch only: archspace is made
    unimportable there) and compare its logits with archspace's model on a fixed input; max |diff|."""
    import subprocess
    import tempfile

    import torch
    from safetensors.torch import load_model

    from .blocks.model import SequenceModel

    ref = SequenceModel(model_cfg)
    load_model(ref, str(run_dir / "model.safetensors"))
    ref.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model_cfg.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        a = ref.logits(ref(ids))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ids, Path(tmp) / "ids.pt")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # leave no __pycache__ in the export
        proc = subprocess.run([sys.executable, "-I", "-c", _CHECK, str(out), str(Path(tmp) / "ids.pt"),
                               str(Path(tmp) / "logits.pt")], capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"the export at {out} does not load with torch alone:\n{proc.stderr[-3000:]}")
        b = torch.load(Path(tmp) / "logits.pt")
    diff = float((a - b).abs().max())
    if not diff <= 1e-6:
        raise RuntimeError(f"the exported modelling file does not reproduce archspace's logits (max |diff| {diff:.3g})")
    return diff


def _seq_len(resolved: dict) -> int:
    """The longest training length of the design's task (for state size and FLOPs in the card)."""
    from .grammar import task_seq_len

    try:
        return task_seq_len(resolved.get("task") or {})
    except (KeyError, TypeError, ValueError):
        return 64


def export_tokenizer(task: dict, out: Path) -> str:
    """Write the task's tokenizer files into `out`; return the model card's sentence about them.

    LM tasks: the BPE tokenizer trained on the corpus (`tokenizer.json`, from the token-shard
    cache, rebuilt if the cache is gone) or a description of the byte tokenizer. Synthetic tasks
    (MQAR, MAD) have none: their inputs are token ids made by a generator.
    """
    if task.get("name") != "lm":
        return (f"This task has no tokenizer: `{task.get('name')}` sequences are integer token ids "
                f"in [0, {task.get('vocab_size')}) made by its generator, so the export ships none; "
                "give the model token ids directly.")
    from .tasks.lm import EOS, PAD, build_shards

    if task.get("tokenizer") == "bpe":
        shards = build_shards(task)
        shutil.copy2(shards / "tokenizer.json", out / "tokenizer.json")
        return ("The task's BPE tokenizer (trained on the training documents) is `tokenizer.json`; load it with "
                "`tokenizers.Tokenizer.from_file` (`<eos>` ends every document).")
    spec = {"type": "bytes", "vocab_size": 258, "eos_id": EOS, "pad_id": PAD,
            "encode": "token id = UTF-8 byte value; <eos> ends every document"}
    (out / "tokenizer.json").write_text(json.dumps(spec, indent=2) + "\n")
    return ("The task's tokenizer is byte-level: token id = UTF-8 byte value, `<eos>` = 256, `<pad>` = 257 "
            "(described in `tokenizer.json`).")


def _design_rows(resolved: dict, model_cfg) -> list[list[str]]:
    from .blocks.config import ModelConfig, leaf_mixers
    from .blocks.dispatch import kernel_paths
    from .blocks.model import Layer

    seq_len = _seq_len(resolved)
    rows = []
    labels = resolved.get("labels") or []
    for i, layer in enumerate(model_cfg.layers):
        mx = layer.mixer
        cost = Layer.cost(layer, seq_len)
        parts = []
        for leaf in leaf_mixers(mx):
            if leaf.kind == "memory":
                parts.append((f"{leaf.structure}/{leaf.bias}/{leaf.retention}/{leaf.update}, phi={leaf.feature_map}, "
                              f"key_norm={leaf.key_norm}, conv={leaf.short_conv}, gate={'yes' if leaf.output_gate else 'no'}"
                              + (f", log-linear levels={leaf.levels}" if leaf.hierarchy == "log_linear" else ""),
                              f"K={leaf.key_dim} V={leaf.value_dim}", leaf.heads))
            elif leaf.kind == "conv":
                parts.append((f"gated short conv (BaseConv), kernel {leaf.short_conv}", f"D={leaf.d_model}", "-"))
            else:
                parts.append(("softmax, RoPE" + (f", window {leaf.window}" if leaf.window else ", global"),
                              f"head_dim={leaf.head_dim}", leaf.heads))
        axes = " + ".join(p[0] for p in parts)
        mom = mx if mx.kind == "mom" else mx.memory if mx.kind == "titans" and mx.memory.kind == "mom" else None
        if mom is not None:
            axes = f"MoM top-{mom.top_k} of {mom.memories}{' + shared' if mom.shared_memory else ''}: " + axes
        if mx.kind == "titans":
            axes = f"Titans {mx.variant.upper()} (segment {mx.segment}, {mx.persistent_tokens} persistent): " + axes
        dims = " + ".join(p[1] for p in parts)
        kernel = kernel_paths(ModelConfig(vocab_size=model_cfg.vocab_size, d_model=model_cfg.d_model, layers=(layer,)))[0]
        if layer.mlp is None:
            mlp = "-"
        elif layer.mlp.kind == "moe":
            mlp = f"moe top-{layer.mlp.top_k} of {layer.mlp.experts} x {layer.mlp.hidden}"
        else:
            mlp = f"swiglu {layer.mlp.hidden}"
        rows.append([str(i), labels[i] if i < len(labels) else mx.kind, mx.kind, axes, str(parts[0][2]), dims,
                     mlp, f"{cost.params:,}", f"{cost.state:,}", kernel])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(resolved: dict, model_cfg, metrics: dict, sel: Selection, out: Path, tokenizer_note: str) -> str:
    from .blocks.model import SequenceModel

    seq_len = _seq_len(resolved)
    total = SequenceModel.cost_of(model_cfg, seq_len)
    name = resolved.get("name", "design")
    lines = [f"# {name} (archspace export)", "",
             f"An archspace design (design hash `{resolved.get('design_hash')}`, layout `{resolved.get('layout')}`): "
             f"{len(model_cfg.layers)} layers, d_model {model_cfg.d_model}, vocabulary {model_cfg.vocab_size}, "
             f"{total.params:,} parameters, {total.state:,} numbers of decoding state per sequence at T={seq_len} "
             f"(memory layers: constant in T; attention layers: a KV cache growing with T).", "",
             "## Design", "",
             _md_table(["layer", "preset", "mixer", "axes", "heads", "dims", "mlp", "params", f"state (T={seq_len})",
                        "kernel"], _design_rows(resolved, model_cfg)), "",
             f"Norm eps {model_cfg.norm_eps}, tied embeddings: {model_cfg.tie_embeddings} (the model's own code ties "
             "its head to the embedding or not, as the design says; config.json's `tie_word_embeddings: false` only "
             "keeps transformers' own tying out of it). The full resolved design "
             "(model, task, training recipe) is `config.json` → `archspace`.", ""]
    lines += ["## Provenance", ""]
    if sel.study_dir is not None:
        st = sel.study
        objs = ", ".join(f"{o['mode']} `{o['metric']}`" for o in st.get("objectives") or [])
        counts = st.get("counts") or {}
        lines += [f"- study: `{st.get('name')}` (`{sel.study_dir}`), objectives: {objs or '-'}",
                  f"- trial: `{sel.trial_id}`" + (f", rank {sel.rank} of {counts.get('completed', '?')} completed "
                                                  f"trials ({st.get('total') or '?'} in all)" if sel.rank else ""),
                  ]
        if sel.mlflow_run_id:
            lines.append(f"- MLflow run: `{sel.mlflow_run_id}`")
        trial = st.get("trial") or {}
        if trial.get("objectives"):
            lines.append("- objective values: " + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in trial["objectives"].items()))
        if trial.get("values"):
            lines.append("- sampled values: " + ", ".join(f"`{k}` = {v}" for k, v in trial["values"].items()))
        if st.get("top"):
            lines += ["", "Top completed trials of the study:", "",
                      _md_table(["rank", "trial", "objectives", "design"],
                                [[str(i), r["trial_id"], ", ".join(f"{k}={_fmt(v)}" for k, v in (r.get("objectives") or {}).items()),
                                  (r.get("design_hash") or "-")[:12]] for i, r in enumerate(st["top"], 1)])]
    else:
        lines.append(f"- run directory: `{sel.run_dir}` (a single `archspace train` run, not a study)")
    lines += ["", "## Metrics (final, from the run's metrics.json)", ""]
    keys = [k for k in sorted(metrics) if k.startswith("test/")] + [
        k for k in ("val/acc", "val/loss", "train/loss", "steps", "train_wall_s", "throughput_tok_s", "params",
                    "state_size", "flops_per_token", "data_hash") if k in metrics]
    lines += [_md_table(["metric", "value"], [[f"`{k}`", _fmt(metrics[k])] for k in keys]) if keys else "(none)", ""]
    task = resolved.get("task") or {}
    lines += ["## Task and tokenizer", "",
              f"Trained on `{task.get('name')}` (vocabulary {task.get('vocab_size')}). {tokenizer_note}", ""]
    lines += ["## Use it", "", "With torch only (no archspace, no transformers):", "", "```python",
              "import sys, torch", f"sys.path.insert(0, \"{out.name}\")  # the export directory",
              "from modeling_archspace import load, generate", "",
              f"model = load(\"{out.name}\")                       # SequenceModel, eval mode",
              "ids = torch.tensor([[1, 2, 3, 4]])",
              "logits = model.logits(model(ids))                  # [1, 4, vocab]",
              "out = generate(model, ids, max_new_tokens=16, greedy=True)  # recurrent state + KV cache", "```", "",
              "or from a shell: `python generate.py --prompt 1,2,3,4 --max-new-tokens 16` "
              "(same as `python modeling_archspace.py --generate 1,2,3,4`).", "",
              "With transformers:", "", "```python", "from transformers import AutoModelForCausalLM", "",
              f"model = AutoModelForCausalLM.from_pretrained(\"{out.name}\", trust_remote_code=True)",
              "logits = model(input_ids=ids).logits",
              "out = model.generate(ids, max_new_tokens=16, do_sample=False)  # the decoding state is the cache",
              f"sys.path.insert(0, \"{out.name}\")  # the export directory, for its modelling file",
              "from modeling_archspace import generate  # or model-agnostic loops",
              "```", "",
              "`forward` returns next-token logits for every position (and a shifted cross-entropy `loss` when "
              "`labels` are given). `model.generate()` uses the model's decoding state as its cache (each memory "
              "layer's fixed-size state, each attention layer's KV cache) and gives the tokens of `generate.py`; "
              "an `attention_mask` with padding is refused (a recurrent state cannot skip pad tokens).", "",
              "Train it further with archspace: `archspace train --from " + out.name + "` (the exported recipe) or "
              "`archspace train FILE --from " + out.name + "` (FILE's task and training, same model).", "",
              "## Files", "",
              "- `config.json`: the resolved design under `archspace`, Hugging Face fields and `auto_map`",
              "- `model.safetensors`: the final weights (SequenceModel parameter names)",
              "- `modeling_archspace.py` and the other `.py` files: archspace's block and kernel code, torch only",
              "- `generate.py`: command-line generation", ""]
    return "\n".join(lines)


@dataclass
class ExportResult:
    out: Path
    selection: Selection
    files: list
    max_abs_diff: float
    wall_s: float


def export(sel: Selection, out: Path, *, force: bool = False) -> ExportResult:
    t0 = time.perf_counter()
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise _err(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise _err(f"--out {out} is not empty", hint="Give an empty or new directory, or --force to write into it "
                                                     "(files of an earlier export are replaced, others are kept)")
    if out == sel.run_dir or sel.run_dir in out.parents:
        raise _err(f"--out {out} lies inside the run directory {sel.run_dir}")
    from . import yamlio
    from .blocks.config import ModelConfig

    resolved, _ = yamlio.loads((sel.run_dir / "resolved.yaml").read_text(), file=str(sel.run_dir / "resolved.yaml"))
    model_cfg = ModelConfig.from_dict(resolved["model"])
    metrics = {}
    if (sel.run_dir / "metrics.json").exists():
        try:
            metrics = json.loads((sel.run_dir / "metrics.json").read_text())
        except ValueError:
            metrics = {}
    version = _version()
    task = resolved.get("task") or {}
    tensors = read_weights(sel.run_dir / "model.safetensors", f"run {sel.run_dir}")  # before --out is touched
    from safetensors import safe_open

    with safe_open(str(sel.run_dir / "model.safetensors"), framework="pt") as f:
        st_meta = dict(f.metadata() or {})
    created = not out.exists()
    try:
        return _write_export(sel, out, resolved, model_cfg, metrics, version, task, tensors, st_meta, t0)
    except BaseException:
        if created:  # a failed export leaves no half-written folder behind (an existing --out keeps its files)
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_export(sel, out, resolved, model_cfg, metrics, version, task, tensors, st_meta, t0) -> ExportResult:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values() if t.is_floating_point()})
    st_meta.update({"format": "pt", "archspace.design_hash": str(resolved.get("design_hash"))})
    save_file(tensors, str(out / "model.safetensors"), metadata=st_meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / "model.safetensors", 0o666 & ~umask)  # safetensors writes 0600; the export is shared like its .py

    modeling = modeling_sources()
    for fname, text in modeling.items():
        (out / fname).write_text(text)
    (out / "generate.py").write_text(GENERATE_PY)
    tokenizer_note = export_tokenizer(task, out)
    source = {"run_dir": str(sel.run_dir)}
    if sel.study_dir is not None:
        source.update({"study": sel.study.get("name"), "study_dir": str(sel.study_dir), "trial_id": sel.trial_id,
                       "rank": sel.rank, "objectives": sel.study.get("objectives"),
                       "objective_values": (sel.study.get("trial") or {}).get("objectives")})
    if sel.mlflow_run_id:
        source["mlflow_run_id"] = sel.mlflow_run_id
    config = {
        "architectures": ["ArchspaceForCausalLM"],
        "model_type": "archspace",
        "auto_map": {"AutoConfig": "modeling_archspace.ArchspaceConfig",
                     "AutoModelForCausalLM": "modeling_archspace.ArchspaceForCausalLM"},
        "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.d_model,
        "num_hidden_layers": len(model_cfg.layers),
        "tie_word_embeddings": False,
        "torch_dtype": dtypes[0] if len(dtypes) == 1 else "float32",
        "archspace": resolved,
        "archspace_export": {
            "format": EXPORT_FORMAT,
            "archspace_version": version,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": source,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "tokenizer": "tokenizer.json" if (out / "tokenizer.json").exists() else None,
            "modeling_file": MODELING_FILE,
            "modeling_files": sorted(modeling),
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(resolved, model_cfg, metrics, sel, out, tokenizer_note))
    diff = verify(out, sel.run_dir, model_cfg)
    files = list(OUTPUT_FILES) + [f for f in modeling if f != MODELING_FILE]
    return ExportResult(out, sel, files, diff, time.perf_counter() - t0)
