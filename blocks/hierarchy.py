"""Hierarchy axis (``hierarchy:``): one state per memory, or several read with data-dependent weights. It
decides how a memory's state is laid out in a mixer's state dict and advanced, for a memory that sees every
token (blocks/memory.py, Titans, a Mixture-of-Memories' shared memory) and for memories that live in their
own time (the routed memories of blocks/mom.py, rows of [B*M]). See blocks/axis.py for what a value owns.

none        one state (blocks/structure.py), state key "memory"; a mini-batch memory (blocks/dispatch.py) also
            keeps its position "pos" (tokens seen: where its mini-batches start)
log_linear  Fenwick levels of states (Guo et al. 2025, "Log-Linear Attention", https://arxiv.org/abs/2506.04761;
            kernels/log_linear.py): o_t = scale * sum_l lambda_t[l] S_t^(l)T q_t with lambda = softplus(W_l x + b_l)
            per head and level, b_l = softplus^-1(1) so every lambda starts near 1 (the model starts close to the
            flat memory, exactly it at lambda == 1). Keys older than 2^(levels-2) tokens share the last level.
            Defined for scalar (or no / constant) retention: log-linear Mamba2 and Gated DeltaNet. The chunked
            path needs a power-of-two chunk_size. State keys "levels" [B, H, n, K, V] fp32 and "pos" (tokens
            seen), n = levels_in_use(pos, levels) = min(levels, bit_length(pos-1) + 1).
"""
from __future__ import annotations

import math

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


class Hierarchy(AxisValue):
    """How a memory's state is organised: its layout in the state dict, its read inputs and its costs."""

    kernel = None  # an op family of blocks/dispatch.py that replaces the bias' (None: the bias decides)

    # ---- what the query side adds (level weights)
    def read_inputs(self, host, cfg, x) -> dict:
        """Keyword inputs of the kernels that belong to the query (read) side, from tokens x [..., D]."""
        return {}

    # ---- a memory that sees every token; ``prefix`` names a second memory of the same mixer ("shared");
    #      ``host`` holds the memory's learned initial state, if it has one (a deep memory's weights)
    def init_state(self, cfg, batch_size: int, device=None, prefix: str = "", host=None) -> dict:
        raise NotImplementedError

    def kernel_state(self, state: dict, prefix: str = ""):
        """The state the kernels take (``initial_state=`` / ``state=``) from the mixer's state dict."""
        raise NotImplementedError

    def state_entries(self, kstate, prefix: str = "") -> dict:
        """A kernel's final state back into entries of the mixer's state dict."""
        raise NotImplementedError

    def state_numel(self, cfg, seq_len: int) -> int:
        """Numbers the memory holds after ``seq_len`` tokens."""
        raise NotImplementedError

    def recurrence_flops(self, cfg, seq_len: int) -> float:
        """Forward FLOPs of one token's update and read, all heads, averaged over ``seq_len`` positions."""
        raise NotImplementedError

    # ---- memories in their own time: rows r = (sequence, memory) of [B*M]
    row_keys: tuple = ()  # their entries in the state dict

    def row_entries(self, cfg) -> tuple:
        """The state dict's entries of the rows of a memory with config ``cfg``."""
        return self.row_keys

    def init_rows(self, cfg, batch_size: int, memories: int, device=None, hosts=None) -> dict:
        """Fresh rows; ``hosts[m]`` holds memory m's learned initial state, if it has one."""
        raise NotImplementedError

    def run_rows(self, ops, cfg, q, k, v, gates: dict, state, n, final: bool) -> tuple:
        """One parallel pass over right-padded token lists [R, L, ...] of R = B*M rows, each continuing its own
        state (``state``: the mixer's state dict or None), ``n`` [R] valid lengths. Returns o [R, L, H, V] and,
        when ``final``, the new row entries of the state dict (shaped [B, M, ...] by the caller's reshape)."""
        raise NotImplementedError

    def step_row(self, ops, q, k, v, gates: dict, state: dict, m: int) -> tuple:
        """One token for memory m of every sequence: (o [B, H, V], new row state, old row state)."""
        raise NotImplementedError

    def finish_rows(self, states: list, state: dict, keep) -> dict:
        """The row entries after one token: per-memory states (kept only where routed) stacked along M."""
        raise NotImplementedError


def _entry(prefix: str, key: str) -> str:
    """A memory's state entry in a mixer's state dict: "memory" (or ``prefix``) for the matrix, "normalizer" (or
    "<prefix>_normalizer") for a part beside it (the mLSTM's, blocks/bias.py; a mini-batch memory's "pos")."""
    if key == "memory":
        return prefix or "memory"
    return f"{prefix}_{key}" if prefix else key


