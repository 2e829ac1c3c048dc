"""The exported SequenceModel as a transformers model (optional: defined only where transformers imports).

An export's config.json maps AutoConfig / AutoModelForCausalLM to ArchspaceConfig / ArchspaceForCausalLM, so the
directory loads with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. ``forward`` returns
next-token logits for every position (and a shifted cross-entropy ``loss`` when ``labels`` are given).

``model.generate(...)`` (transformers' GenerationMixin) works with the decoding state of blocks/generation.py as
its cache: each memory layer's fixed-size state and each attention layer's KV cache, returned by ``forward`` as
``cache`` and passed back with the next token only. The prompt is read in parallel, then one token per step, so
greedy ``generate`` gives the tokens of the export's own ``generate`` (blocks/generation.py). A recurrent state
cannot skip padding, so an ``attention_mask`` with zeros (a padded batch) is refused; generate prompts of different
lengths one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .model import SequenceModel
from .weights import model_config, rebuild_buffers

try:
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.utils import ModelOutput
except ImportError:  # transformers is optional: without it an export loads with torch alone (weights.load)
    PreTrainedModel = None

__all__ = ["PreTrainedModel"]

if PreTrainedModel is not None:
    __all__ += ["ArchspaceConfig", "ArchspaceForCausalLM", "ArchspaceCausalLMOutput"]

    @dataclass
    class ArchspaceCausalLMOutput(ModelOutput):
        """forward's output: logits [B, T, vocab], the shifted loss with labels, and with use_cache the decoding
        state after the last position (SequenceModel.step's state: per layer a memory state or a KV cache)."""

        loss: Optional[torch.FloatTensor] = None
        logits: Optional[torch.FloatTensor] = None
        cache: Optional[Any] = None

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

    class ArchspaceForCausalLM(PreTrainedModel, GenerationMixin):
        """The SequenceModel's modules at the top level, so the parameter names are those of model.safetensors."""

        config_class = ArchspaceConfig
        base_model_prefix = "archspace"
        main_input_name = "input_ids"
        _no_split_modules = ["Layer"]
        _supports_cache_class = False
        _is_stateful = True  # the cache is a recurrent state: it cannot be rolled back (assisted decoding)

        @classmethod
        def _supports_default_dynamic_cache(cls) -> bool:
            return False  # generate must not make a DynamicCache: the cache is the model's own decoding state

        def __init__(self, config):
            super().__init__(config)
            core = SequenceModel(model_config(config.archspace))
            self.cfg = core.cfg
            for name, child in core.named_children():
                self.add_module(name, child)
            for name, param in core.named_parameters(recurse=False):  # model-level ones (HGRN2's shared bounds)
                self.register_parameter(name, param)
            self._bound_layers, self._vres_layers = core._bound_layers, core._vres_layers
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

        def layer_inputs(self):
            return SequenceModel.layer_inputs(self)

        def step(self, token_ids, state=None):
            self._fix_buffers()
            return SequenceModel.step(self, token_ids, state)

        def hidden_states(self, input_ids, state=None, return_state=False):
            """SequenceModel.forward (final-normed hidden states, and the decoding state when return_state)."""
            self._fix_buffers()
            return SequenceModel.forward(self, input_ids, state, return_state)

        def forward(self, input_ids=None, attention_mask=None, labels=None, cache=None, use_cache=None,
                    past_key_values=None, **kwargs):
            """input_ids [B, T] -> logits [B, T, vocab]. With ``cache`` (the state of an earlier call) the tokens
            continue that sequence, one step each; with ``use_cache`` the state after the last token is returned
            as ``cache``. (``past_key_values``: the same, as older transformers name it.)"""
            _refuse_padding(attention_mask)
            state = cache if cache is not None else past_key_values
            if state is not None:
                steps = []
                for t in range(input_ids.shape[1]):
                    step_logits, state = self.step(input_ids[:, t], state)
                    steps.append(step_logits)
                logits = torch.stack(steps, dim=1)
            elif use_cache:
                hidden, state = self.hidden_states(input_ids, return_state=True)
                logits = self.logits(hidden)
            else:
                logits = self.logits(self.hidden_states(input_ids))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                    ignore_index=-100)
            return ArchspaceCausalLMOutput(loss=loss, logits=logits, cache=state if use_cache else None)

        # GenerationMixin: the whole prompt first, then only the newest token with the state so far.
        def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                          use_cache=True, **kwargs):
            state = cache if cache is not None else past_key_values
            _refuse_padding(attention_mask)
            if state is not None:
                input_ids = input_ids[:, -1:]
            return {"input_ids": input_ids, "cache": state, "use_cache": True}

        def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                                num_new_tokens=1, **kwargs):
            model_kwargs["cache"] = outputs.cache
            model_kwargs.pop("past_key_values", None)
            mask = model_kwargs.get("attention_mask")
            if mask is not None:
                model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], num_new_tokens))], -1)
            return model_kwargs

    def _refuse_padding(attention_mask) -> None:
        if attention_mask is not None and not bool(torch.all(attention_mask != 0)):
            raise ValueError(
                "attention_mask has zeros (padding): an archspace model reads every token into its recurrent "
                "state, so padded positions cannot be skipped. Pass prompts without padding (one length per batch, "
                "or one prompt at a time)")
