"""Training: a resolved design -> LightningModule + data module -> Lightning Trainer -> metrics.

`train(resolved, run_dir)` is the one entry point used by `archspace train` and by study trials.
It writes `resolved.yaml` into the run directory before anything else; `metrics.json`,
`history.csv` and the final weights `model.safetensors` at the end; and checkpoints under
`checkpoints/` when the recipe asks for them.

Interruption and resumption. Ctrl-C (SIGINT, in the main thread) stops training after the current
step: `checkpoints/last.ckpt` is saved at that step, `history.csv` and `metrics.json` (status
`interrupted`, the curves and last validation so far) are written, and `TrainingInterrupted` is raised
(the CLI exits 130). A second Ctrl-C stops at once, writing the same files but keeping the last
validation's checkpoint. `train(..., resume=True)` continues from `checkpoints/last.ckpt`: the weights,
optimizer, schedule, loop counters and curves come from the checkpoint, and the training loader first
draws (and discards) the batches already trained on, so that on one device the continued run is bit for
bit the run that was never interrupted.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
import torch.nn.functional as F

from .blocks.config import ModelConfig
from .blocks.dispatch import check_device, kernel_paths
from .blocks.model import SequenceModel
from .compiler import Resolved
from .errors import ConfigError
from .tasks.registry import TASKS

IGNORE = -100


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training; what was measured so far is in the run directory (metrics.json, history.csv)."""

    def __init__(self, run_dir: Path, step: int, resumable: bool):
        super().__init__(f"training interrupted at step {step}")
        self.run_dir, self.step, self.resumable = run_dir, step, resumable


class ResumableLoader:
    """The training loader as Lightning iterates it (once per epoch), able to continue mid-epoch.

    A run resumed at global step `skip` first draws and discards the `skip` batches that the run before
    trained on, through the loader itself, so that its shuffling generator advances exactly as it did
    (whatever the loader and its sampler draw per epoch). It then continues with batch `skip + 1`: the same
    batches in the same order as a run that was never stopped. Discarded batches cost only their collation,
    not training."""

    def __init__(self, loader, skip: int = 0):
        self.loader, self.skip = loader, int(skip)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # Exactly len(loader) batches are drawn from each of the loader's iterators, never one more: running
        # an iterator to its end draws once more from the shuffling generator (torch's RandomSampler computes
        # a last, empty permutation), which Lightning, stopping at the known length, never does.
        n = len(self.loader)
        while self.skip >= n:  # whole epochs trained before the interruption
            batches = iter(self.loader)
            for _ in range(n):
                next(batches)
            self.skip -= n
        batches = iter(self.loader)
        for _ in range(self.skip):
            next(batches)
        start, self.skip = self.skip, 0
        for _ in range(start, n):
            yield next(batches)


class _StopAfterStep(Exception):
    """Raised by Interruption once the checkpoint is saved: leaves `fit` at once. (Setting
    `trainer.should_stop` instead would make Lightning run one more validation, which an uninterrupted
    run does not have at that step.)"""


class Interruption(L.Callback):
    """Ctrl-C handling during fit: the first SIGINT asks for a stop after the current step (checkpoint saved
    there); a second one stops at once (`on_hard_stop`, which writes what was measured, then exit 130)."""

    def __init__(self, ckpt_path: Path, on_hard_stop: Callable[[], None]):
        self.ckpt_path = ckpt_path
        self.on_hard_stop = on_hard_stop
        self.requested = False
        self.stopped = False  # fit was left early (a Ctrl-C that came after the last step stops nothing)
        self.saved_step: Optional[int] = None
        self._previous = None

    def __getstate__(self) -> dict:
        # Spawned DDP workers get pickled copies of the callbacks; Ctrl-C is handled in the launching process, so
        # the copies carry neither its closure nor the previous signal handler.
        return {**self.__dict__, "on_hard_stop": None, "_previous": None}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # (study trials run in Ray's threads)
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            self.on_hard_stop()
            os._exit(130)  # Lightning would turn a KeyboardInterrupt into exit code 1
        self.requested = True
        print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once)", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # A step that validates stops after its validation: a checkpoint saved before it would resume past
        # that validation. (Lightning validates after the steps divisible by val_check_batch.)
        if self.requested and trainer.global_step % trainer.val_check_batch:
            self._save(trainer)
            self._raise()

    def on_validation_end(self, trainer, pl_module):
        # Saved here, and the stop waits for the next step's start, so that the best/last checkpoints
        # (ModelCheckpoint runs after every other callback) record this validation first; its last.ckpt
        # then replaces this one, with the same loop state.
        if self.requested and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.saved_step is not None:
            self._raise()

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.ckpt_path)
        self.saved_step = trainer.global_step

    def _raise(self) -> None:
        self.stopped = True
        raise _StopAfterStep()


