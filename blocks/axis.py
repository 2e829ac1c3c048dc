"""The axes of the memory mixer: one file per axis, one class per grammar value, one table per axis.

A memory mixer (blocks/memory.py) is a point on the axes of the Miras framework (Behrouz et al. 2025,
https://arxiv.org/abs/2504.13173) plus how its state is organised:

    blocks/structure.py     what the memory is (a matrix S in R^{K x V} per head)
    blocks/bias.py          the attentional bias, i.e. the inner loss whose gradient step is the write
    blocks/retention.py     the retention gate (how the memory forgets)
    blocks/update.py        the update algorithm (how the inner loss is minimised)
    blocks/feature_map.py   the map phi on queries and keys
    blocks/hierarchy.py     one state, or several read with weights (log-linear Fenwick levels)

Each value of an axis is one subclass of that axis' base class, registered in the axis' ``Axis`` table
under its grammar name (the table's keys are the values a YAML file may write). A value owns

    options          its own config fields (``Option``); blocks/config.py adds them to MemoryConfig, the
                     grammar to the YAML schema; they are written in a resolved config only where the value
                     is chosen (``always=True`` keeps a grammar-v1 field in every resolved config, so the
                     design hashes of v1 designs do not change; ``hash_default=False`` leaves a later field
                     at its default out of the design hash, for the same reason; ``omit_default=True``, for an
                     option added later to a value existing designs use, writes it only where it is not the default)
    check(cfg)       what it requires of the rest of the config (a message, or None)
    add_params(host, cfg), add_buffers(host, cfg)
                     its parameters and buffers, registered on the module that owns the memory (the
                     mixer, or a Mixture-of-Memories write path) so parameter names stay flat
    linears(cfg), extra_params(cfg)
                     what they cost: the (in, out) of each projection (parameters in*out, 2*in*out FLOPs
                     per token) and the other parameters
    and its forward: the axis' hook (a log-decay, a step size, a feature map, a state layout).

Adding a value = one class in its axis file, one line in that file's table, and its test.

These files import torch lazily (``from .axis import torch, nn, F``): blocks/config.py builds MemoryConfig from
the tables, the grammar builds its schema from MemoryConfig, and `archspace validate` must answer without
importing torch (seconds of start-up). Torch is imported when a block is first built or run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

__all__ = ["Axis", "AxisValue", "Option", "InvalidConfig", "linear", "torch", "nn", "F", "INIT_STD"]

INIT_STD = 0.02  # std of every projection's normal init (GPT-2 style), shared by all blocks


class _Lazy:
    """Stands for a module and imports it on first attribute access (see the module docstring for why)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        value = getattr(module, attr)
        setattr(self, attr, value)  # later accesses skip __getattr__
        return value


torch = _Lazy("torch")
nn = _Lazy("torch.nn")
F = _Lazy("torch.nn.functional")


class InvalidConfig(ValueError):
    """A block config that cannot be built: ``key`` names the offending field (the grammar points the YAML
    error at it); ``incompatible`` marks a rule of the incompatibility table (samplers skip those designs)."""

    def __init__(self, message: str, key: Optional[str] = None, incompatible: bool = False):
        super().__init__(message)
        self.key = key
        self.incompatible = incompatible


@dataclass(frozen=True)
class Option:
    """A config field that belongs to one axis value (e.g. the GLA gate's rank to retention ``vector``)."""

    name: str
    type: Any
    default: Any
    doc: str
    bounds: dict = field(default_factory=dict)  # pydantic-style ge / gt / le for the grammar
    always: bool = False  # grammar v1 wrote it for every memory: keep it in every resolved config
    # False for a field added after designs were hashed: at its default it stays out of the design hash (the
    # resolved config still lists it), so every existing design keeps its hash (archspace/compiler.py)
    hash_default: bool = True
    # added after grammar v1 to a value that existing designs choose (e.g. bias l2's beta_range): written in a
    # resolved config only where it differs from its default, so the design hashes of those designs do not change
    omit_default: bool = False


class AxisValue:
    """One value of an axis (see the module docstring). Subclasses override what their axis asks for."""

    name: str = ""  # the grammar name, set by the axis table
    options: tuple = ()
    # False: no exact online kernel computes this value; the memory runs on the mini-batch engine
    # (kernels/minibatch.py), whose chunk_size is a hyperparameter of the model (see blocks/dispatch.py)
    online: bool = True

    def is_online(self, memory: dict) -> bool:
        """``online`` for a memory's mapping (a value whose options decide it overrides this)."""
        return self.online

    @property
    def summary(self) -> str:
        """First line of the class docstring: the value's one-line description in the schema and errors."""
        return (self.__doc__ or "").strip().splitlines()[0].rstrip(".")

    def check(self, cfg) -> Optional[tuple[str, str]]:
        """(key, message) when ``cfg`` cannot use this value, else None."""
        return None

    def add_params(self, host, cfg) -> None:
        """Register this value's parameters and buffers on ``host``."""

    def add_buffers(self, host, cfg, device=None) -> None:
        """(Re)register this value's non-persistent buffers on ``host`` (not in a weights file; blocks/weights.py's
        rebuild_buffers calls it after loading)."""

    def linears(self, cfg) -> list:
        return []

    def extra_params(self, cfg) -> int:
        return 0

    def spec(self, cfg) -> dict:
        """This value's fields of the mini-batch engine's MemorySpec (kernels/minibatch.py)."""
        return {}

    def gates(self, host, cfg, x) -> dict:
        """Per-token keyword inputs of the kernels from tokens x [..., D] (beyond the retention's log-decay
        and the bias' step size), from ``add_params``."""
        return {}

    def statics(self, host, cfg) -> dict:
        """Learned tensors the mini-batch engine reads at every token, per head: {name: [H, ...]}."""
        return {}


class Axis(dict):
    """name -> value instance, in the order the grammar lists them; ``default`` is the config default."""

    def __init__(self, key: str, doc: str, default: str, values: dict):
        super().__init__(values)
        self.key, self.doc, self.default = key, doc, default
        for name, value in values.items():
            value.name = name
        if default not in self:
            raise ValueError(f"axis {key}: default {default!r} is not one of its values")

    @property
    def literal(self):
        """typing.Literal of the value names (the config field's type)."""
        return Literal[tuple(self)]

    def describe(self) -> str:
        return f"{self.doc}: " + "; ".join(f"{name} = {value.summary}" for name, value in self.items())

    def value(self, name: str) -> AxisValue:
        try:
            return self[name]
        except KeyError:
            raise InvalidConfig(f"unknown {self.key} {name!r}; valid: {', '.join(self)}", self.key) from None


def linear(d_in: int, d_out: int, bias: bool = False):
    """nn.Linear with weights ~ N(0, INIT_STD^2) and zero bias (nn.Linear's own init runs first and draws
    from the RNG as well, which the seeded weights of every design depend on)."""
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, INIT_STD)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin

