"""`archspace export`: a trained design -> a self-contained directory that loads with torch alone.

    archspace export STUDY_OR_RUN --out DIR [--rank N | --run-id ID] [--force]

STUDY_OR_RUN is a study directory (`<results>/studies/<name>/`), a study name under the results
root, or a run directory (`archspace train`'s, or a study's `trials/<id>/`). From a study the
trial of rank 1 is exported (the ranking of the study's report: completed trials, Pareto layers,
then the first objective), `--rank N` picks another, `--run-id` an MLflow child run.

DIR receives
    config.json             the resolved design (key "archspace") plus Hugging Face fields and auto_map
    model.safetensors       the run's final weights (same tensors, metadata {"format": "pt"} added)
    modeling_archspace.py   the blocks and kernels the design uses, copied from archspace.blocks and
                            archspace.kernels (relative imports removed), plus load(), generate()
                            and, when transformers imports, ArchspaceConfig / ArchspaceForCausalLM
    generate.py             `python generate.py --prompt 1,2,3 --max-new-tokens 16`
    README.md               the model card

The modelling file is a concatenation of the package's own source files in dependency order, so
the numerics are those of archspace; export checks this by loading the written directory through
the written file and comparing its logits with archspace's model on a fixed input.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import sys
import time
import tokenize
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


# ----------------------------------------------------------------------------------------------
# The modelling file: the package's own sources, concatenated in dependency order
# ----------------------------------------------------------------------------------------------
@dataclass
class _Module:
    name: str  # "archspace.blocks.memory"
    path: Path
    source: str
    tree: ast.Module
    internal_imports: list = field(default_factory=list)  # (node, target module, [(name, asname)])
    defs: dict = field(default_factory=dict)  # top-level name -> ast node


def _package_dirs() -> dict[str, Path]:
    from . import blocks, kernels

    return {"archspace.blocks": Path(blocks.__file__).parent, "archspace.kernels": Path(kernels.__file__).parent}


def _read_modules() -> dict[str, _Module]:
    mods = {}
    for pkg, d in _package_dirs().items():
        for f in sorted(d.glob("*.py")):
            if f.name == "__init__.py":
                continue
            src = f.read_text()
            mods[f"{pkg}.{f.stem}"] = _Module(f"{pkg}.{f.stem}", f, src, ast.parse(src, str(f)))
    for m in mods.values():
        pkg = m.name.rsplit(".", 1)[0]
        for node in m.tree.body:
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("archspace")):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                if target not in mods:
                    raise RuntimeError(f"{m.path}: imports {target}, which is not in archspace.blocks or "
                                       f"archspace.kernels; the exported file would not be self-contained")
                m.internal_imports.append((node, target, [(a.name, a.asname or a.name) for a in node.names]))
            elif isinstance(node, ast.Import) and any(a.name.startswith("archspace") for a in node.names):
                raise RuntimeError(f"{m.path}: `import archspace...` cannot be exported")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                m.defs[node.name] = node
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id != "__all__":
                        m.defs[t.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                m.defs[node.target.id] = node
    return mods


def excluded_modules(model_cfg) -> set[str]:
    """Modules of archspace.blocks/kernels that this design never runs."""
    from .blocks.config import leaf_mixers

    kinds = {layer.mixer.kind for layer in model_cfg.layers}
    leaves = [m for layer in model_cfg.layers for m in leaf_mixers(layer.mixer)]
    memory = [m for m in leaves if m.kind == "memory"]
    mlps = {layer.mlp.kind for layer in model_cfg.layers if layer.mlp is not None}
    out = set()
    if not any(m.kind == "attention" for m in leaves):
        out.add("archspace.blocks.attention")
    if not memory:
        out.add("archspace.blocks.memory")
    plain = [m for m in memory if m.hierarchy == "none"]
    if not any(m.bias == "dot" for m in plain):
        out.add("archspace.kernels.gla")
    if not any(m.bias == "l2" for m in plain):
        out.add("archspace.kernels.delta_rule")
    if not any(m.hierarchy == "log_linear" for m in memory):
        out.add("archspace.kernels.log_linear")
    for kind, module in (("mom", "archspace.blocks.mom"), ("titans", "archspace.blocks.titans")):
        if kind not in kinds:
            out.add(module)
    if "swiglu" not in mlps:
        out.add("archspace.blocks.swiglu")
    if "moe" not in mlps:
        out.add("archspace.blocks.moe")
    return out


def _needed(mods: dict[str, _Module], root: str, excluded: set[str]) -> list[str]:
    """Modules reachable from `root` (not through excluded ones), dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple):
        if name in seen:
            return
        if name in stack:
            raise RuntimeError(f"import cycle: {' -> '.join(stack + (name,))}")
        for _, target, _ in mods[name].internal_imports:
            if target not in excluded:
                visit(target, stack + (name,))
        seen.add(name)
        order.append(name)

    visit(root, ())
    return order


