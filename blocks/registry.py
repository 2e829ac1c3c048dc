"""Grammar name -> block class. One explicit table; no import-time discovery."""
from __future__ import annotations

from .attention import Attention
from .config import Cost
from .conv import ConvMixer
from .memory import MemoryMixer
from .moe import MoEMLP
from .mom import MoMMixer
from .swiglu import SwiGLU
from .titans import TitansMixer

__all__ = ["BLOCKS", "UnknownBlockError", "block_class", "build_block", "block_cost"]

BLOCKS: dict[str, type] = {
    "memory": MemoryMixer,
    "attention": Attention,
    "conv": ConvMixer,
    "mom": MoMMixer,
    "swiglu": SwiGLU,
    "titans": TitansMixer,
    "moe": MoEMLP,
}


class UnknownBlockError(KeyError):
    """Raised for a block kind that is not in ``BLOCKS`` (a KeyError, readable message)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def block_class(kind: str) -> type:
    try:
        return BLOCKS[kind]
    except KeyError:
        raise UnknownBlockError(f"unknown block kind {kind!r}; valid names: {', '.join(sorted(BLOCKS))}") from None


def build_block(cfg):
    """Instantiate the block named by ``cfg.kind`` from its config."""
    kind = getattr(cfg, "kind", None)
    return block_class(kind)(cfg)


def block_cost(cfg, seq_len: int) -> Cost:
    """Analytic cost of the block named by ``cfg.kind`` (no instantiation)."""
    return block_class(getattr(cfg, "kind", None)).cost(cfg, seq_len)