def build_datamodule(task: dict, batch_size: int):
    """The Lightning data module of a resolved task section (archspace/tasks/registry.py)."""
    return TASKS[task["name"]].datamodule(task, batch_size)


def build_readout(resolved: dict):
    """Task-dependent head between the model's hidden states and the LM head (None: identity), e.g. MAD
    compression's encoder-decoder readout (archspace/tasks/registry.py)."""
    readout = TASKS[resolved["task"]["name"]].readout
    return None if readout is None else readout(resolved["model"]["d_model"])


def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then cosine/linear/constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class RecallModule(L.LightningModule):
    """Next-token training with loss and accuracy only where labels are given (label != -100).

    The LM head runs only at labelled positions: on MQAR that is a few queries per sequence, which
    saves most of the vocab-sized matmul.
    """

    def __init__(self, resolved: dict, slice_names: list[str]):
        super().__init__()
        self.save_hyperparameters()
        self.train_cfg = resolved["train"]
        self.model = SequenceModel(ModelConfig.from_dict(resolved["model"]))
        self.readout = build_readout(resolved)
        self.lm = TASKS[resolved["task"]["name"]].language_model  # also log val/ppl and val/bpb
        self.slice_names = list(slice_names)
        self._reset_eval()

    def _reset_eval(self):
        n = len(self.slice_names)
        self._correct = torch.zeros(n, dtype=torch.long)
        self._count = torch.zeros(n, dtype=torch.long)
        self._loss_sum = 0.0
        self._loss_n = 0
        self._bytes = 0

    def _step(self, batch):
        hidden = self.model(batch["input_ids"])  # (B, T, D)
        if self.readout is not None:
            hidden = self.readout(hidden)
        labels = batch["labels"]
        mask = labels != IGNORE
        logits = self.model.logits(hidden[mask])  # (N, vocab)
        target = labels[mask]
        loss = F.cross_entropy(logits.float(), target)
        return loss, logits.argmax(-1) == target, mask

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._step(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {self.global_step}")
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        aux = self.model.aux_loss()  # MoE / MoM load balancing, already weighted
        if aux is not None:
            self.log("train/aux_loss", aux.detach(), on_step=True, on_epoch=False, batch_size=bs)
            loss = loss + aux
        return loss

    def _eval_step(self, batch):
        loss, hits, mask = self._step(batch)
        per_example = mask.sum(1)  # labelled positions per sequence
        ex_of_label = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), per_example)
        slices = batch["slice"][ex_of_label].cpu()
        n = len(self.slice_names)
        self._correct += torch.bincount(slices, weights=hits.cpu().long(), minlength=n).long()
        self._count += torch.bincount(slices, minlength=n)
        self._loss_sum += loss.item() * int(mask.sum())
        self._loss_n += int(mask.sum())
        if "n_bytes" in batch:
            self._bytes += int(batch["n_bytes"].sum())

    def _eval_end(self, prefix: str):
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # DDP: every rank scored its shard; sum them
            sums = torch.tensor([self._loss_sum, self._loss_n, self._bytes], dtype=torch.float64, device=self.device)
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
            self._loss_sum, self._loss_n, self._bytes = float(sums[0]), int(sums[1]), int(sums[2])
            self._correct = trainer.strategy.reduce(self._correct.to(self.device), reduce_op="sum").cpu()
            self._count = trainer.strategy.reduce(self._count.to(self.device), reduce_op="sum").cpu()
        sync = trainer is not None and trainer.world_size > 1  # values are already summed: the mean is a no-op
        acc = self._correct.sum().item() / max(1, self._count.sum().item())
        self.log(f"{prefix}/acc", acc, prog_bar=True, sync_dist=sync)
        self.log(f"{prefix}/loss", self._loss_sum / max(1, self._loss_n), sync_dist=sync)
        if self.lm:
            self.log(f"{prefix}/ppl", math.exp(min(50.0, self._loss_sum / max(1, self._loss_n))), prog_bar=True, sync_dist=sync)
            self.log(f"{prefix}/bpb", self._loss_sum / (math.log(2) * max(1, self._bytes)), sync_dist=sync)
        for name, c, n in zip(self.slice_names, self._correct.tolist(), self._count.tolist()):
            self.log(f"{prefix}/acc/{name}", c / max(1, n), sync_dist=sync)
        self._reset_eval()

    def on_validation_epoch_start(self):
        self._reset_eval()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def on_test_epoch_start(self):
        self._reset_eval()

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        cfg = self.train_cfg
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg["optimizer"] == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9)
        elif cfg["optimizer"] == "adam":
            for g in groups:
                g["weight_decay"] = 0.0
            opt = torch.optim.Adam(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
        else:
            opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: lr_lambda(s, cfg["warmup_steps"], cfg["max_steps"], cfg["schedule"], cfg["min_lr_ratio"]),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class History(L.Callback):
    """Collects the metric curves and throughput; calls `report(step, metrics)` after each validation.

    Under DDP with spawned processes (several devices) the callback runs in the workers: rank 0 then
    sends ("row", row), ("report", step, metrics) and ("throughput", value) messages through `queue`
    and the launching process replays them (`replay`), so reports still come from the process that
    owns the Ray Tune session.
    """

    def __init__(self, report: Optional[Callable[[int, dict], None]] = None, queue=None):
        self.rows: list[dict] = []
        self.report = report
        self.queue = queue
        self.train_tokens = 0
        self.train_time = 0.0
        self._t0 = None
        self._throughput: Optional[float] = None
        self._restored = False
        self._reported_step = -1
        self._tokens: Optional[int] = None  # rank 0's count, replayed under spawned DDP

    # The curves so far travel in the checkpoint, so a resumed run's history.csv holds the whole run.
    def state_dict(self) -> dict:
        return {"rows": self.rows, "train_tokens": self.train_tokens, "train_time": self.train_time}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
        self.train_tokens, self.train_time = state["train_tokens"], state["train_time"]
        self._restored = True

    def on_train_start(self, trainer, pl_module):
        """After a resume: report the validations the checkpoint holds again (a study's tracker keeps each
        step once), so whoever listens sees the whole curve whether or not it heard the first part."""
        if self._restored and self.report is not None and self.queue is None:
            for row in self.rows:
                if any(k.startswith("val/") for k in row):
                    self._send_report(int(row["step"]), {k: v for k, v in row.items() if k != "step"})

    def _send_report(self, step: int, metrics: dict) -> None:
        """`report(step, metrics)` with `metrics["train_rows"]`: the training-curve rows since the last report."""
        rows = [r for r in self.rows if "train/loss" in r and self._reported_step < r["step"] <= step]
        self._reported_step = step
        self.report(step, {**metrics, "train_rows": rows})

    def __getstate__(self):  # sent to spawned DDP workers: the report callable stays in this process
        state = dict(self.__dict__)
        state["report"] = None
        return state

    def _row(self, trainer, row: dict) -> None:
        self.rows.append(row)
        if self.queue is not None and trainer.is_global_zero:
            self.queue.put(("row", row))

    def replay(self, message: tuple) -> None:
        """Apply one message sent by rank 0 of a spawned DDP run (in the launching process)."""
        kind = message[0]
        if kind == "row":
            self.rows.append(message[1])
        elif kind == "report" and self.report is not None:
            self._send_report(message[1], message[2])
        elif kind == "throughput":
            self._throughput = message[1]
        elif kind == "tokens":
            self._tokens = message[1]

    def on_train_end(self, trainer, pl_module):
        if self.queue is not None and trainer.is_global_zero:
            self.queue.put(("throughput", self.throughput))
            self.queue.put(("tokens", self.tokens))

    def teardown(self, trainer, pl_module, stage):
        # In spawned DDP workers: leave the process group before the process exits. Left to interpreter
        # shutdown, gloo's threads were seen to abort a worker ("terminate called without an active
        # exception", SIGABRT) after a finished fit, which failed the whole run.
        if self.queue is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_time += time.perf_counter() - self._t0
        self.train_tokens += batch["input_ids"].numel()
        step = trainer.global_step
        if step % 10 == 0 and "train/loss" in trainer.callback_metrics:
            row = {"step": step, "train/loss": float(trainer.callback_metrics["train/loss"])}
            if "train/aux_loss" in trainer.callback_metrics:
                row["train/aux_loss"] = float(trainer.callback_metrics["train/aux_loss"])
            self._row(trainer, row)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics["step"] = trainer.global_step
        metrics["throughput_tok_s"] = self.throughput
        metrics["tokens"] = self.tokens
        self._row(trainer, dict(metrics))
        if self.queue is not None:
            if trainer.is_global_zero:
                self.queue.put(("report", trainer.global_step, metrics))
        elif self.report is not None:
            self._send_report(trainer.global_step, metrics)

    @property
    def throughput(self) -> float:
        """Training tokens per second (of rank 0 times the number of ranks under DDP)."""
        if self._throughput is not None:
            return self._throughput
        world = self._world if hasattr(self, "_world") else 1
        return world * self.train_tokens / self.train_time if self.train_time > 0 else 0.0

    @property
    def tokens(self) -> int:
        """Training tokens so far (rank 0's count times the number of ranks under DDP)."""
        if self._tokens is not None:
            return self._tokens
        return (self._world if hasattr(self, "_world") else 1) * self.train_tokens

    def setup(self, trainer, pl_module, stage):
        self._world = trainer.world_size


def _fit_relaying(trainer, module, loaders: dict, history: History, queue) -> None:
    """trainer.fit in a thread while this (the caller's) thread replays rank 0's messages: reports to a
    Ray Tune session must come from the trial's own thread."""
    import queue as queue_mod
    import threading

    failure: list = []

    def fit():
        try:
            trainer.fit(module, **loaders)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=fit, name="archspace-ddp-fit", daemon=True)
    worker.start()
    while worker.is_alive() or not queue.empty():
        try:
            history.replay(queue.get(timeout=0.2))
        except queue_mod.Empty:
            continue
    worker.join()
    if failure:
        raise failure[0]


