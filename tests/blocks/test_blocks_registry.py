from __future__ import annotations

import ast
import pathlib
import sys

import pytest

from archspace.blocks import registry
from archspace.blocks.attention import Attention
from archspace.blocks.config import AttentionConfig, MemoryConfig, SwiGLUConfig
from archspace.blocks.conv import ConvMixer
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.moe import MoEMLP
from archspace.blocks.mom import MoMMixer
from archspace.blocks.registry import BLOCKS, UnknownBlockError, block_cost, build_block
from archspace.blocks.swiglu import SwiGLU
from archspace.blocks.titans import TitansMixer


def test_table():
    assert BLOCKS == {"memory": MemoryMixer, "attention": Attention, "conv": ConvMixer, "swiglu": SwiGLU,
                      "mom": MoMMixer, "titans": TitansMixer, "moe": MoEMLP}
    assert isinstance(build_block(MemoryConfig(8, 1, 4, 4)), MemoryMixer)
    assert isinstance(build_block(AttentionConfig(8, 2, 4)), Attention)
    assert isinstance(build_block(SwiGLUConfig(8, 16)), SwiGLU)
    assert block_cost(SwiGLUConfig(8, 16), 3) == SwiGLU.cost(SwiGLUConfig(8, 16), 3)


def test_unknown_name_lists_valid_names():
    class Fake:
        kind = "mamba3"

    with pytest.raises(KeyError) as exc:
        build_block(Fake())
    assert isinstance(exc.value, UnknownBlockError)
    msg = str(exc.value)
    assert "mamba3" in msg
    for name in ("attention", "memory", "swiglu"):
        assert name in msg
    with pytest.raises(KeyError):
        block_cost(Fake(), 4)


def test_blocks_import_only_torch():
    """blocks/ and kernels/ import torch and the standard library only (an export carries them with torch alone);
    transformers only inside try/except ImportError (the optional wrapper of blocks/hf.py); triton only in the
    Triton kernel files, which the dispatch imports when a layer runs on the triton path."""
    root = pathlib.Path(registry.__file__).parent
    for path in [*root.glob("*.py"), *(root.parent / "kernels").glob("*.py")]:
        tree = ast.parse(path.read_text())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:
                    continue  # relative: .config, ..kernels
                mods = [node.module]
            else:
                continue
            allowed_roots = {"torch", *sys.stdlib_module_names} | ({"transformers"} if id(node) in optional else set())
            if path.name.startswith("triton_"):
                allowed_roots.add("triton")  # the GPU kernels, imported by blocks/dispatch.py only on the triton path
            for m in mods:
                assert m.split(".")[0] in allowed_roots, f"{path.name} imports {m}"
