"""Weights and configs of an exported model, read with torch alone (no safetensors package, no archspace).

    read_safetensors(path) -> (tensors, metadata)     the safetensors format, parsed by hand
    load_state(model, path)                           load a safetensors file into a module
    read_config(dir) / model_config(config)           config.json and the ModelConfig of its resolved design
    load(dir)                                         the exported SequenceModel with its weights, in eval mode

The safetensors format (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header
length n, n bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then
the tensors' bytes, offsets relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct

import torch

from .config import ModelConfig
from .model import SequenceModel

__all__ = ["read_safetensors", "load_state", "read_config", "model_config", "load", "rebuild_buffers"]

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        if end > start:
            t = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors, metadata


def load_state(model, path):
    """Load a safetensors file written by safetensors' save_model (shared tensors stored once) into ``model``."""
    tensors, _ = read_safetensors(path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RuntimeError(f"{path}: tensors the model does not have: {unexpected}")
    if missing:
        # save_model drops all but one name of tensors that share storage: the missing ones must alias
        # a loaded tensor (they were filled by loading it).
        ptrs = {}
        for name, t in model.state_dict(keep_vars=True).items():
            ptrs.setdefault(t.data_ptr(), []).append(name)
        loaded = set(tensors)
        bad = [k for k in missing if not any(k in names and loaded & set(names) for names in ptrs.values())]
        if bad:
            raise RuntimeError(f"{path}: weights missing for {bad}")
    return model


def rebuild_buffers(model, device=None) -> None:
    """Compute the non-persistent buffers again (the RetNet decay: derived from the config, not in the weights
    file), e.g. after a loader that creates modules on the meta device and fills only what the file holds."""
    from .config import MemoryConfig

    for mod in model.modules():
        cfg = getattr(mod, "cfg", None)
        if isinstance(cfg, MemoryConfig) and hasattr(mod, "k_proj"):  # a module that owns a memory's write path
            for value in cfg.axes:
                value.add_buffers(mod, cfg, device)


def read_config(path="."):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def model_config(config) -> ModelConfig:
    """ModelConfig of config.json's resolved design (config: the parsed config.json or its "archspace")."""
    resolved = config.get("archspace", config)
    return ModelConfig.from_dict(resolved["model"])


def load(path=None, device=None, dtype=None):
    """The exported SequenceModel with its weights, in eval mode (path: the export directory, default the
    directory of this file)."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    model = SequenceModel(model_config(read_config(path)))
    load_state(model, os.path.join(path, "model.safetensors"))
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
