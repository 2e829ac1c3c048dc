"""Every task, by its `task.name`: the keys of its YAML section, its data module, its sequence length, its
checks and what training needs to know about it. One table, read by the grammar (validation, JSON Schema), the
training module (data, readout, LM metrics) and the accounting (the sequence length costs are quoted at).

A new task: a spec in archspace/tasks/specs.py, its data module in its own file, and one entry here.
Torch-free at import (the data modules are imported when a run builds them).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .specs import (LMTaskSpec, MADCompressionSpec, MADFuzzyInContextRecallSpec, MADInContextRecallSpec,
                    MADMemorizationSpec, MADNoisyInContextRecallSpec, MADSelectiveCopyingSpec, ModularAdditionSpec,
                    MQARTaskSpec, ParitySpec, PermutationSpec, check_lm, check_mad, check_mqar, check_state_tracking)

__all__ = ["Task", "TASKS"]


@dataclass(frozen=True)
class Task:
    spec: type  # the pydantic spec of the task section (archspace/tasks/specs.py)
    datamodule: Callable[[dict, int], Any]  # (resolved task section, batch size) -> a LightningDataModule
    seq_len: Callable[[dict], int]  # the longest training sequence of a resolved section
    check: Optional[Callable] = None  # (validated section, marks): cross-key checks, ConfigError at the key
    readout: Optional[Callable[[int], Any]] = None  # d_model -> module between the hidden states and the LM head
    language_model: bool = False  # labels at every position: also log val/ppl and val/bpb


def _mqar_data(task: dict, batch_size: int):
    from .mqar import MQARDataModule, MQARSlice

    return MQARDataModule(vocab_size=task["vocab_size"], train=[MQARSlice(**s) for s in task["train"]],
                          test=[MQARSlice(**s) for s in task["test"]], batch_size=batch_size, power_a=task["power_a"],
                          random_non_queries=task["random_non_queries"], seed=task["seed"],
                          repeat=task.get("repeat", 1), order=task.get("order", "mixed"))


def _mqar_seq_len(task: dict) -> int:
    # a JRT row (repeat > 1) reads the key-value context `repeat` times
    return max(s["seq_len"] + (task.get("repeat", 1) - 1) * 2 * s["num_kv_pairs"] for s in task["train"])


def _mad_data(task: dict, batch_size: int):
    from .mad import MADDataModule

    return MADDataModule(task, batch_size=batch_size)


def _compression_readout(d_model: int):
    """MAD's encoder-decoder readout of the compression task (archspace.tasks.mad.CompressionReadout)."""
    from .mad import CompressionReadout

    return CompressionReadout(d_model)


def _lm_data(task: dict, batch_size: int):
    from .lm import LMDataModule

    return LMDataModule(task, batch_size=batch_size)


def _state_tracking_data(task: dict, batch_size: int):
    from .state_tracking import StateTrackingDataModule

    return StateTrackingDataModule(task, batch_size=batch_size)


def _state_tracking_seq_len(task: dict) -> int:
    return int(task["train_lengths"][1])


def _fixed_seq_len(task: dict) -> int:
    return int(task["seq_len"])


def _name(spec) -> str:
    return typing.get_args(spec.model_fields["name"].annotation)[0]


_MAD = (MADInContextRecallSpec, MADNoisyInContextRecallSpec, MADFuzzyInContextRecallSpec, MADSelectiveCopyingSpec,
        MADCompressionSpec, MADMemorizationSpec)

TASKS: dict[str, Task] = {
    "mqar": Task(MQARTaskSpec, _mqar_data, _mqar_seq_len, check=check_mqar),
    **{_name(spec): Task(spec, _mad_data, _fixed_seq_len, check=check_mad,
                         readout=_compression_readout if spec is MADCompressionSpec else None) for spec in _MAD},
    "lm": Task(LMTaskSpec, _lm_data, _fixed_seq_len, check=check_lm, language_model=True),
    **{_name(spec): Task(spec, _state_tracking_data, _state_tracking_seq_len, check=check_state_tracking)
       for spec in (ParitySpec, ModularAdditionSpec, PermutationSpec)},
}
