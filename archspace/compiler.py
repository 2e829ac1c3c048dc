"""Compiler: validated Design -> one resolved per-layer config tree -> torch module.

All derived fields (per-head dims, MLP width, vocabulary, the explicit per-layer layout) are
computed here and nowhere else. The resolved tree is what gets hashed, written beside every run
as `resolved.yaml`, and handed to the blocks.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from . import yamlio
from .budget import apply_budget
from .grammar import Design, HybridSpec, MixerSpec, parse_pattern

# Fields that choose how a layer is computed, not what it computes: excluded from the design hash,
# so the chunked and reference paths of one design share a hash. A mini-batch memory's chunk_size is its
# mini-batch size, which changes the function (blocks/dispatch.py): it stays in the hash.
EXECUTION_FIELDS = ("path", "chunk_size")


@dataclass(frozen=True)
class Resolved:
    """A fully resolved design: the model's per-layer configs plus the task and training recipe."""

    name: str
    model: Any  # archspace.blocks.config.ModelConfig
    layout: str  # one letter per layer: M model.mixer, A model.attention, other letters model.mixers
    labels: tuple  # per layer, the preset name (or "custom") of its token mixer, for display
    task: dict
    train: dict
    design_hash: str

    @property
    def attention_layers(self) -> int:
        """Layers whose token mixer is plain softmax attention (global or sliding window)."""
        return sum(1 for layer in self.model.layers if layer.mixer.kind == "attention")

    def to_dict(self) -> dict:
        return {
            "schema_version": 1,
            "name": self.name,
            "design_hash": self.design_hash,
            "layout": self.layout,
            "labels": list(self.labels),
            "model": self.model.to_dict(),
            "task": self.task,
            "train": self.train,
        }

    def to_yaml(self) -> str:
        return yamlio.dump(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Resolved":
        """The inverse of to_dict (a run's resolved.yaml, an export's config); the hash is recomputed."""
        from .blocks.config import ModelConfig

        model = ModelConfig.from_dict(d["model"])
        return cls(name=d.get("name", "design"), model=model, layout=d.get("layout", ""),
                   labels=tuple(d.get("labels") or ()), task=dict(d["task"]), train=dict(d["train"]),
                   design_hash=design_hash(model.to_dict()))


def expand_layout(hybrid: HybridSpec, n_layers: int | None) -> str:
    """The hybrid notation -> one letter per layer ("M" memory, "A" attention).

    ratio "m:a" over N layers gives n_A = round(N * a / (m + a)) attention layers, at least one when
    a > 0 and at most N - 1 when m > 0 (N >= 2), so "24:1" on a 4-layer model still has one
    attention layer; the resolved layout shows exactly what was built.
    Placements: interleave (evenly spaced, the last layer attention), top (last layers),
    bottom (first layers), middle (centred).
    """
    if hybrid.pattern is not None:
        return "".join(parse_pattern(hybrid.pattern))
    n = 2 if n_layers is None else n_layers
    m, a = (int(x) for x in (hybrid.ratio or "1:0").split(":"))
    if a == 0:
        return "M" * n
    if m == 0:
        return "A" * n
    n_a = round(n * a / (m + a))
    n_a = max(1, n_a)
    if n >= 2:
        n_a = min(n - 1, n_a)
    if hybrid.placement == "interleave":
        idx = {round((i + 1) * n / n_a) - 1 for i in range(n_a)}
    elif hybrid.placement == "top":
        idx = set(range(n - n_a, n))
    elif hybrid.placement == "bottom":
        idx = set(range(n_a))
    else:  # middle
        start = (n - n_a) // 2
        idx = set(range(start, start + n_a))
    return "".join("A" if i in idx else "M" for i in range(n))


def mixer_config(spec: MixerSpec, d_model: int, attention: MixerSpec | None = None):
    """One token-mixer config; `attention` is the model's attention spec (the branch of Titans blocks).
    A config the blocks refuse raises InvalidConfig, its key dotted from the mixer (``mom.top_k``)."""
    from dataclasses import replace

    from .blocks.config import AttentionConfig, ConvConfig, InvalidConfig, MoMConfig, TitansConfig

    if spec.type == "conv":
        return ConvConfig(d_model=d_model, short_conv=spec.short_conv, conv_bias=spec.conv_bias)
    if spec.type == "attention":
        return AttentionConfig(
            d_model=d_model,
            heads=spec.heads,
            head_dim=spec.head_dim or d_model // spec.heads,
            window=spec.window,
            rope_base=spec.rope_base,
            short_conv=spec.short_conv,
        )
    memory = _memory_config(spec, d_model)
    section = "mom"
    try:
        if spec.mom is not None:  # the mixture, alone or as the memory branch of a Titans block (mag, mal)
            memory = MoMConfig(memory=memory, **spec.mom.model_dump())
        section = "titans"
        if spec.titans is not None:
            t = spec.titans
            branch = mixer_config(attention, d_model)
            branch = replace(branch, window=None if t.variant == "mac" else t.window)
            return TitansConfig(memory=memory, attention=branch, variant=t.variant, segment=t.segment,
                                persistent_tokens=t.persistent_tokens)
    except InvalidConfig as exc:
        if exc.key and not exc.incompatible:
            exc.key = f"{section}.{exc.key}"
        raise
    return memory


def _memory_config(spec: MixerSpec, d_model: int):
    """The MemoryConfig of a memory mixer spec: every config field the spec has, the per-head dims derived."""
    from dataclasses import fields

    from .blocks.config import MemoryConfig

    given = {f.name: getattr(spec, f.name) for f in fields(MemoryConfig) if f.name in type(spec).model_fields}
    given.update(d_model=d_model, key_dim=spec.key_dim or d_model // spec.heads,
                 value_dim=spec.value_dim or d_model // spec.heads)
    return MemoryConfig(**given)


def design_hash(model_dict: dict) -> str:
    """Canonical hash of a resolved model: same architecture, same hash, whatever the spelling. A memory field
    added after grammar v1 (``hash_default=False`` in blocks/config.py) counts only where it differs from its
    default, so the designs hashed before it existed keep their hashes."""
    from .blocks.config import MemoryConfig, hash_neutral_defaults, is_minibatch

    neutral = hash_neutral_defaults(MemoryConfig)

    def strip(node):
        if isinstance(node, dict):
            memory = node.get("kind") == "memory"
            # a mini-batch memory's chunk size is part of its model (the update runs once per mini-batch)
            model = {"chunk_size"} if memory and is_minibatch(node) else set()
            return {k: strip(v) for k, v in node.items() if (k not in EXECUTION_FIELDS or k in model)
                    and not (memory and k in neutral and v == neutral[k])}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    text = json.dumps(strip(model_dict), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve(design: Design) -> Resolved:
    from .blocks.config import LayerConfig, ModelConfig, MoEConfig, SwiGLUConfig

    m = design.model
    layout = expand_layout(m.hybrid, m.n_layers)
    d = m.d_model
    specs = {"M": m.mixer, "A": m.attention, **m.mixers}
    mixers = {letter: mixer_config(spec, d, m.attention) for letter, spec in specs.items()}
    mlp = None
    hidden = m.mlp.hidden or max(1, round(m.mlp.hidden_mult * d))
    if m.mlp.kind == "swiglu":
        mlp = SwiGLUConfig(d_model=d, hidden=hidden)
    elif m.mlp.kind == "moe":
        mlp = MoEConfig(d_model=d, hidden=hidden, experts=m.mlp.experts, top_k=m.mlp.top_k,
                        aux_loss_weight=m.mlp.aux_loss_weight, capacity=m.mlp.capacity)
    layers = tuple(LayerConfig(mixer=mixers[ch], mlp=mlp) for ch in layout)
    model = ModelConfig(
        vocab_size=m.vocab_size or design.task.vocab_size,
        d_model=d,
        layers=layers,
        norm_eps=m.norm_eps,
        tie_embeddings=m.tie_embeddings,
    )
    return Resolved(
        name=design.name or "design",
        model=model,
        layout=layout,
        labels=tuple(_label(specs[ch]) for ch in layout),
        task=design.task.model_dump(),
        train=apply_budget(design.train.model_dump(), model, design.task.model_dump(),
                           "max_steps" in design.train.model_fields_set),
        design_hash=design_hash(model.to_dict()),
    )


def _label(spec: MixerSpec) -> str:
    """Display name of a layer's token mixer: its preset plus what wraps it."""
    name = spec.preset or "custom"
    if spec.type != "memory":
        return name
    if spec.hierarchy == "log_linear":
        name = f"log_linear_{name}"
    if spec.mom is not None:
        name = f"mom{spec.mom.memories}x{name}"
    if spec.titans is not None:
        name = f"titans_{spec.titans.variant}({name})"
    return name


def build_model(resolved: Resolved):
    """The torch module of a resolved design (blocks looked up in the explicit registry)."""
    from .blocks.model import SequenceModel

    return SequenceModel(resolved.model)

