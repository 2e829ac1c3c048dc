"""The entry module of an archspace export (``archspace export`` copies it, with the blocks/ and kernels/ files it
reaches, flat into the export directory; only their relative imports are rewritten). Needs only torch.

    from modeling_archspace import load, generate     # with the export directory on sys.path
    model = load("path/to/export")                     # a SequenceModel with the exported weights, eval mode
    logits = model.logits(model(input_ids))            # [B, T] -> [B, T, vocab]
    out = generate(model, input_ids, max_new_tokens=16, greedy=True)

With transformers installed the directory also loads with AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True) (ArchspaceConfig / ArchspaceForCausalLM, blocks/hf.py).

The copied files import each other relatively, as inside archspace: imported as part of a package (inside
archspace, by transformers, or as ``DIR.modeling_archspace``) this module re-exports from its siblings; imported as
a top-level module (``sys.path.insert(0, DIR)``, ``python generate.py``) it first imports its directory as a
package under a private name.
"""
import os
import sys

__all__ = ["load", "generate", "main", "state_numel", "SequenceModel", "ModelConfig", "load_state", "model_config",
           "read_config", "read_safetensors"]

if __package__:
    from .config import ModelConfig
    from .generation import generate, main, state_numel
    from .hf import PreTrainedModel
    from .model import SequenceModel
    from .weights import load, load_state, model_config, read_config, read_safetensors

    if PreTrainedModel is not None:
        from .hf import ArchspaceConfig, ArchspaceForCausalLM

        __all__ += ["ArchspaceConfig", "ArchspaceForCausalLM"]
else:
    import hashlib
    import importlib
    import types

    def _import_directory_as_package():
        here = os.path.dirname(os.path.abspath(__file__))
        name = "_archspace_export_" + hashlib.sha256(here.encode()).hexdigest()[:12]
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [here]
            sys.modules[name] = package
        return importlib.import_module(name + ".modeling_archspace")

    _entry = _import_directory_as_package()
    globals().update({k: v for k, v in vars(_entry).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(main())