def _node_lines(node) -> tuple[int, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, node.end_lineno


def _rename_tokens(source: str, renames: dict[str, str]) -> str:
    """Rename identifiers (not attributes: a name after '.' is left alone) in `source`."""
    if not renames:
        return source
    lines = source.splitlines(keepends=True)
    edits: dict[int, list] = {}
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in renames and not (prev is not None and prev.string == "."):
            edits.setdefault(tok.start[0], []).append((tok.start[1], tok.end[1], renames[tok.string]))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    for row, items in edits.items():
        line = lines[row - 1]
        for a, b, new in sorted(items, reverse=True):
            line = line[:a] + new + line[b:]
        lines[row - 1] = line
    return "".join(lines)


def _short(name: str) -> str:
    return name.split(".", 1)[1].replace(".", "/") + ".py"  # archspace.blocks.memory -> blocks/memory.py


def build_modeling_source(model_cfg, *, version: str = "") -> str:
    """The self-contained modelling file for a resolved ModelConfig (see the module docstring)."""
    mods = _read_modules()
    excluded = excluded_modules(model_cfg)
    order = _needed(mods, "archspace.blocks.model", excluded)
    ids = {name: name.rsplit(".", 1)[1] for name in order}

    # Names defined by several included modules: identical definitions are kept once; differing ones
    # are renamed per module (<module>__name), repeated until the rendered definitions are stable.
    renamed: set[tuple[str, str]] = set()

    def rename_map(name: str) -> dict[str, str]:
        out = {n: f"_{ids[name]}__{n}" for (m, n) in renamed if m == name}
        for _, target, names in mods[name].internal_imports:
            if target in excluded:
                continue
            for orig, alias in names:
                final = f"_{ids[target]}__{orig}" if (target, orig) in renamed else orig
                if alias != final:
                    out[alias] = final
        return out

    def rendered_defs(name: str) -> dict[str, str]:
        m = mods[name]
        rmap = rename_map(name)
        lines = m.source.splitlines(keepends=True)
        out = {}
        for n, node in m.defs.items():
            a, b = _node_lines(node)
            out[n] = _rename_tokens("".join(lines[a - 1:b]), rmap)
        return out

    while True:
        texts: dict[str, dict[str, str]] = {}
        for name in order:
            for n, text in rendered_defs(name).items():
                if (name, n) not in renamed:
                    texts.setdefault(n, {})[name] = text
        new = {(m, n) for n, per in texts.items() if len(per) > 1 and len(set(per.values())) > 1 for m in per}
        if not new:
            break
        renamed |= new

    first_def: dict[str, str] = {}
    sections = []
    stubs: list[str] = []
    for name in order:
        m = mods[name]
        lines = m.source.splitlines(keepends=True)
        drop: dict[int, str] = {}  # first line -> replacement text; the statement's other lines are dropped
        skip: set[int] = set()

        def remove(node, replacement: str = ""):
            a, b = _node_lines(node)
            drop[a] = replacement
            skip.update(range(a + 1, b + 1))

        for node in m.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                remove(node)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                remove(node)
        for node, target, names in m.internal_imports:
            if target in excluded:
                text = "".join(f"{alias} = _NotExported({orig!r}, {_short(target)!r})\n" for orig, alias in names)
                stubs += [alias for _, alias in names]
                remove(node, text)
            else:
                remove(node)
        rmap = rename_map(name)
        for n, node in m.defs.items():
            if (name, n) in renamed:
                continue
            if n in first_def:  # an identical definition came earlier: keep that one
                a, b = _node_lines(node)
                drop[a] = f"# {n}: identical to the definition from {_short(first_def[n])} above\n"
                skip.update(range(a + 1, b + 1))
            else:
                first_def[n] = name
        body = []
        for i, line in enumerate(lines, 1):
            if i in drop:
                body.append(drop[i])
            elif i not in skip:
                body.append(line)
        text = _rename_tokens("".join(body), rmap)
        digest = hashlib.sha256(m.source.encode()).hexdigest()[:16]
        bar = "# " + "=" * 98
        sections.append(f"{bar}\n# {_short(name)}  ({name}, source sha256 {digest})\n{bar}\n{text.rstrip()}\n")

    from .blocks.config import kernel_paths

    mixers = sorted(set(kernel_paths(model_cfg)))
    header = f'''"""Self-contained modelling file of an archspace export (generated by archspace {version}; do not edit).

Needs only torch. The code below is archspace's own: the files of archspace.blocks and
archspace.kernels this design uses ({", ".join(_short(n) for n in order)}), concatenated in
dependency order with their relative imports removed{"; code for parts the design does not use is left out" if excluded else ""}.
Mixers of this design: {", ".join(mixers)}.

    from modeling_archspace import load, generate
    model = load("path/to/export")                  # a SequenceModel with the exported weights
    hidden = model(input_ids)                        # [B, T] -> final-normed hidden [B, T, D]
    logits = model.logits(hidden)                    # -> [B, T, vocab]
    out = generate(model, input_ids, max_new_tokens=16, greedy=True)

With transformers installed the same file defines ArchspaceConfig and ArchspaceForCausalLM, so the
directory loads with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).
"""
from __future__ import annotations


class _NotExported:
    """Stands in for code this export leaves out because the design does not use it."""

    def __init__(self, name, origin):
        self._what = f"{{name}} (from archspace {{origin}})"

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{{self._what}} is not part of this export: the exported design does not use it")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NotImplementedError(f"{{object.__getattribute__(self, '_what')}} is not part of this export")


'''
    return header + "\n\n".join(sections) + "\n\n" + RUNTIME


RUNTIME = r'''
# ==================================================================================================
# Export layer: weights, loading, generation, command line, Hugging Face wrapper
# ==================================================================================================
import argparse as _argparse
import json as _json
import os as _os
import struct as _struct
import sys as _sys

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file, read with torch alone (no safetensors package)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = _struct.unpack("<Q", data[:8])
    header = _json.loads(data[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        if end > start:
            t = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors, metadata


def load_state(model, path):
    """Load a safetensors file written by safetensors' save_model (shared tensors stored once)."""
    tensors, _ = read_safetensors(path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RuntimeError(f"{path}: tensors the model does not have: {unexpected}")
    if missing:
        # save_model drops all but one name of tensors that share storage: the missing ones must alias
        # a loaded tensor (they were filled by loading it).
        ptrs = {}
        for name, t in model.state_dict(keep_vars=True).items():
            ptrs.setdefault(t.data_ptr(), []).append(name)
        loaded = set(tensors)
        bad = [k for k in missing if not any(k in names and loaded & set(names) for names in ptrs.values())]
        if bad:
            raise RuntimeError(f"{path}: weights missing for {bad}")
    return model


def read_config(path="."):
    with open(_os.path.join(path, "config.json")) as f:
        return _json.load(f)


def model_config(config):
    """ModelConfig of config.json's resolved design (config: the parsed config.json or its "archspace")."""
    resolved = config.get("archspace", config)
    return ModelConfig.from_dict(resolved["model"])


def load(path=None, device=None, dtype=None):
    """The exported SequenceModel with its weights, in eval mode (path: the export directory)."""
    path = path or _os.path.dirname(_os.path.abspath(__file__))
    model = SequenceModel(model_config(read_config(path)))
    load_state(model, _os.path.join(path, "model.safetensors"))
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _core(model):
    """The object with forward/logits/step/init_state: a SequenceModel or the HF wrapper."""
    return model


def state_numel(state):
    """Numbers held in a decoding state (floating-point tensors only; counters such as the KV cache's or a
    log-linear memory's position, ints or integer tensors, are not numbers)."""
    if isinstance(state, torch.Tensor):
        return state.numel() if state.is_floating_point() else 0
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    return 0


def _pick(logits, greedy, temperature, top_k, generator):
    if greedy:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens=32, greedy=True, temperature=1.0, top_k=None, generator=None,
             prefill="parallel", return_state=False):
    """Continue input_ids [B, T] (or a list of ids) by max_new_tokens tokens; returns [B, T + new].

    Decoding keeps a recurrent state per memory layer (constant size) and a KV cache per attention
    layer (SequenceModel.step). The prompt is consumed in parallel (forward with return_state) or,
    with prefill="step", token by token.
    """
    m = _core(model)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=m.embed.weight.device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[1] < 1:
        raise ValueError("generate needs a prompt of at least one token")
    if prefill == "parallel":
        hidden, state = m(ids, return_state=True)
        logits = m.logits(hidden[:, -1])
    elif prefill == "step":
        state = m.init_state(ids.shape[0], ids.device)
        for t in range(ids.shape[1]):
            logits, state = m.step(ids[:, t], state)
    else:
        raise ValueError(f"prefill must be 'parallel' or 'step', got {prefill!r}")
    out = [ids]
    for i in range(max_new_tokens):
        nxt = _pick(logits, greedy, temperature, top_k, generator)
        out.append(nxt[:, None])
        if i + 1 < max_new_tokens:
            logits, state = m.step(nxt, state)
    result = torch.cat(out, dim=1)
    return (result, state) if return_state else result


def main(argv=None):
    p = _argparse.ArgumentParser(description="Generate with an archspace export (torch only).")
    p.add_argument("--dir", default=_os.path.dirname(_os.path.abspath(__file__)), help="the export directory")
    p.add_argument("--generate", "--prompt", dest="prompt", required=True, metavar="IDS",
                   help="prompt token ids, comma or space separated, e.g. 3,17,5")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ids = [int(x) for x in args.prompt.replace(",", " ").split()]
    model = load(args.dir)
    g = torch.Generator().manual_seed(args.seed)
    out = generate(model, [ids], args.max_new_tokens, greedy=not args.sample, temperature=args.temperature,
                   top_k=args.top_k, generator=g)
    print(" ".join(str(t) for t in out[0, len(ids):].tolist()))
    return 0


# ---------------------------------------------------------------------------- Hugging Face (optional)
try:
    from transformers import PretrainedConfig as _PretrainedConfig
    from transformers import PreTrainedModel as _PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput as _CausalLMOutput
except ImportError:
    _PreTrainedModel = None

if _PreTrainedModel is not None:

    class ArchspaceConfig(_PretrainedConfig):
        """config.json of an archspace export: the resolved design sits under "archspace"."""

        model_type = "archspace"

        def __init__(self, archspace=None, **kwargs):
            self.archspace = archspace or {}
            model = self.archspace.get("model") or {}
            kwargs.setdefault("vocab_size", model.get("vocab_size"))
            kwargs.setdefault("hidden_size", model.get("d_model"))
            kwargs.setdefault("num_hidden_layers", len(model.get("layers") or []))
            kwargs["tie_word_embeddings"] = False  # the archspace model reads its tied head itself
            super().__init__(**kwargs)

    class ArchspaceForCausalLM(_PreTrainedModel):
        """The exported SequenceModel as a transformers model: its modules sit at the top level, so the
        parameter names are those of model.safetensors; forward returns next-token logits."""

        config_class = ArchspaceConfig
        base_model_prefix = "archspace"
        main_input_name = "input_ids"
        _no_split_modules = ["Layer"]
        _supports_cache_class = False

        def __init__(self, config):
            super().__init__(config)
            core = SequenceModel(model_config(config.archspace))
            self.cfg = core.cfg
            for name, child in core.named_children():
                self.add_module(name, child)
            self.lm_head = core.lm_head
            self.post_init()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            loaded = super().from_pretrained(*args, **kwargs)
            (loaded[0] if isinstance(loaded, tuple) else loaded)._rebuild_buffers()
            return loaded

        def _init_weights(self, module):
            pass  # every weight comes from model.safetensors

        def _rebuild_buffers(self):
            # Non-persistent buffers (the RetNet decay) are not in the checkpoint, and transformers
            # creates the model on the meta device then fills only what the checkpoint holds: compute
            # them again, as the SequenceModel constructor does.
            for mod in self.modules():
                buf = getattr(mod, "log_gamma", None)
                if isinstance(buf, torch.Tensor):
                    device = self.embed.weight.device
                    mod.register_buffer("log_gamma", retnet_log_decay(mod.cfg.heads).to(device), persistent=False)
            self._archspace_buffers_ok = True

        def _fix_buffers(self):
            if not getattr(self, "_archspace_buffers_ok", False):
                self._rebuild_buffers()

        def get_input_embeddings(self):
            return self.embed

        def set_input_embeddings(self, value):
            self.embed = value

        def logits(self, hidden):
            return SequenceModel.logits(self, hidden)

        def init_state(self, batch_size, device=None):
            return SequenceModel.init_state(self, batch_size, device)

        def step(self, token_ids, state=None):
            self._fix_buffers()
            return SequenceModel.step(self, token_ids, state)

        def hidden_states(self, input_ids, state=None, return_state=False):
            self._fix_buffers()
            return SequenceModel.forward(self, input_ids, state, return_state)

        def forward(self, input_ids=None, attention_mask=None, labels=None, return_state=False, state=None,
                    **kwargs):
            if return_state:  # generate() calls model(ids, return_state=True) like a SequenceModel
                return self.hidden_states(input_ids, state, True)
            logits = self.logits(self.hidden_states(input_ids, state))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                    ignore_index=-100)
            return _CausalLMOutput(loss=loss, logits=logits)

    def _core(model):  # noqa: F811 - the HF wrapper decodes through the same SequenceModel code
        if isinstance(model, ArchspaceForCausalLM):
            return _HFCore(model)
        return model

    class _HFCore:
        def __init__(self, model):
            self.model, self.embed = model, model.embed

        def __call__(self, ids, return_state=False):
            return self.model.hidden_states(ids, None, return_state)

        def logits(self, hidden):
            return self.model.logits(hidden)

        def step(self, ids, state):
            return self.model.step(ids, state)

        def init_state(self, batch_size, device=None):
            return self.model.init_state(batch_size, device)


if __name__ == "__main__":
    _sys.exit(main())
'''

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


def _load_module_from(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up in sys.modules
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave no __pycache__ in the export
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.dont_write_bytecode = before
    return mod


def verify(out: Path, run_dir: Path, model_cfg) -> float:
    """Load `out` through its own modelling file and compare logits with archspace's model; max |diff|."""
    import torch
    from safetensors.torch import load_model

    from .blocks.model import SequenceModel

    ref = SequenceModel(model_cfg)
    load_model(ref, str(run_dir / "model.safetensors"))
    ref.eval()
    name = f"_archspace_export_check_{os.getpid()}_{int(time.time() * 1e6)}"
    try:
        mod = _load_module_from(out / MODELING_FILE, name)
        exported = mod.load(str(out))
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model_cfg.vocab_size, (2, 24), generator=g)
        with torch.no_grad():
            a = ref.logits(ref(ids))
            b = exported.logits(exported(ids))
        diff = float((a - b).abs().max())
    finally:
        sys.modules.pop(name, None)
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
    from .blocks.model import Layer
    from .blocks.config import kernel_paths

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
            else:
                parts.append(("softmax, RoPE" + (f", window {leaf.window}" if leaf.window else ", global"),
                              f"head_dim={leaf.head_dim}", leaf.heads))
        axes = " + ".join(p[0] for p in parts)
        if mx.kind == "mom":
            axes = f"MoM top-{mx.top_k} of {mx.memories}{' + shared' if mx.shared_memory else ''}: " + axes
        elif mx.kind == "titans":
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
             f"Norm eps {model_cfg.norm_eps}, tied embeddings: {model_cfg.tie_embeddings}. The full resolved design "
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
              "logits = model(input_ids=ids).logits", "from modeling_archspace import generate  # or model-agnostic loops",
              "```", "",
              "`forward` returns next-token logits for every position (and a shifted cross-entropy `loss` when "
              "`labels` are given). It keeps no transformers cache: decode with `generate()` from the modelling "
              "file, which keeps each memory layer's fixed-size state and each attention layer's KV cache.", "",
              "Train it further with archspace: `archspace train --from " + out.name + "` (the exported recipe) or "
              "`archspace train FILE --from " + out.name + "` (FILE's task and training, same model).", "",
              "## Files", "",
              "- `config.json`: the resolved design under `archspace`, Hugging Face fields and `auto_map`",
              "- `model.safetensors`: the final weights (SequenceModel parameter names)",
              "- `modeling_archspace.py`: archspace's block and kernel code for this design, torch only",
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
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(sel.run_dir / "model.safetensors"), framework="pt") as f:
        st_meta = dict(f.metadata() or {})
    tensors = load_file(str(sel.run_dir / "model.safetensors"))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values() if t.is_floating_point()})
    st_meta.update({"format": "pt", "archspace.design_hash": str(resolved.get("design_hash"))})
    save_file(tensors, str(out / "model.safetensors"), metadata=st_meta)

    (out / MODELING_FILE).write_text(build_modeling_source(model_cfg, version=version))
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
            "excluded_modules": sorted(_short(m) for m in excluded_modules(model_cfg)),
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(resolved, model_cfg, metrics, sel, out, tokenizer_note))
    diff = verify(out, sel.run_dir, model_cfg)
    return ExportResult(out, sel, list(OUTPUT_FILES), diff, time.perf_counter() - t0)
