"""Pre-norm residual layers and the whole sequence model.

Layer:  x = x + mixer(norm1(x)); x = x + mlp(norm2(x)) (the second half only when mlp is not None).
SequenceModel: token embedding -> layers -> final RMSNorm -> (``logits``) LM head, the head tied
to the embedding matrix when cfg.tie_embeddings.

HGRN2's learned lower bounds (retention hgrn2, learned_lower_bounds: true): the model holds one parameter
``lower_bounds`` G [n_layers, C] (C = H*K of those mixers, zeros at init), computes l = cumsum(softmax(G, 0)) -
softmax(G, 0)[0] once per forward (or step) and passes row i to layer i's mixer, for every such layer but
layer 0 (whose bound is 0: fla's HGRN2 skips it, and log 0 would put NaN into G's gradient).

RWKV-7's value residual (bias rwkv7, value_residual: true): the first such layer keeps its values v_1 and every
later one mixes them in through its own LoRA (added by the model: the first layer has none, as in RWKV-LM and
fla), v = lerp(v, v_1, sigmoid(v0 + LoRA(x_v))); one dict per forward (or step) carries v_1 between layers.

Decoding: ``init_state(B)`` gives one state per layer ({"mixer": <mixer state>}); ``step(ids, state)``
consumes one token per sequence and returns next-token logits. ``forward(ids, state, return_state=True)``
prefills.

Accounting:
    Layer.cost = mixer cost + mlp cost + the layer's RMSNorm gains (D per norm; norm FLOPs ignored).
    SequenceModel.cost = sum(layer_costs) + embedding (vocab*D) + head (vocab*D unless tied; tied
        counted once) + final norm (D) params; FLOPs add the LM head 2*D*vocab per token (the
        embedding lookup is free); state is the layers' state only. HGRN2's learned bounds add n_layers * C
        params; each value-residual mix (layers after the first) its LoRA's params and 2 * (D r + r H V) FLOPs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .axis import INIT_STD
from .config import Cost, LayerConfig, ModelConfig
from .norm import RMSNorm
from .registry import block_cost, build_block
from .retention import learned_lower_bounds

__all__ = ["Layer", "SequenceModel", "bound_layers", "value_residual_layers"]


def _layers_with(cfg: ModelConfig, key: str, width, what: str) -> tuple[list[int], int]:
    """(indices of the layers whose mixer has ``key`` on, their common ``width(mixer)``; 0 if none). Those mixers
    must agree on it (the grammar says so at the key)."""
    idx = [i for i, lc in enumerate(cfg.layers) if getattr(lc.mixer, key, False)]
    widths = {width(cfg.layers[i].mixer) for i in idx}
    if len(widths) > 1:
        raise ValueError(f"the mixers with {what} need one width, got {sorted(widths)}")
    return idx, (widths.pop() if widths else 0)


def bound_layers(cfg: ModelConfig) -> tuple[list[int], int]:
    """(indices of the layers whose mixer learns HGRN2's shared lower bounds, their width H*K); ([], 0) if none."""
    return _layers_with(cfg, "learned_lower_bounds", lambda m: m.heads * m.state_key_dim,
                        "HGRN2's shared lower bounds (H*K)")


def value_residual_layers(cfg: ModelConfig) -> list[int]:
    """Indices of the layers with RWKV-7's value residual (the first keeps v_1, the rest mix it in)."""
    return _layers_with(cfg, "value_residual", lambda m: m.heads * m.value_dim, "RWKV-7's value residual (H*V)")[0]


class Layer(nn.Module):
    def __init__(self, cfg: LayerConfig, norm_eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        d = cfg.mixer.d_model
        if cfg.mlp is not None and cfg.mlp.d_model != d:
            raise ValueError(f"mixer d_model {d} != mlp d_model {cfg.mlp.d_model}")
        self.norm1 = RMSNorm(d, norm_eps)
        self.mixer = build_block(cfg.mixer)
        if cfg.mlp is not None:
            self.norm2 = RMSNorm(d, norm_eps)
            self.mlp = build_block(cfg.mlp)
        else:
            self.norm2 = None
            self.mlp = None

    @staticmethod
    def cost(cfg: LayerConfig, seq_len: int) -> Cost:
        d = cfg.mixer.d_model
        c = block_cost(cfg.mixer, seq_len) + Cost(d, 0, 0.0)
        if cfg.mlp is not None:
            c = c + block_cost(cfg.mlp, seq_len) + Cost(d, 0, 0.0)
        return c

    def init_state(self, batch_size: int, device=None) -> dict:
        return {"mixer": self.mixer.init_state(batch_size, device)}

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False, **inputs):
        """``inputs``: model-level inputs of this layer's mixer (``SequenceModel.layer_inputs``), passed on."""
        mstate = None if state is None else state["mixer"]
        if return_state:
            h, mstate = self.mixer(self.norm1(x), mstate, return_state=True, **inputs)
        else:
            h = self.mixer(self.norm1(x), mstate, **inputs)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return (x, {"mixer": mstate}) if return_state else x

    def step(self, x: torch.Tensor, state: Optional[dict] = None, **inputs) -> tuple[torch.Tensor, dict]:
        """x [B, D] -> (x [B, D], new state)."""
        h, mstate = self.mixer.step(self.norm1(x), None if state is None else state["mixer"], **inputs)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, {"mixer": mstate}


class SequenceModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        for i, lc in enumerate(cfg.layers):
            if lc.mixer.d_model != cfg.d_model:
                raise ValueError(f"layer {i}: mixer d_model {lc.mixer.d_model} != model d_model {cfg.d_model}")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, 0.0, INIT_STD)
        self.layers = nn.ModuleList(Layer(lc, cfg.norm_eps) for lc in cfg.layers)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, 0.0, INIT_STD)
        self._bound_layers, width = bound_layers(cfg)
        if self._bound_layers:
            self.lower_bounds = nn.Parameter(torch.zeros(len(cfg.layers), width))
        self._vres_layers = value_residual_layers(cfg)
        for i in self._vres_layers[1:]:
            self.layers[i].mixer.add_value_residual()

    # ------------------------------------------------------------------ accounting
    def layer_costs(self, seq_len: int) -> list[Cost]:
        return [Layer.cost(lc, seq_len) for lc in self.cfg.layers]

    @staticmethod
    def cost_of(cfg: ModelConfig, seq_len: int) -> Cost:
        """Analytic model cost from the config alone (see the module docstring)."""
        total = Cost(0, 0, 0.0)
        for lc in cfg.layers:
            total = total + Layer.cost(lc, seq_len)
        V, D = cfg.vocab_size, cfg.d_model
        head_params = V * D * (1 if cfg.tie_embeddings else 2) + D  # embedding (+ untied head) + final norm
        idx, width = bound_layers(cfg)
        head_params += len(cfg.layers) * width if idx else 0  # HGRN2's shared lower bounds
        flops = float(2 * D * V)
        for i in value_residual_layers(cfg)[1:]:  # RWKV-7's value-residual mixes
            mixer = cfg.layers[i].mixer
            params, mix_flops = mixer.axes.bias.value_residual_cost(mixer)
            head_params, flops = head_params + params, flops + mix_flops
        return total + Cost(head_params, 0, flops)

    def cost(self, seq_len: int) -> Cost:
        return self.cost_of(self.cfg, seq_len)

    # ------------------------------------------------------------------ compute
    def aux_loss(self) -> Optional[torch.Tensor]:
        """Sum of the weighted auxiliary losses (MoE / MoM load balancing) of the last forward, or None.

        Routed blocks set ``self.aux_loss`` (a 0-dim tensor, already scaled by its weight) on every forward.
        """
        losses = [m.aux_loss for m in self.modules()
                  if m is not self and isinstance(getattr(m, "aux_loss", None), torch.Tensor)]
        return torch.stack(losses).sum() if losses else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] (final-normed) -> logits [..., vocab]."""
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return hidden @ w.t()

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None, return_state: bool = False):
        """input_ids [B, T] -> final-normed hidden states [B, T, D] (not logits).

        With ``return_state`` also returns the per-layer states after the sequence (prefill);
        ``state`` continues from an earlier one.
        """
        x = self.embed(input_ids)
        inputs = self.layer_inputs()
        new_states = []
        for i, layer in enumerate(self.layers):
            s = None if state is None else state[i]
            if return_state:
                x, s = layer(x, s, return_state=True, **inputs[i])
                new_states.append(s)
            else:
                x = layer(x, s, **inputs[i])
        h = self.norm(x)
        return (h, new_states) if return_state else h

    def layer_inputs(self) -> list[dict]:
        """Each layer's model-level mixer inputs for one forward (or step): {"lower_bound": l_i} for the layers that
        learn HGRN2's shared bounds (but layer 0); {"value_residual": carrier} for the layers with RWKV-7's value
        residual, one dict for all of them; else {}."""
        inputs = [{} for _ in self.layers]
        if self._bound_layers:
            bounds = learned_lower_bounds(self.lower_bounds)
            for i in self._bound_layers:
                if i > 0:
                    inputs[i]["lower_bound"] = bounds[i]
        carrier = {}
        for i in self._vres_layers:
            inputs[i]["value_residual"] = carrier
        return inputs

    def init_state(self, batch_size: int, device=None) -> list:
        device = device if device is not None else self.embed.weight.device
        return [layer.init_state(batch_size, device) for layer in self.layers]

    def step(self, token_ids: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """token_ids [B] -> (next-token logits [B, vocab], new state)."""
        if state is None:
            state = self.init_state(token_ids.shape[0], token_ids.device)
        x = self.embed(token_ids)
        inputs = self.layer_inputs()
        new_states = []
        for i, (layer, s) in enumerate(zip(self.layers, state)):
            x, s = layer.step(x, s, **inputs[i])
            new_states.append(s)
        return self.logits(self.norm(x)), new_states
