"""The `archspace` command line.

Heavy libraries (torch, Lightning, MLflow, Ray, Optuna) are imported inside the commands that need
them, so `archspace --help` and `archspace validate` answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import EXIT_USAGE, ConfigError

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def default_results_dir() -> Path:
    return Path(os.environ.get("ARCHSPACE_RESULTS", "results")).absolute()


def parse_overrides(items: Sequence[str]) -> dict[tuple, Any]:
    """`--set model.d_model=128` -> {('model', 'd_model'): 128}; values are read as YAML scalars."""
    from . import yamlio

    out: dict[tuple, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key.path=value", file="<command line>")
        key, _, text = item.partition("=")
        value, _ = yamlio.loads(text or "null", file="<command line>")
        out[tuple(key.strip().split("."))] = value
    return out


def writable_dir(path, what: str) -> Path:
    """Create `path` (a folder) if needed and prove a file can be written there, before any work starts:
    a results folder under a regular file or on a read-only disk is a ConfigError, not a traceback at the end."""
    import tempfile

    path = Path(path).expanduser().absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path} cannot be created: {parent} is not a folder (a file is in the way)",
                                  file="<command line>")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable: {exc.strerror or exc}", file="<command line>",
                          hint="Choose another folder (--results-dir, --out or $ARCHSPACE_RESULTS)") from None
    return path


# Numeric options, checked like YAML values before a command does anything: dest -> (flag, rule, smallest).
_NUMERIC_OPTIONS = {
    "seq_len": ("--seq-len", "at least", 1), "trials": ("--trials", "at least", 1),
    "max_concurrent": ("--max-concurrent", "at least", 1), "rank": ("--rank", "at least", 1),
    "steps": ("--steps", "at least", 1), "batch_size": ("--batch-size", "at least", 1),
    "test_examples": ("--test-examples", "at least", 1), "lrs": ("--lrs", "above", 0), "wds": ("--wds", "at least", 0),
}


def check_numeric_options(args) -> None:
    import math

    for dest, (flag, rule, low) in _NUMERIC_OPTIONS.items():
        values = getattr(args, dest, None)
        for v in values if isinstance(values, list) else [values]:
            if v is None:
                continue
            ok = math.isfinite(v) and (v > low if rule == "above" else v >= low)
            if not ok:
                raise ConfigError(f"{flag} must be a finite number {rule} {low}, got {v}", file="<command line>")


def _load(args):
    from .compiler import resolve
    from .grammar import load_design

    design, _ = load_design(args.file, parse_overrides(getattr(args, "set", None)))
    return design, resolve(design)


def _is_space_file(path: str) -> bool:
    """A mapping with a top-level ``axes`` or ``base`` key is a search space, not a design."""
    from . import yamlio

    try:
        data, _ = yamlio.load(path)
    except Exception:  # unreadable or malformed: load_design reports it with file and line
        return False
    return isinstance(data, dict) and ("axes" in data or "base" in data)


def cmd_validate(args) -> int:
    from .grammar import load_design, parse_pattern

    for f in args.files:
        if _is_space_file(f):
            from .study.space import grid_size, load_space

            space = load_space(f)
            n = grid_size(space)
            print(f"{f}: ok (search space {space.name!r}, {space.trials} trials"
                  + (f" of a {n}-point grid" if n is not None else "")
                  + (f", each design x {space.seeds} seeds" if space.seeds > 1 else "") + ")")
            continue
        design, _ = load_design(f)
        layers = design.model.n_layers or len(parse_pattern(design.model.hybrid.pattern) or ()) or 2
        print(f"{f}: ok (schema_version {design.schema_version}, model with {layers} layers)")
    return 0


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def _mixer_summary(mx) -> tuple[str, str, str]:
    """(axes, heads, dims) columns of `archspace show` for one token-mixer config."""
    if mx.kind == "attention":
        return "softmax" + (f" window={mx.window}" if mx.window else " global"), str(mx.heads), f"d={mx.head_dim}"
    if mx.kind == "conv":
        return f"gated conv k={mx.short_conv}", "-", f"D={mx.d_model}"
    if mx.kind == "mom":
        axes, heads, dims = _mixer_summary(mx.memory)
        extra = " +shared" if mx.shared_memory else ""
        return f"MoM top{mx.top_k}/{mx.memories}{extra} {axes}", heads, dims
    if mx.kind == "titans":
        axes, heads, dims = _mixer_summary(mx.memory)
        att = f"seg={mx.segment}" if mx.variant == "mac" else f"window={mx.attention.window}"
        return f"titans-{mx.variant} {att} P={mx.persistent_tokens} {axes}", heads, dims
    axes = f"{mx.structure}/{mx.bias}/{mx.retention}/{mx.update}"
    if mx.feature_map != "identity":
        axes += f" phi={mx.feature_map}"
    if mx.hierarchy == "log_linear":
        axes += f" log-linear L={mx.levels}"
    return axes, str(mx.heads), f"K={mx.key_dim} V={mx.value_dim}"


def _axis_options(mx) -> list[str]:
    """The options of each chosen axis value of a memory config (gate initialisation, feature dim, levels), e.g.
    "retention scalar: A_init_min=0 A_init_max=16 ...", and the output-path fields away from their defaults."""
    from dataclasses import fields

    from .blocks.config import MEMORY_AXES, MemoryConfig, hash_neutral_defaults

    out = []
    for key, axis in MEMORY_AXES.items():
        value = axis[getattr(mx, key)]
        if value.options:
            shown = " ".join(f"{o.name}={getattr(mx, o.name):g}" if isinstance(getattr(mx, o.name), float)
                             else f"{o.name}={getattr(mx, o.name)}" for o in value.options)
            out.append(f"{key} {value.name}: {shown}")
    owned = {f.name for f in fields(MemoryConfig) if f.metadata.get("owner")}
    changed = [f"{k}={getattr(mx, k)}" for k, d in hash_neutral_defaults(MemoryConfig).items()
               if k not in owned and getattr(mx, k) != d]
    if changed:
        out.append("output path: " + " ".join(changed))
    return out


def cmd_show(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .blocks.model import Layer, SequenceModel

    design, resolved = _load(args)
    from .grammar import task_seq_len

    seq_len = args.seq_len or task_seq_len(resolved.task)
    costs = [Layer.cost(layer, seq_len) for layer in resolved.model.layers]
    total = SequenceModel.cost_of(resolved.model, seq_len)
    table = Table(title=f"{resolved.name}  design {resolved.design_hash}  layout {resolved.layout}  (T={seq_len})")
    routed = total.active_params is not None
    cols = ["layer", "mixer", "axes", "heads", "dims", "mlp", "params"] + (["active"] if routed else [])
    for col in cols + ["state", "FLOPs/token"]:
        table.add_column(col, justify="right" if col in ("params", "active", "state", "FLOPs/token", "layer", "heads")
                         else "left")
    for i, (layer, label, cost) in enumerate(zip(resolved.model.layers, resolved.labels, costs)):
        axes, heads, dims = _mixer_summary(layer.mixer)
        mlp = "-"
        if layer.mlp is not None and layer.mlp.kind == "moe":
            mlp = f"moe {layer.mlp.top_k}/{layer.mlp.experts}x{layer.mlp.hidden}"
        elif layer.mlp is not None:
            mlp = f"swiglu {layer.mlp.hidden}"
        table.add_row(str(i), label, axes, heads, dims, mlp, _fmt(cost.params),
                      *([_fmt(cost.active)] if routed else []), _fmt(cost.state), _fmt(cost.flops_per_token))
    from .blocks.model import bound_layers, value_residual_layers

    shared = bound_layers(resolved.model)[0] or value_residual_layers(resolved.model)[1:]
    table.add_row("all", "", "embedding + head" + (" + shared across layers" if shared else "") + " included", "",
                  "", "", _fmt(total.params),
                  *([_fmt(total.active)] if routed else []), _fmt(total.state), _fmt(total.flops_per_token),
                  style="bold")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    from .blocks.config import leaf_mixers

    seen = []  # each distinct memory once: the options of its axis values (gate initialisation, ...)
    for i, (layer, label) in enumerate(zip(resolved.model.layers, resolved.labels)):
        for leaf in leaf_mixers(layer.mixer):
            if leaf.kind == "memory" and leaf not in [s[0] for s in seen]:
                seen.append((leaf, [], label))
            for entry in seen:
                if entry[0] == leaf and i not in entry[1]:
                    entry[1].append(i)
    for leaf, layers, label in seen:
        lines = _axis_options(leaf)
        if lines:
            where = f"layer{'s' if len(layers) > 1 else ''} {','.join(map(str, layers))} ({label})"
            print(f"{where}: " + "; ".join(lines))
    active = f"  active params/token {total.active:,}" if routed else ""
    print(f"params {total.params:,}{active}  state {total.state:,} numbers/sequence  "
          f"FLOPs/token {total.flops_per_token:,.0f}  design_hash {resolved.design_hash}")
    if args.resolved:
        print(resolved.to_yaml())
    return 0


def _resolved_from_export(args):
    """`train [FILE] --from DIR`: the exported design (FILE, when given, supplies task and train)."""
    import json

    src = Path(args.init_from)
    cfg_path = src / "config.json"
    if not cfg_path.is_file() or not (src / "model.safetensors").is_file():
        raise ConfigError(f"--from {src}: not an archspace export (needs config.json and model.safetensors)",
                          file="<command line>", hint="Make one with `archspace export STUDY_OR_RUN --out DIR`")
    from .export import exported_design, read_weights

    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path} is not JSON: {exc}", file=str(cfg_path)) from None
    exported = exported_design(config, cfg_path)
    read_weights(src / "model.safetensors", f"--from {src}")  # a truncated file: exit 2 now, not a traceback later
    from .compiler import Resolved

    exported_resolved = Resolved.from_dict(exported)
    if args.file:
        _, resolved = _load(args)
        if resolved.design_hash != exported_resolved.design_hash:
            raise ConfigError(
                f"{args.file} describes design {resolved.design_hash} but {src} holds design "
                f"{exported.get('design_hash')} ({exported.get('name')}); --from continues the exported model, so "
                f"FILE must describe the same model (only its task and train sections may differ)", file=args.file,
                hint=f"Leave FILE out to train with the exported recipe (`archspace train --from {src}`)")
        return resolved, src / "model.safetensors"
    task, train_cfg = dict(exported["task"]), dict(exported["train"])
    for key, value in parse_overrides(getattr(args, "set", None)).items():
        section = {"train": train_cfg, "task": task}.get(key[0])
        if section is None or len(key) != 2 or key[1] not in section:
            raise ConfigError(f"--set {'.'.join(key)}: with --from and no FILE only existing train.* and task.* keys "
                              f"can be set", file="<command line>",
                              hint="Give a design FILE to change more than the recipe")
        section[key[1]] = value
    from pydantic import ValidationError

    from .grammar import TaskSpec, TrainSpec

    for name, spec, section in (("train", TrainSpec, train_cfg), ("task", TaskSpec, task)):
        try:
            section.update(spec.model_validate(section).model_dump())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *first.get("loc", ())))
            raise ConfigError(f"{where}: {first.get('msg')}", file="<command line>") from None
    resolved = Resolved.from_dict({**exported, "task": task, "train": train_cfg})
    return resolved, src / "model.safetensors"


def _run_state(run_dir: Path) -> Optional[str]:
    """finished / interrupted / started (resolved.yaml only: killed before its first files) / None (no run)."""
    import json

    if not (run_dir / "resolved.yaml").is_file():
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return "started"
    return metrics.get("status", "finished")  # runs from before `status` existed wrote metrics.json at the end


def _resumed_run(args):
    """`train --resume RUN_DIR`: the run's own resolved design, to be continued where it stopped."""
    from . import yamlio
    from .compiler import Resolved

    run_dir = Path(args.resume)
    if args.file or args.init_from or getattr(args, "set", None) or args.out:
        raise ConfigError("--resume continues a run exactly as it was recorded; FILE, --from, --set and --out do "
                          "not apply", file="<command line>")
    if _run_state(run_dir) is None:
        raise ConfigError(f"--resume {run_dir}: not a run directory (no resolved.yaml)", file="<command line>",
                          hint="Give the folder `archspace train` printed as its run directory")
    data, _ = yamlio.load(run_dir / "resolved.yaml")
    try:
        return Resolved.from_dict(data), run_dir
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{run_dir / 'resolved.yaml'} is not a resolved design ({exc})",
                          file=str(run_dir / "resolved.yaml")) from None