def budget_static(cost, model) -> dict:
    """Size and cost a scaling fit needs beyond the accounting (archspace.budget): parameters without the
    embedding (and untied head), training FLOPs per token (3 x forward)."""
    from .budget import embedding_params, train_flops_per_token

    return {"params_non_embedding": cost.params - embedding_params(model),
            "train_flops_per_token": train_flops_per_token(cost.flops_per_token)}


def spent(static: dict, metrics: dict) -> dict:
    """FLOPs spent so far, from the tokens trained so far (in every validation report)."""
    return {"train_flops": static["train_flops_per_token"] * metrics["tokens"]} if "tokens" in metrics else {}


def initial_decays(model) -> dict:
    """The per-token decay each retention gate starts from at W x = 0, per module that owns gate parameters
    ("layers.0.mixer": [per head] or [per head [per channel]]; blocks/retention.py ``initial_decay``): how much of
    a write a head keeps after n tokens at the start of training is decay**n."""
    from .blocks.config import MemoryConfig

    out = {}
    for name, mod in model.named_modules():
        cfg = getattr(mod, "cfg", None)
        if isinstance(cfg, MemoryConfig) and hasattr(mod, "k_proj"):  # a write path: it holds the gate's parameters
            with torch.no_grad():
                decay = cfg.axes.retention.initial_decay(mod, cfg)
            if decay is not None:
                out[name] = decay.tolist()
    return out


