"""Memory structure axis (``structure:``): what one memory is. See blocks/axis.py for what a value owns.

vector  an elementwise memory m in R^V per head (K = V), M(k) = k * m, read o = q * m  (HGRN-style: with a
        per-channel retention gate, h_t = a_t * h_{t-1} + k_t * v_t; Qin et al. 2023,
        https://arxiv.org/abs/2311.04823); exact kernel kernels/elementwise.py
matrix  S in R^{K x V} per head, kept in fp32 (the linear-attention family); read o = scale * S^T q, with K the
        feature map's width and V the value width (+1: the sum normaliser's column), cfg.state_key_dim and
        cfg.state_value_dim.
mlp     a deep memory M(x) = x + LN(W_L act(... act(x W_1 + b_1) ...) + b_L) per head, trained online by the
        mini-batch engine (kernels/minibatch.py): TTT-MLP (Sun et al. 2024, https://arxiv.org/abs/2407.04620,
        Sec. 2-3), Titans' long-term memory (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663, Sec. 3.1),
        Miras' Moneta / Yaad / Memora (Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 5);
        `depth` layers (1: TTT-Linear's x + LN(x W + b)), hidden width round(expansion * K), the initial
        weights learned per head (TTT, Titans: N(0, 0.02^2), zero biases) or zero, the LayerNorm's affine
        learned in the outer loop (TTT)

A matrix or vector memory whose bias, retention or update has no exact online kernel runs on the mini-batch
engine too, as a depth-1 memory without bias, norm or residual (blocks/dispatch.py). A matrix or deep memory reads
keys as wide as the feature map makes them (cfg.state_key_dim: key_dim, or 1 + d + d^2 for taylor2, ...); a deep
memory's hidden width follows key_dim. The
state of a mini-batch memory is packed per head: its weights, the momentum, the anchor weights of the current
mini-batch (chunk_size > 1) and the Omega rule's window (kernels/minibatch.py's ``state_parts``); its position is
kept beside it.
"""
from __future__ import annotations

import math
from typing import Literal

from .axis import INIT_STD, Axis, AxisValue, InvalidConfig, Option, nn, torch


def _spec(cfg):
    from .dispatch import spec_of

    return spec_of(cfg)


class Structure(AxisValue):
    """A memory structure: the state of one memory and how a query reads it."""

    kernel = None  # the exact op family of blocks/dispatch.py this structure needs (None: the bias' or update's)

    def layers(self, cfg) -> tuple:
        """The memory's layers for the mini-batch engine: kernels.minibatch.Layer tuples."""
        raise NotImplementedError

    def cells(self, cfg) -> int:
        """Numbers one head's memory holds (the unit of the exact kernels' FLOP counts: K*V or V)."""
        raise NotImplementedError

    def spec(self, cfg) -> dict:
        return {"layers": self.layers(cfg), "scale": self.read_scale(cfg)}

    def read_scale(self, cfg) -> float:
        return 1.0

    def state_shape(self, cfg) -> tuple:
        """Shape of one memory's state per sequence (without the batch dim); a mini-batch memory: packed."""
        if cfg.minibatch:
            from ..kernels.minibatch import packed_numel  # torch: imported when a block is built (blocks/axis.py)

            return (cfg.heads, packed_numel(_spec(cfg)))
        return self.online_shape(cfg)

    def online_shape(self, cfg) -> tuple:
        raise NotImplementedError

    def state_numel(self, cfg) -> int:
        return math.prod(self.state_shape(cfg))

    def init_state(self, cfg, batch_size: int, device=None, host=None):
        """A fresh state [B, *state_shape]: zeros, or a mini-batch memory's packed learned initial weights (the
        parameters on ``host``)."""
        if not cfg.minibatch:
            return torch.zeros(batch_size, *self.state_shape(cfg), device=device, dtype=torch.float32)
        spec = _spec(cfg)
        w0 = (self.statics(host, cfg) if host is not None else {}).get("w0")
        from ..kernels.minibatch import state_parts, weight_numel

        flat = torch.zeros(cfg.heads, weight_numel(spec), device=device) if w0 is None else w0.float()
        parts = state_parts(spec)  # A, then S = 0, the anchor = A, an empty Omega window
        packed = torch.cat([flat] + ([torch.zeros_like(flat)] if parts["S"] else []) + ([flat] if parts["Wa"] else [])
                           + ([flat.new_zeros(cfg.heads, parts["window"])] if parts["window"] else []), dim=1)
        return packed.to(device).unsqueeze(0).expand(batch_size, *packed.shape).clone()

    def read(self, cfg, state, q, host=None):
        """Read a fixed state with queries q [B, L, H, K] -> [B, L, H, V] (no write; Titans' memory as context).
        A mini-batch memory's state is read at a mini-batch boundary (its weights, no token scale)."""
        if not cfg.minibatch:
            return self.read_online(cfg, state, q)
        from ..kernels.minibatch import minibatch_read
        from .dispatch import memory_statics

        return minibatch_read(q, {"memory": state, "pos": 0}, spec=_spec(cfg),
                                        statics=memory_statics(host, cfg, q.shape[0]))

    def read_online(self, cfg, state, q):
        raise NotImplementedError

    def read_flops(self, cfg) -> int:
        """FLOPs of one read, per head: 2 per multiply-add of the memory's forward (a bias entry counts as one)."""
        if cfg.minibatch:
            from ..kernels.minibatch import weight_numel

            return 2 * weight_numel(_spec(cfg))
        return 2 * self.cells(cfg)