def cmd_train(args) -> int:
    import time

    init_weights = None
    out = None
    if args.resume:
        resolved, out = _resumed_run(args)
    elif args.init_from:
        resolved, init_weights = _resolved_from_export(args)
    elif not args.file:
        raise ConfigError("archspace train needs a design FILE, --from DIR to continue an export, or --resume RUN_DIR",
                          file="<command line>")
    else:
        design, resolved = _load(args)
    if out is None:
        out = Path(args.out) if args.out else (
            Path(args.results_dir or default_results_dir()) / "runs"
            / f"{resolved.name}-{resolved.design_hash[:8]}-{time.strftime('%Y%m%d-%H%M%S')}")
    state = _run_state(out)
    if state is not None and not args.resume and (out / "resolved.yaml").read_text() != resolved.to_yaml():
        raise ConfigError(f"--out {out} holds another run (its resolved.yaml differs from this design and recipe); "
                          "nothing was changed", file="<command line>",
                          hint="Give another --out, or --resume it to continue that run")
    if state == "finished":
        print(f"{out} already holds this run, finished; nothing to do (see its metrics.json)")
        return 0
    from .training import LAST_CKPT, TrainingInterrupted, check_kernel_device, checkpoint_step, train

    check_kernel_device(resolved)
    out = writable_dir(out, "the run directory")

    ckpt = out / "checkpoints" / LAST_CKPT
    resume = state is not None and ckpt.is_file()
    print(f"archspace train: {resolved.name} (design {resolved.design_hash}, layout {resolved.layout}) -> {out}",
          flush=True)
    if resume:
        print(f"resuming from {ckpt} (from step {checkpoint_step(ckpt)})", flush=True)
    elif state is not None:
        print(f"{out} holds an unfinished run with no checkpoint: starting it again from step 0", flush=True)

    def report(step: int, m: dict) -> None:
        slices = "  ".join(f"{k[8:]}={v:.3f}" for k, v in sorted(m.items()) if k.startswith("val/acc/"))
        print(f"step {step}: val/acc={m['val/acc']:.4f} val/loss={m['val/loss']:.4f}  {slices}", flush=True)

    if init_weights is not None:
        print(f"initial weights: {init_weights}", flush=True)
    try:
        metrics = train(resolved, out, progress=not args.no_progress, report=report, init_weights=init_weights,
                        resume=resume)
    except TrainingInterrupted as stop:
        how = (f"continue it with: archspace train --resume {out}" if stop.resumable
               else "it has no checkpoint to continue from")
        print(f"interrupted at step {stop.step}; history.csv and metrics.json hold what was measured; {how}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"\nfinal metrics ({resolved.name}, {metrics['steps']} steps, {metrics['train_wall_s']:.1f} s):")
    for k in sorted(k for k in metrics if k.startswith("test/")):
        print(f"  {k:32s} {metrics[k]:.4f}")
    print(f"  params {metrics['params']:,}  state_size {metrics['state_size']:,}  "
          f"throughput {metrics['throughput_tok_s']:,.0f} tok/s")
    print(f"run directory: {out}")
    return 0


def cmd_study(args) -> int:
    from .study.space import load_space

    overrides = {}
    for key, value in parse_overrides(args.set).items():  # base keys; short forms like lr as in axes
        overrides[key] = value
    space = load_space(args.space, overrides=overrides, trials=args.trials,
                       seeds=args.seeds)  # bad input exits 2 before Ray starts
    from .study.runner import results_root, run_study

    writable_dir(results_root(args.results_dir, space), "the results folder")

    outcome = run_study(space, results_dir=args.results_dir, ray_address=args.ray_address,
                        tracking_uri=args.tracking_uri, max_concurrent=args.max_concurrent, fresh=args.fresh)
    return outcome.exit_code


def cmd_export(args) -> int:
    from .export import export, select

    sel = select(args.target, results_dir=args.results_dir, rank=args.rank, run_id=args.run_id,
                 tracking_uri=args.tracking_uri)
    what = (f"trial {sel.trial_id} of study {sel.study.get('name')}" + (f" (rank {sel.rank})" if sel.rank else "")
            if sel.trial_id else f"run {sel.run_dir}")
    print(f"archspace export: {what} -> {args.out}", flush=True)
    res = export(sel, Path(args.out), force=args.force)
    print(f"wrote {', '.join(res.files)} to {res.out} ({res.wall_s:.1f} s); the modelling file reproduces "
          f"archspace's logits (max |diff| {res.max_abs_diff:.1g})")
    print(f"load it with torch only: from modeling_archspace import load; model = load({str(res.out)!r})")
    return 0


def cmd_schema(args) -> int:
    import json

    from .grammar import json_schema

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}; add `# yaml-language-server: $schema={args.out}` as a YAML file's first line")
    else:
        print(text)
    return 0


