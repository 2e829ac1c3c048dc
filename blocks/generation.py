"""Generation with a SequenceModel (or the transformers wrapper of blocks/hf.py), torch only, and the command
line of an export (``python generate.py --prompt 3,17,5``).

Decoding keeps a recurrent state per memory layer (constant size) and a KV cache per attention layer
(SequenceModel.step); the prompt is consumed in parallel (forward with return_state) or token by token.
"""
from __future__ import annotations

import argparse
import os

import torch

__all__ = ["generate", "state_numel", "main"]


def state_numel(state) -> int:
    """Numbers held in a decoding state (floating-point tensors only; counters such as the KV cache's or a
    log-linear memory's position, ints or integer tensors, are not numbers)."""
    if isinstance(state, torch.Tensor):
        return state.numel() if state.is_floating_point() else 0
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    return 0


def _pick(logits, greedy: bool, temperature: float, top_k, generator):
    if greedy:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens=32, greedy=True, temperature=1.0, top_k=None, generator=None,
             prefill="parallel", return_state=False):
    """Continue input_ids [B, T] (or a list of ids) by max_new_tokens tokens; returns [B, T + new] (and the
    decoding state when ``return_state``). ``model``: a SequenceModel, or a wrapper with the same logits /
    step / init_state and a ``hidden_states`` method in place of SequenceModel's forward (blocks/hf.py)."""
    run = getattr(model, "hidden_states", model)  # the wrapper's own forward returns transformers outputs
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.embed.weight.device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[1] < 1:
        raise ValueError("generate needs a prompt of at least one token")
    if prefill == "parallel":
        hidden, state = run(ids, return_state=True)
        logits = model.logits(hidden[:, -1])
    elif prefill == "step":
        state = model.init_state(ids.shape[0], ids.device)
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
    else:
        raise ValueError(f"prefill must be 'parallel' or 'step', got {prefill!r}")
    out = [ids]
    for i in range(max_new_tokens):
        nxt = _pick(logits, greedy, temperature, top_k, generator)
        out.append(nxt[:, None])
        if i + 1 < max_new_tokens:
            logits, state = model.step(nxt, state)
    result = torch.cat(out, dim=1)
    return (result, state) if return_state else result


def main(argv=None) -> int:
    """`python generate.py --prompt 3,17,5 [--max-new-tokens 16] [--sample ...]` in an export directory."""
    from .weights import load

    p = argparse.ArgumentParser(description="Generate with an archspace export (torch only).")
    p.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)), help="the export directory")
    p.add_argument("--generate", "--prompt", dest="prompt", default="0", metavar="IDS",
                   help="prompt token ids, comma or space separated, e.g. 3,17,5 (default 0: a one-token prompt)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        ids = [int(x) for x in args.prompt.replace(",", " ").split()]
    except ValueError:
        p.error(f"--prompt takes token ids (integers), got {args.prompt!r}")
    if not ids:
        p.error("--prompt needs at least one token id")
    if args.max_new_tokens < 0:
        p.error(f"--max-new-tokens must be at least 0, got {args.max_new_tokens}")
    model = load(args.dir)
    vocab = model.embed.num_embeddings
    outside = [i for i in ids if not 0 <= i < vocab]
    if outside:  # the embedding lookup would fail with an IndexError traceback
        p.error(f"--prompt token id {outside[0]} is outside the model's vocabulary (ids 0..{vocab - 1})")
    g = torch.Generator().manual_seed(args.seed)
    out = generate(model, [ids], args.max_new_tokens, greedy=not args.sample, temperature=args.temperature,
                   top_k=args.top_k, generator=g)
    print(" ".join(str(t) for t in out[0, len(ids):].tolist()))
    return 0