class Vector(Structure):
    """an elementwise memory m in R^V per head (K = V), read q * m"""

    kernel = "elementwise"

    def check(self, cfg):
        if cfg.key_dim != cfg.value_dim:
            return "key_dim", f"a vector memory is elementwise: key_dim ({cfg.key_dim}) must equal value_dim " \
                              f"({cfg.value_dim})"
        return None

    def layers(self, cfg):
        from ..kernels.minibatch import Layer

        return (Layer(cfg.key_dim, cfg.value_dim, diag=True),)

    def cells(self, cfg) -> int:
        return cfg.value_dim

    def online_shape(self, cfg) -> tuple:
        return (cfg.heads, cfg.value_dim)

    def read_online(self, cfg, state, q):
        return state[:, None] * q.float()


class Matrix(Structure):
    """a matrix S in R^{K x V} per head"""

    def layers(self, cfg):
        from ..kernels.minibatch import Layer

        return (Layer(cfg.state_key_dim, cfg.value_dim),)

    def read_scale(self, cfg) -> float:
        return cfg.state_key_dim ** -0.5  # as the exact kernels read (blocks/memory.py folds cfg.scale against it)

    def cells(self, cfg) -> int:
        return cfg.state_key_dim * cfg.state_value_dim

    def online_shape(self, cfg) -> tuple:
        return (cfg.heads, cfg.state_key_dim, cfg.state_value_dim)

    def read_online(self, cfg, state, q):
        # K**-0.5 as the kernels apply it (blocks/memory.py's query path folds cfg.scale into q)
        return cfg.state_key_dim ** -0.5 * torch.einsum("bhkv,blhk->blhv", state, q.float())


