"""Mixture-of-Experts SwiGLU channel mixer (Linear-MoE, Sun et al. 2025, https://arxiv.org/abs/2503.05447;
routing as in Switch / GShard: Fedus et al. 2021, https://arxiv.org/abs/2101.03961, Lepikhin et al. 2020).

Shape legend: N tokens (all leading dims flattened, in row-major order), D model width, E experts,
F = cfg.hidden (expert width), k = cfg.top_k.

forward(x [..., D]) -> [..., D], position-wise (serves decoding steps too):
    1. router: p = softmax(W_r x) [N, E] (W_r: D -> E, no bias; softmax in fp32)
    2. the top_k experts per token, weights w = p_topk / sum(p_topk) (renormalised over the chosen)
    3. capacity (cfg.capacity = c, None = unlimited): expert e takes at most ceil(c * N * k / E)
       assignments, first come first served in flattened order (token n before token n+1; a token
       picks an expert at most once). An assignment over capacity is dropped for that expert only:
       the token keeps its other experts' terms with their weights unchanged (no renormalisation).
    4. y = sum over kept assignments (e, w) of w * SwiGLU_e(x),
       SwiGLU_e(x) = W2_e (silu(W1_e x) * W3_e x), W1_e, W3_e: D -> F, W2_e: F -> D, no biases.
    Execution: the N*k assignments are sorted by expert; one gather + three matmuls + index_add per
    expert (a Python loop over experts, none over tokens).

Load balancing (Switch, eq. 4): aux_raw = E * sum_e f_e P_e with f_e = (assignments routed to e,
before the capacity drop) / (N * k) and P_e = mean_n p[n, e]; f is a constant, the gradient reaches
the router through P. Every forward sets ``self.aux_loss = cfg.aux_loss_weight * aux_raw`` (0-dim
tensor) and ``self.aux_loss_raw`` (float); a uniform router gives aux_raw = 1.

Accounting (``MoEMLP.cost``): params = D*E + E*3*D*F; active_params = D*E + k*3*D*F; state 0;
flops_per_token = 2*D*E (router) + k*6*D*F (the chosen experts; softmax, top-k and the capacity
bookkeeping ignored, dropped assignments still counted).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .axis import INIT_STD
from .config import Cost, MoEConfig

__all__ = ["MoEMLP"]


class MoEMLP(nn.Module):
    """[..., D] -> [..., D] top-k routed SwiGLU experts built from a ``MoEConfig``."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        D, Fh, E = cfg.d_model, cfg.hidden, cfg.experts
        self.router = nn.Linear(D, E, bias=False)
        self.w1 = nn.Parameter(torch.empty(E, Fh, D))  # [E, F, D], per expert an nn.Linear(D, F) weight
        self.w3 = nn.Parameter(torch.empty(E, Fh, D))
        self.w2 = nn.Parameter(torch.empty(E, D, Fh))
        for p in (self.router.weight, self.w1, self.w3, self.w2):
            nn.init.normal_(p, 0.0, INIT_STD)
        self.aux_loss = None
        self.aux_loss_raw = None

    @staticmethod
    def cost(cfg: MoEConfig, seq_len: int) -> Cost:
        D, Fh, E, k = cfg.d_model, cfg.hidden, cfg.experts, cfg.top_k
        expert = 3 * D * Fh
        return Cost(params=D * E + E * expert, state=0, flops_per_token=float(2 * D * E + k * 2 * expert),
                    active_params=D * E + k * expert)

    def capacity_limit(self, n_tokens: int):
        """Assignments one expert takes for a batch of ``n_tokens`` tokens (None = unlimited)."""
        c = self.cfg
        return None if c.capacity is None else math.ceil(c.capacity * n_tokens * c.top_k / c.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., D]; sets self.aux_loss / self.aux_loss_raw."""
        cfg = self.cfg
        E, k = cfg.experts, cfg.top_k
        xf = x.reshape(-1, cfg.d_model)  # [N, D]
        N = xf.shape[0]
        probs = torch.softmax(self.router(xf).float(), dim=-1)  # [N, E]
        top_p, top_e = probs.topk(k, dim=-1)  # [N, k]
        weights = top_p / top_p.sum(-1, keepdim=True)

        # load-balancing loss on the routing decisions (before capacity)
        counts = torch.bincount(top_e.reshape(-1), minlength=E).to(probs.dtype)  # [E]
        raw = E * ((counts / max(N * k, 1)) * probs.mean(0)).sum() if N > 0 else probs.sum()
        self.aux_loss = cfg.aux_loss_weight * raw
        self.aux_loss_raw = float(raw.detach())

        # assignments sorted by expert; the stable sort keeps flattened token order inside an expert
        flat_e = top_e.reshape(-1)  # [N*k], token-major
        order = torch.sort(flat_e, stable=True).indices
        sorted_e = flat_e[order]
        token = order // k
        w_sorted = weights.reshape(-1)[order]
        bins = torch.bincount(sorted_e, minlength=E)
        starts = torch.cumsum(bins, 0) - bins
        limit = self.capacity_limit(N)
        out = torch.zeros_like(xf)
        for e, (start, count) in enumerate(zip(starts.tolist(), bins.tolist())):
            if limit is not None:
                count = min(count, limit)  # first-come first-served in token order
            if count == 0:
                continue
            idx = token[start:start + count]
            xe = xf[idx]  # [n_e, D]
            he = F.silu(xe @ self.w1[e].t()) * (xe @ self.w3[e].t())  # [n_e, F]
            ye = he @ self.w2[e].t()  # [n_e, D]
            out.index_add_(0, idx, ye * w_sorted[start:start + count, None].to(ye.dtype))
        return out.view_as(x)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"experts={c.experts}, top_k={c.top_k}, hidden={c.hidden}, capacity={c.capacity}"