# entries a memory may hold beside its state: the mLSTM's normaliser and stabiliser (bias mlstm), a mini-batch
# memory's position in its mini-batch (kernels/minibatch.py)
EXTRA_STATE = ("normalizer", "stabilizer", "pos")


def _grouped(key, run):
    """Rows grouped by equal ``key`` [R], one ``run(rows) -> (o [r, ...], [per-row tensors [r, ...]])`` per group,
    reassembled in row order: (o [R, ...], [per-row tensors [R, ...]])."""
    rows_all, outs, extras = [], [], []
    for u in torch.unique(key).tolist():
        rows = (key == u).nonzero().flatten()
        o, ex = run(rows)
        rows_all.append(rows)
        outs.append(o)
        extras.append(ex)
    order = torch.cat(rows_all)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outs)[inv], [torch.cat(e)[inv] for e in zip(*extras)]
class Flat(Hierarchy):
    """one state per memory"""

    def init_state(self, cfg, batch_size, device=None, prefix="", host=None):
        out = {_entry(prefix, k): t for k, t in cfg.axes.bias.init_memory(cfg, batch_size, device, host).items()}
        if cfg.minibatch:
            out[_entry(prefix, "pos")] = 0
        return out

    def kernel_state(self, state, prefix=""):
        extra = {k: state[_entry(prefix, k)] for k in EXTRA_STATE if _entry(prefix, k) in state}
        base = state.get(prefix or "memory")
        return {"memory": base, **extra} if extra else base  # a dict for kernels whose state has several parts

    def state_entries(self, kstate, prefix=""):
        if isinstance(kstate, dict):
            return {_entry(prefix, k): t for k, t in kstate.items()}
        return {prefix or "memory": kstate}

    def state_numel(self, cfg, seq_len):
        return cfg.axes.structure.state_numel(cfg) + cfg.axes.bias.extra_state_numel(cfg)

    def recurrence_flops(self, cfg, seq_len):
        ax = cfg.axes
        if cfg.minibatch:
            return cfg.heads * minibatch_flops(cfg)
        return cfg.heads * (ax.bias.write_flops(cfg) + ax.retention.decay_flops(cfg) + ax.structure.read_flops(cfg))

    row_keys = ("memory",)

    def row_entries(self, cfg) -> tuple:
        return ("memory", "pos") if cfg.minibatch else self.row_keys

    def init_rows(self, cfg, batch_size, memories, device=None, hosts=None):
        structure = cfg.axes.structure
        if not cfg.minibatch:
            return {"memory": torch.zeros(batch_size, memories, *structure.state_shape(cfg), device=device,
                                          dtype=torch.float32)}
        hosts = hosts or [None] * memories
        return {"memory": torch.stack([structure.init_state(cfg, batch_size, device, h) for h in hosts], 1),
                "pos": torch.zeros(batch_size, memories, device=device, dtype=torch.long)}

    def run_rows(self, ops, cfg, q, k, v, gates, state, n, final):
        R = q.shape[0]
        if cfg.minibatch:
            return self._run_minibatch_rows(ops, cfg, q, k, v, gates, state, n, final)
        init = None if state is None else state["memory"].reshape(R, *state["memory"].shape[2:])
        o, S = ops.forward(cfg.path, q, k, v, gates, initial_state=init, output_final_state=final,
                           chunk_size=cfg.chunk_size)
        return o, ({"memory": S} if final else {})

    @staticmethod
    def _run_minibatch_rows(ops, cfg, q, k, v, gates, state, n, final):
        """Rows in the same phase of their mini-batches (position mod chunk_size) share a kernel call (one group
        without a state); with final states also the same length (trailing padding would move the weights: the
        momentum keeps acting). Final entries: memory [R, H, P] and positions [R]."""
        R, L = q.shape[:2]
        C = cfg.chunk_size
        if state is None:
            pos0, mem0 = torch.zeros(R, dtype=torch.long, device=q.device), None
        else:
            pos0, mem0 = state["pos"].reshape(R), state["memory"].reshape(R, *state["memory"].shape[2:])
        statics = gates.get("statics", {})

        def run(rows):
            length = int(n[rows[0]]) if final else int(n[rows].max())
            init = None if mem0 is None else {"memory": mem0[rows], "pos": int(pos0[rows[0]]) % C}
            sel = {name: None if t is None else t[rows, :length] for name, t in gates.items() if name != "statics"}
            sel["statics"] = {name: t[rows] for name, t in statics.items()}
            o, st = ops.forward(cfg.path, q[rows, :length], k[rows, :length], v[rows, :length], sel,
                                initial_state=init, output_final_state=final, chunk_size=C)
            return F.pad(o, (0, 0, 0, 0, 0, L - length)), ([st["memory"]] if final else [])

        key = (pos0 % C) * (L + 1) + (n if final else 0)
        o, ex = _grouped(key, run)
        return o, ({"memory": ex[0], "pos": pos0 + n} if final else {})

    def step_row(self, ops, q, k, v, gates, state, m):
        S_old = state["memory"][:, m]
        if "pos" in state:  # a mini-batch memory at its own position
            o, new = ops.rows_step(q, k, v, **gates, state={"memory": S_old, "pos": state["pos"][:, m]})
            return o, new["memory"], S_old
        o, S_new = ops.step(q, k, v, **gates, state=S_old)
        return o, S_new, S_old

    def finish_rows(self, states, state, keep):
        out = {"memory": torch.stack(states, 1)}
        if "pos" in state:
            out["pos"] = state["pos"] + keep.long()
        return out