def cmd_mad(args) -> int:
    """`mad DESIGN.yaml`: the MAD score (archspace.tasks.mad_score)."""
    from .tasks.mad_params import TASKS
    from .tasks.mad_score import BUDGETS, evaluate, format_table

    design, resolved = _load(args)
    budget = dict(BUDGETS[args.budget])
    for key, value in (("max_steps", args.steps), ("batch_size", args.batch_size),
                       ("num_test_examples", args.test_examples)):
        if value is not None:
            budget[key] = value
    tasks = args.tasks or list(TASKS)
    known = set(TASKS) | set(TASKS.values())
    for t in tasks:
        if t not in known:
            raise ConfigError(f"--tasks: unknown MAD task {t!r}", file="<command line>",
                              hint=f"Tasks: {', '.join(TASKS.values())}")
    out = Path(args.out) if args.out else Path(args.results_dir or default_results_dir()) / "mad" / resolved.name
    writable_dir(out, "the output folder")
    result = evaluate(resolved, out, tasks=tasks, which=args.settings, budget=budget,
                      lrs=args.lrs or (1e-4, 5e-4, 1e-3), wds=args.wds if args.wds is not None else (0.0, 0.1))
    print(format_table(result))
    print(f"wrote {out / 'mad_scores.json'}")
    return 0


