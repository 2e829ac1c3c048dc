"""Memory structure axis (``structure:``): what one memory is. See blocks/axis.py for what a value owns.

matrix  S in R^{K x V} per head, kept in fp32 (the linear-attention family); read o = scale * S^T q, with K the
        feature map's width and V the value width (+1: the sum normaliser's column), cfg.state_key_dim and
        cfg.state_value_dim.
"""
from __future__ import annotations

from .axis import Axis, AxisValue, torch


class Structure(AxisValue):
    """A memory structure: the state of one memory and how a query reads it."""

    def state_shape(self, cfg) -> tuple:
        """Shape of one memory's state per sequence (without the batch dim)."""
        raise NotImplementedError

    def state_numel(self, cfg) -> int:
        n = 1
        for d in self.state_shape(cfg):
            n *= d
        return n

    def init_state(self, cfg, batch_size: int, device=None):
        return torch.zeros(batch_size, *self.state_shape(cfg), device=device, dtype=torch.float32)

    def read(self, cfg, state, q):
        """Read a fixed state with queries q [B, L, H, K] -> [B, L, H, V] (no write; Titans' memory as context)."""
        raise NotImplementedError

    def read_flops(self, cfg) -> int:
        """FLOPs of one read, per head."""
        raise NotImplementedError


class Matrix(Structure):
    """a matrix S in R^{K x V} per head"""

    def state_shape(self, cfg) -> tuple:
        return (cfg.heads, cfg.state_key_dim, cfg.state_value_dim)

    def read(self, cfg, state, q):
        # K**-0.5 as the kernels apply it (blocks/memory.py's query path folds cfg.scale into q)
        return cfg.state_key_dim ** -0.5 * torch.einsum("bhkv,blhk->blhv", state, q.float())

    def read_flops(self, cfg) -> int:
        return 2 * cfg.state_key_dim * cfg.state_value_dim


STRUCTURE = Axis("structure", "memory structure", "matrix", {
    "matrix": Matrix(),
})