def minibatch_flops(cfg) -> int:
    """Forward FLOPs of one token of one head of a mini-batch memory, in its token-by-token form (2 per
    multiply-add; P the memory's weight entries, a bias entry counted like a weight; n_l = d_in * d_out of a dense
    layer, d of an elementwise one):
        the read: 2 P (the memory's forward on the query)
        each gradient (omega_window of them per token, else one): its forward 2 P, the back-propagation of the
            errors through layers 2..L sum 2 n_l, the outer products accumulated into the update 2 P
        the retention decay P (a gated retention); momentum: eta S and W + S, 2 P; newton_schulz: eta S, P,
            then per weight matrix ns_steps * (4 r^2 c + 2 r^3) (r <= c its dims), and W - theta NS(S), 2 P
        TTT's token scale: the read's weights W_a + c (W - W_a), 3 P
    Norms, activations, the loss' psi, the retention map Phi and the gates' nonlinearities are ignored."""
    from .dispatch import spec_of

    spec = spec_of(cfg)
    P = sum(math.prod(shape) for shape in _shapes(spec))
    back = sum((lay.d_out if lay.diag else lay.d_in * lay.d_out) for lay in spec.layers[1:])
    flops = 2 * P + spec.window * (2 * P + 2 * back + 2 * P)
    if cfg.axes.retention.gate is not None:
        flops += P
    if spec.update == "momentum":
        flops += 2 * P
    elif spec.update == "newton_schulz":
        flops += P + 2 * P
        for lay in spec.layers:
            if not lay.diag:
                r, c = sorted((lay.d_in, lay.d_out))
                flops += spec.ns_steps * (4 * r * r * c + 2 * r ** 3)
    if spec.token_scale:
        flops += 3 * P
    return flops


def _shapes(spec) -> list:
    from ..kernels.minibatch import tensor_shapes

    return [shape for _, _, shape in tensor_shapes(spec)]


def mean_levels_in_use(seq_len: int, levels: int) -> float:
    """(1/T) sum_{t=1..T} levels_in_use(t, levels): the level slots a decoding step touches, averaged.
    levels_in_use(t) = min(levels, bit_length(t-1) + 1) is constant on t-1 in [2**(m-1), 2**m)."""
    T = int(seq_len)
    if T <= 0:
        return 0.0
    total, lo, m = 1, 1, 1  # t-1 = 0 uses one slot; then t-1 in [lo, 2*lo) uses min(levels, m+1)
    while lo <= T - 1:
        hi = min(2 * lo, T)  # t-1 in [lo, hi)
        total += (hi - lo) * min(levels, m + 1)
        lo, m = 2 * lo, m + 1
    return total / T


def _levels_in_use(pos: int, levels: int) -> int:
    from ..kernels.log_linear import levels_in_use

    return levels_in_use(pos, levels)