def cmd_dashboard(args) -> int:
    """`dashboard STUDY...`: report.html (+ MLflow artifacts) per study, then the MLflow UI until Ctrl-C."""
    from .dashboards.server import run_dashboard

    if args.starts is not None and args.starts < 1:
        raise ConfigError(f"--starts must be at least 1, got {args.starts}", file="<command line>")
    return run_dashboard(args.studies, results_dir=args.results_dir, host=args.host, port=args.port,
                         ui=not args.no_ui, tracking_uri=args.tracking_uri, starts=args.starts)


def cmd_compare(args) -> int:
    from .dashboards.compare import compare

    return compare(args.targets, results_dir=args.results_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="archspace",
        description="Declarative architecture search and ablation for memory-based sequence models.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("validate", help="check design files; errors name file:line:col and key", description=
                       "Validate one or more design files against the grammar. Exit 0 if all are valid, 2 otherwise.")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("show", help="resolved per-layer table with params, state size, FLOPs and hash",
                       description="Resolve a design and print its per-layer table.")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--seq-len", type=int, default=None, help="length for state size and FLOPs (default: longest training length)")
    s.add_argument("--resolved", action="store_true", help="also print the resolved config as YAML")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. model.d_model=128")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("train", help="train and evaluate one design", description=
                       "Train one design with Lightning and print its final test metrics. Writes resolved.yaml, "
                       "history.csv, metrics.json and checkpoints into the run directory. Ctrl-C stops after the "
                       "current step, writes what was measured and exits 130; --resume RUN_DIR continues.")
    s.add_argument("file", metavar="FILE", nargs="?", default=None,
                   help="design file (optional with --from: the exported design's own task and train are used)")
    s.add_argument("--from", dest="init_from", default=None, metavar="DIR",
                   help="start from the weights of an `archspace export` directory; FILE must describe the same "
                        "model and supplies task and train")
    s.add_argument("--out", default=None, help="run directory (default: RESULTS/runs/<name>-<hash>-<time>)")
    s.add_argument("--results-dir", default=None, help="results root (default: $ARCHSPACE_RESULTS or ./results)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. train.lr=3e-3")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its checkpoints/last.ckpt (the same command with the same "
                        "--out does too); on one device the result is the uninterrupted run's, bit for bit")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("study", help="search a space of designs: Optuna + Ray Tune + MLflow", description=
                       "Sample designs from a space file, train each on Ray Tune (ASHA/median early stopping), and log "
                       "every trial to MLflow. Running the same command again resumes an interrupted study. "
                       "Exit 0 if at least one trial finished, 1 if all failed, 2 for bad input, 130 if interrupted.")
    s.add_argument("space", metavar="SPACE.yaml")
    s.add_argument("--results-dir", default=None,
                   help="results root; the study goes to RESULTS/studies/<name>/ (default: the space's results_dir, "
                        "$ARCHSPACE_RESULTS or ./results)")
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster (`ray start --head`) instead of starting an embedded one; "
                        "needs the cluster's token from ~/.ray/auth_token")
    s.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server URL (default: sqlite:///<study dir>/mlflow.db)")
    s.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="trials at a time (default: the space's max_concurrent, else CPUs // cpus_per_trial)")
    s.add_argument("--fresh", action="store_true",
                   help="start a new study directory (<name>-2, ...) even if one exists; nothing is deleted")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base design, e.g. train.max_steps=50 (a changed space is a new study: "
                        "combine with --fresh or another --results-dir when the study exists)")
    s.add_argument("--trials", type=int, default=None, metavar="N",
                   help="run at most N trials (the first N of a grid), overriding search.trials")
    s.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="train every design N times (train.seed = base seed + 0..N-1), overriding the space's seeds; "
                        "the report gives means and intervals (a changed space: --fresh when the study exists)")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("export", help="export a trained design: weights, torch-only modelling file, model card",
                       description="Export the best trial of a study (or --rank N, --run-id ID), or a run directory, "
                       "into DIR: config.json, model.safetensors, modeling_archspace.py (torch only, no archspace), "
                       "generate.py and README.md. The directory loads with `from modeling_archspace import load` "
                       "and with transformers' AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).")
    s.add_argument("target", metavar="STUDY_OR_RUN",
                   help="a study directory, a study name under the results root, or a run directory")
    s.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be empty unless --force)")
    s.add_argument("--rank", type=int, default=None, metavar="N", help="export the study's N-th best trial (default 1)")
    s.add_argument("--run-id", default=None, metavar="ID", help="export the trial of this MLflow (child) run id")
    s.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store for --run-id (default: the study's mlflow.db)")
    s.add_argument("--results-dir", default=None, help="results root for study names (default: $ARCHSPACE_RESULTS or ./results)")
    s.add_argument("--force", action="store_true", help="write into a non-empty DIR (replacing the export's files)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("dashboard", help="study report with plots and scaling fits, then the MLflow UI on localhost",
                       description="For each STUDY write <study>/report.html (best designs, Pareto front, metric "
                                   "curves, per-slice recall, attention-share curves with intervals, and for a space "
                                   "with a scaling: section the fitted laws with intervals, the iso-FLOP cross-check, "
                                   "the compute-optimal and state-optimal frontiers), log it with its plots on the "
                                   "study's parent MLflow run, then serve the study's MLflow store with the MLflow UI "
                                   "on 127.0.0.1 until Ctrl-C. Exit 0 after a clean stop.")
    s.add_argument("studies", nargs="+", metavar="STUDY", help="a study directory, or a study name under the results root")
    s.add_argument("--port", type=int, default=5000, help="port of the (first) MLflow UI (default 5000; one port "
                                                          "per further study store)")
    s.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1: this machine only)")
    s.add_argument("--no-ui", action="store_true", help="write and log the reports, start no server")
    s.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="the MLflow store the studies used (default: each study's mlflow.db)")
    s.add_argument("--results-dir", default=None, help="results root for study names (default: $ARCHSPACE_RESULTS or ./results)")
    s.add_argument("--starts", type=int, default=None, metavar="K",
                   help="scaling fits: L-BFGS from the K best of the 4,500 grid starts (default: all of them)")
    s.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("compare", help="runs or studies side by side in the terminal",
                       description="Print runs (run directories, a study's trials/<id>/) or studies side by side; "
                                   "a study among runs stands in by its best trial. The best value of each row is bold.")
    s.add_argument("targets", nargs="+", metavar="RUN_OR_STUDY", help="directories, or names under the results root")
    s.add_argument("--results-dir", default=None, help="results root for names (default: $ARCHSPACE_RESULTS or ./results)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("schema", help="write the JSON Schema of design files (editor completion)",
                       description="Print or write the JSON Schema of design files.")
    s.add_argument("--out", default=None, help="file to write (default: stdout)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("mad", help="MAD score: train on the six MAD tasks over the lr x weight-decay sweep",
                       description="Train DESIGN's model on MAD's synthetic tasks (Poli et al. 2024): per setting the "
                                   "best test accuracy over the lr x weight-decay sweep, averaged over settings, then "
                                   "tasks. Writes mad_scores.json.")
    s.add_argument("file", help="design file (its model and train sections; the task section is replaced)")
    s.add_argument("--tasks", nargs="+", default=None,
                   help="subset of: in_context_recall fuzzy_in_context_recall noisy_in_context_recall "
                        "selective_copying compression memorization (default: all)")
    s.add_argument("--settings", choices=["baseline", "grid"], default="baseline",
                   help="baseline only, or baseline + difficulty grid (MAD's 66 settings)")
    s.add_argument("--budget", choices=["cpu", "full"], default="cpu", help="steps, batch and test size per run")
    s.add_argument("--steps", type=int, default=None, help="override the budget's max_steps")
    s.add_argument("--batch-size", type=int, default=None, help="override the budget's batch size")
    s.add_argument("--test-examples", type=int, default=None, help="override the budget's test-set size")
    s.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates (default 1e-4 5e-4 1e-3)")
    s.add_argument("--wds", type=float, nargs="+", default=None, help="weight decays (default 0 0.1)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a design key")
    s.add_argument("--out", default=None, help="output directory (default RESULTS/mad/<design name>)")
    s.add_argument("--results-dir", default=None, help="results root (default: $ARCHSPACE_RESULTS or ./results)")
    s.set_defaults(func=cmd_mad)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        check_numeric_options(args)
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
