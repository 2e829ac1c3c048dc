"""The exported SequenceModel as a transformers model (optional: defined only where transformers imports).

An export's config.json maps AutoConfig / AutoModelForCausalLM to ArchspaceConfig / ArchspaceForCausalLM, so the
directory loads with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. ``forward`` returns
next-token logits for every position (and a shifted cross-entropy ``loss`` when ``labels`` are given); decoding
goes through blocks/generation.py's ``generate``, which keeps each memory layer's state and each attention
layer's KV cache.
"""
from __future__ import annotations

import torch

from .model import SequenceModel
from .weights import model_config, rebuild_buffers

try:
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput
except ImportError:  # transformers is optional: without it an export loads with torch alone (weights.load)
    PreTrainedModel = None

__all__ = ["PreTrainedModel"]

if PreTrainedModel is not None:
    __all__ += ["ArchspaceConfig", "ArchspaceForCausalLM"]

    class ArchspaceConfig(PretrainedConfig):
        """config.json of an archspace export: the resolved design sits under "archspace"."""

        model_type = "archspace"

        def __init__(self, archspace=None, **kwargs):
            self.archspace = archspace or {}
            model = self.archspace.get("model") or {}
            kwargs.setdefault("vocab_size", model.get("vocab_size"))
            kwargs.setdefault("hidden_size", model.get("d_model"))
            kwargs.setdefault("num_hidden_layers", len(model.get("layers") or []))
            kwargs["tie_word_embeddings"] = False  # the archspace model reads its tied head itself
            super().__init__(**kwargs)

    class ArchspaceForCausalLM(PreTrainedModel):
        """The SequenceModel's modules at the top level, so the parameter names are those of model.safetensors."""

        config_class = ArchspaceConfig
        base_model_prefix = "archspace"
        main_input_name = "input_ids"
        _no_split_modules = ["Layer"]
        _supports_cache_class = False

        def __init__(self, config):
            super().__init__(config)
            core = SequenceModel(model_config(config.archspace))
            self.cfg = core.cfg
            for name, child in core.named_children():
                self.add_module(name, child)
            self.lm_head = core.lm_head
            self.post_init()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            loaded = super().from_pretrained(*args, **kwargs)
            (loaded[0] if isinstance(loaded, tuple) else loaded)._rebuild_buffers()
            return loaded

        def _init_weights(self, module):
            pass  # every weight comes from model.safetensors

        def _rebuild_buffers(self):
            # transformers creates the model on the meta device and then fills only what the checkpoint holds
            rebuild_buffers(self, self.embed.weight.device)
            self._archspace_buffers_ok = True

        def _fix_buffers(self):
            if not getattr(self, "_archspace_buffers_ok", False):
                self._rebuild_buffers()

        def get_input_embeddings(self):
            return self.embed

        def set_input_embeddings(self, value):
            self.embed = value

        def logits(self, hidden):
            return SequenceModel.logits(self, hidden)

        def init_state(self, batch_size, device=None):
            return SequenceModel.init_state(self, batch_size, device)

        def step(self, token_ids, state=None):
            self._fix_buffers()
            return SequenceModel.step(self, token_ids, state)

        def hidden_states(self, input_ids, state=None, return_state=False):
            """SequenceModel.forward (final-normed hidden states, and the decoding state when return_state)."""
            self._fix_buffers()
            return SequenceModel.forward(self, input_ids, state, return_state)

        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            logits = self.logits(self.hidden_states(input_ids))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                    ignore_index=-100)
            return CausalLMOutput(loss=loss, logits=logits)