def write_history(rows: list[dict], path: Path) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


LAST_CKPT = "last.ckpt"


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (our own file: a trusted pickle)."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _write_measured(run_dir: Path, history: History, metrics: dict) -> None:
    write_history(history.rows, run_dir / "history.csv")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def check_kernel_device(resolved: Resolved) -> None:
    """ConfigError when a layer asks for a kernel path (triton) that the run's device cannot run: bad input,
    found before anything is written."""
    accel = resolved.train["accelerator"]
    device = "cuda" if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()) else "cpu"
    try:
        check_device(resolved.model, device)
    except ValueError as e:
        raise ConfigError(f"design {resolved.name!r}: {e}") from None


def train(
    resolved: Resolved,
    run_dir: Path,
    *,
    progress: bool = True,
    report: Optional[Callable[[int, dict], None]] = None,
    callbacks: tuple = (),
    init_weights: Optional[Path] = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and test one resolved design; return the final metrics (also written to metrics.json).

    `init_weights`: a model.safetensors (e.g. of an `archspace export`) loaded into the model before fitting.
    `resume`: continue from `run_dir/checkpoints/last.ckpt` when it exists (else start from scratch).
    `report(step, metrics)` is called after every validation; `metrics["train_rows"]` holds the
    training-curve rows since the previous call. Ctrl-C raises TrainingInterrupted (see the module notes).
    """
    run_dir = Path(run_dir)
    check_kernel_device(resolved)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text(resolved.to_yaml())
    cfg = resolved.train
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    data = build_datamodule(resolved.task, cfg["batch_size"])
    data.setup("fit")
    module = RecallModule(resolved.to_dict(), data.slice_names("test"))
    if init_weights is not None:
        from safetensors.torch import load_model

        load_model(module.model, str(init_weights))  # strict: the same parameter names and shapes
    from .grammar import task_seq_len

    cost = module.model.cost(task_seq_len(resolved.task))
    init_decay = initial_decays(module.model)  # before any step: the gates' initialisation, logged with the run
    static = {"params": cost.params, "active_params": cost.active, "state_size": cost.state,
              "flops_per_token": cost.flops_per_token, **budget_static(cost, resolved.model)}
    multi = cfg["devices"] > 1
    queue = None
    if multi:
        # Several devices train with DDP in spawned processes ("ddp_spawn"): the "ddp" launcher re-runs
        # sys.argv, which inside a Ray Tune worker is Ray's worker script, not archspace.
        import torch.multiprocessing as mp

        manager = mp.get_context("spawn").Manager()
        queue = manager.Queue()
        if cfg["threads"]:
            os.environ["OMP_NUM_THREADS"] = str(max(1, cfg["threads"] // cfg["devices"]))
    history = History(None if report is None else (lambda step, m: report(step, {**static, **m, **spent(static, m)})),
                      queue=queue)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / LAST_CKPT
    resume_from = last if resume and last.is_file() else None
    start_step = checkpoint_step(resume_from) if resume_from is not None else 0
    t0 = time.perf_counter()

    def measured(status: str, step: int) -> dict:
        """What is known without the test: the last values of every curve, sizes, identity, status."""
        latest: dict[str, Any] = {}
        for row in history.rows:
            latest.update({k: v for k, v in row.items() if k != "step"})
        return {**latest, **static, "status": status, "steps": step, "train_wall_s": time.perf_counter() - t0,
                "resumed_from_step": start_step, "design_hash": resolved.design_hash, "data_hash": data.data_hash(),
                "kernel_paths": kernel_paths(resolved.model)}

    def hard_stop() -> None:
        step = max([start_step] + [int(r["step"]) for r in history.rows])
        _write_measured(run_dir, history, measured("interrupted", step))

    interruption = Interruption(last, hard_stop)
    cbs: list = [history, interruption, *callbacks]
    if cfg["checkpoint"]:
        from lightning.pytorch.callbacks import ModelCheckpoint

        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max",
                                   save_last=True, save_top_k=1))
    trainer = L.Trainer(
        max_steps=cfg["max_steps"],
        val_check_interval=min(cfg["eval_every"], cfg["max_steps"]),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg["grad_clip"],
        precision=cfg["precision"],
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        strategy="ddp_spawn" if multi else "auto",
        deterministic=True,
        logger=False,
        enable_checkpointing=bool(cfg["checkpoint"]),
        enable_progress_bar=progress,
        enable_model_summary=False,
        callbacks=cbs,
        default_root_dir=str(run_dir),
    )
    # One device: the training loader can continue mid-epoch. Under DDP Lightning must see the plain
    # DataLoader to give every rank its shard (a resumed DDP run restarts its epoch's data order).
    # (Under DDP the workers build their loaders from the datamodule: loaders built here and pickled to the
    # spawned workers failed to rebuild their shared tensors, "unable to resize file".)
    ckpt = dict(ckpt_path=str(resume_from) if resume_from is not None else None)
    loaders = dict(datamodule=data, **ckpt) if multi else dict(
        train_dataloaders=ResumableLoader(data.train_dataloader(), start_step), val_dataloaders=data.val_dataloader(),
        **ckpt)
    interruption.install()
    try:
        if multi:
            _fit_relaying(trainer, module, loaders, history, queue)
            manager.shutdown()
        else:
            trainer.fit(module, **loaders)
    except _StopAfterStep:
        pass
    finally:
        interruption.uninstall()
    if interruption.stopped:
        step = interruption.saved_step
        _write_measured(run_dir, history, measured("interrupted", step))
        raise TrainingInterrupted(run_dir, step, resumable=last.is_file())
    wall = time.perf_counter() - t0
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    for row in history.rows:  # the last validation, also when it ran before a resume
        final.update({k: v for k, v in row.items() if k.startswith("val/")})
    tested = trainer.test(module, dataloaders=data.test_dataloader(), verbose=False)[0]
    metrics: dict[str, Any] = {k: float(v) for k, v in tested.items()}
    metrics.update(final)
    metrics.update(static)
    metrics.update(
        {
            "status": "finished",
            "steps": max([trainer.global_step] + [int(r["step"]) for r in history.rows]),  # spawned DDP: from rank 0
            "train_wall_s": wall,
            "resumed_from_step": start_step,
            "throughput_tok_s": history.throughput,
            "tokens": history.tokens,
            "train_flops": static["train_flops_per_token"] * history.tokens,
            "design_hash": resolved.design_hash,
            "data_hash": data.data_hash(),
            "kernel_paths": kernel_paths(resolved.model, trainer.strategy.root_device),
            "initial_decay": init_decay,
        }
    )
    from safetensors.torch import save_model

    save_model(module.model, str(run_dir / "model.safetensors"))  # final weights, for export
    _write_measured(run_dir, history, metrics)
    return metrics