class MLP(Structure):
    """a deep memory x + LN(MLP(x)) per head, trained online in mini-batches (TTT, Titans, Miras)"""

    online = False
    options = (
        Option("depth", int, 2, "layers of the memory MLP (1: x + LN(x W + b), TTT-Linear)", {"ge": 1, "le": 8}),
        Option("expansion", float, 4.0, "hidden width = round(expansion * key_dim) (TTT-MLP, Titans: 4)",
               {"gt": 0, "le": 64}),
        Option("activation", Literal["gelu", "gelu_tanh", "silu"], "gelu",
               "between the memory's layers: exact GELU (Titans, Miras), tanh GELU (TTT), SiLU"),
        Option("residual", bool, True, "M(x) = x + ... (TTT, Titans; needs the key width, key_dim or a widening "
               "feature map's, to equal value_dim)"),
        Option("memory_norm", Literal["layernorm", "none"], "layernorm",
               "LayerNorm on the memory's output, its affine learned in the outer loop (TTT)"),
        Option("inner_bias", bool, False, "biases inside the memory, trained online like its weights (TTT: yes; "
               "Titans, Miras: no)"),
        Option("memory_init", Literal["learned", "zero"], "learned",
               "initial memory weights: learned per head, N(0, 0.02^2) and zero biases (TTT, Titans), or zero"),
    )

    def check(self, cfg):
        if cfg.residual and cfg.state_key_dim != cfg.value_dim:
            width = f"key_dim ({cfg.key_dim})" if cfg.state_key_dim == cfg.key_dim else \
                f"the keys' width after feature_map {cfg.feature_map!r} ({cfg.state_key_dim})"
            return "residual", f"a residual memory adds its input: {width} must equal value_dim ({cfg.value_dim}); " \
                               "set residual: false or equal dims"
        if cfg.memory_init == "zero" and cfg.depth >= 2 and not cfg.inner_bias:
            return "memory_init", "a deep memory that starts at zero weights without biases never learns: every " \
                                  "hidden activation and every inner gradient is zero; use memory_init: learned"
        return None

    def hidden(self, cfg) -> int:
        return max(1, round(cfg.expansion * cfg.key_dim))

    def layers(self, cfg):
        from ..kernels.minibatch import Layer

        dims = [cfg.state_key_dim] + [self.hidden(cfg)] * (cfg.depth - 1) + [cfg.value_dim]
        return tuple(Layer(a, b, bias=cfg.inner_bias) for a, b in zip(dims[:-1], dims[1:]))

    def spec(self, cfg) -> dict:
        return {**super().spec(cfg), "activation": cfg.activation, "norm": cfg.memory_norm == "layernorm",
                "residual": cfg.residual}

    def _shapes(self, cfg) -> list:
        from ..kernels.minibatch import MemorySpec, tensor_shapes

        return tensor_shapes(MemorySpec(layers=self.layers(cfg)))

    def add_params(self, host, cfg) -> None:
        H = cfg.heads
        if cfg.memory_init == "learned":
            for li, kind, shape in self._shapes(cfg):
                name = f"memory_{'b' if kind == 'bias' else 'w'}{li + 1}"
                t = torch.zeros(H, *shape) if kind == "bias" else torch.randn(H, *shape) * INIT_STD
                setattr(host, name, nn.Parameter(t))
        if cfg.memory_norm == "layernorm":
            host.memory_ln_weight = nn.Parameter(torch.ones(H * cfg.value_dim))
            host.memory_ln_bias = nn.Parameter(torch.zeros(H * cfg.value_dim))

    def extra_params(self, cfg) -> int:
        from ..kernels.minibatch import weight_numel

        n = cfg.heads * weight_numel(_spec(cfg)) if cfg.memory_init == "learned" else 0
        return n + (2 * cfg.heads * cfg.value_dim if cfg.memory_norm == "layernorm" else 0)

    def statics(self, host, cfg) -> dict:
        H, V = cfg.heads, cfg.value_dim
        out = {}
        if cfg.memory_init == "learned":
            ws = [getattr(host, f"memory_{'b' if kind == 'bias' else 'w'}{li + 1}")
                  for li, kind, _ in self._shapes(cfg)]
            out["w0"] = torch.cat([w.reshape(H, -1) for w in ws], dim=1)
        if cfg.memory_norm == "layernorm":
            out["ln_w"] = host.memory_ln_weight.view(H, V)
            out["ln_b"] = host.memory_ln_bias.view(H, V)
        return out


STRUCTURE = Axis("structure", "memory structure", "matrix", {
    "vector": Vector(),
    "matrix": Matrix(),
    "mlp": MLP(),
})

__all__ = ["STRUCTURE", "Structure", "InvalidConfig"]