class LogLinear(Hierarchy):
    """Fenwick levels of states read with weights lambda = softplus(W_l x + b_l) (Guo et al. 2025)"""

    kernel = "log_linear"
    options = (
        Option("levels", int, 16, "log-linear levels (older tokens share the last level)", {"ge": 2, "le": 64},
               always=True),
    )

    def check(self, cfg):
        if cfg.levels < 1:
            return "levels", f"levels must be >= 1 for hierarchy 'log_linear', got {cfg.levels}"
        if cfg.chunk_size & (cfg.chunk_size - 1):
            return "chunk_size", f"hierarchy 'log_linear' needs a power-of-two chunk_size, got {cfg.chunk_size}"
        return None

    def add_params(self, host, cfg) -> None:
        """The level projection belongs to the query side (a Mixture-of-Memories shares it like q)."""
        host.level_proj = linear(cfg.d_model, cfg.heads * cfg.levels, bias=True)
        nn.init.constant_(host.level_proj.bias, math.log(math.expm1(1.0)))

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads * cfg.levels)]

    def extra_params(self, cfg) -> int:
        return cfg.heads * cfg.levels  # level_proj bias

    def read_inputs(self, host, cfg, x):
        return {"lam": F.softplus(host.level_proj(x)).view(*x.shape[:-1], cfg.heads, cfg.levels)}

    @staticmethod
    def _keys(prefix):
        return (f"{prefix}_levels", f"{prefix}_pos") if prefix else ("levels", "pos")

    def init_state(self, cfg, batch_size, device=None, prefix="", host=None):
        # no level in use before the first token
        levels, pos = self._keys(prefix)
        return {levels: torch.zeros(batch_size, cfg.heads, 0, cfg.state_key_dim, cfg.state_value_dim,
                                    device=device,
                                    dtype=torch.float32), pos: 0}

    def kernel_state(self, state, prefix=""):
        levels, pos = self._keys(prefix)
        return {"levels": state[levels], "pos": state[pos]}

    def state_entries(self, kstate, prefix=""):
        levels, pos = self._keys(prefix)
        return {levels: kstate["levels"], pos: kstate["pos"]}

    def state_numel(self, cfg, seq_len):
        return cfg.axes.structure.state_numel(cfg) * _levels_in_use(seq_len, cfg.levels)

    def recurrence_flops(self, cfg, seq_len):
        # per head and level slot in use (averaged over the T decoding positions): the transition (delta rule),
        # the decay and the read, plus one write; the level merges (amortised O(K*V) adds) are ignored
        ax, K, V = cfg.axes, cfg.state_key_dim, cfg.state_value_dim
        n = mean_levels_in_use(seq_len, cfg.levels)
        return cfg.heads * (2 * K * V + n * (ax.bias.transition_flops(cfg) + ax.retention.decay_flops(cfg)
                                             + ax.structure.read_flops(cfg)))

    row_keys = ("levels", "pos")

    def init_rows(self, cfg, batch_size, memories, device=None, hosts=None):
        # every level slot stored: the memories sit at different positions
        return {"levels": torch.zeros(batch_size, memories, cfg.heads, cfg.levels, cfg.state_key_dim,
                                      cfg.state_value_dim, device=device, dtype=torch.float32),
                "pos": torch.zeros(batch_size, memories, device=device, dtype=torch.long)}

    def run_rows(self, ops, cfg, q, k, v, gates, state, n, final):
        """A Fenwick level depends on the absolute position in the memory's own time, so rows are grouped by
        their starting position (one group when there is no state) and, when the final states are wanted, by
        their length as well (trailing padding would move old tokens up a level); one kernel call per group.
        Final entries: levels [R, H, levels, K, V] (every slot) and positions [R]."""
        R, L = q.shape[:2]
        H, K, V, Lv = cfg.heads, cfg.state_key_dim, cfg.state_value_dim, cfg.levels
        if state is None:
            pos0, levels0 = torch.zeros(R, dtype=torch.long, device=q.device), None
        else:
            pos0, levels0 = state["pos"].reshape(R), state["levels"].reshape(R, H, Lv, K, V)
        key = pos0 * (L + 1) + (n if final else 0)

        def run(rows):
            p0 = int(pos0[rows[0]])
            length = int(n[rows[0]]) if final else int(n[rows].max())
            init = None
            if levels0 is not None:
                init = {"levels": levels0[rows][:, :, :_levels_in_use(p0, Lv)], "pos": p0}

            def sel(t):
                return None if t is None else t[rows, :length]

            o, st = ops.forward(cfg.path, sel(q), sel(k), sel(v), {name: sel(t) for name, t in gates.items()},
                                initial_state=init, output_final_state=final, chunk_size=cfg.chunk_size)
            lv = [F.pad(st["levels"], (0, 0, 0, 0, 0, Lv - st["levels"].shape[2]))] if final else []
            return F.pad(o, (0, 0, 0, 0, 0, L - length)), lv

        o, ex = _grouped(key, run)
        if not final:
            return o, {}
        return o, {"levels": ex[0], "pos": pos0 + n}

    def step_row(self, ops, q, k, v, gates, state, m):
        # memory m of every sequence at its own position state["pos"][:, m]
        S_old = state["levels"][:, m]
        o, S_new = ops.rows_step(q, k, v, **gates, levels=S_old, pos=state["pos"][:, m])
        return o, S_new, S_old

    def finish_rows(self, states, state, keep):
        return {"levels": torch.stack(states, 1), "pos": state["pos"] + keep.long()}


HIERARCHY = Axis("hierarchy", "memory hierarchy", "none", {
    "none": Flat(),
    "log_linear": LogLinear(),
})
