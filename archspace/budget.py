"""Training budgets: the steps of a token or FLOP budget, and what a run spends.

    train: {tokens: 2e6, batch_size: 16}     # steps = ceil(2e6 / (16 x sequence length))
    train: {flops: 1e12, batch_size: 16}     # steps = ceil(1e12 / (training FLOPs per token x 16 x sequence length))

Training FLOPs per token are TRAIN_FLOPS_FACTOR = 3 times the forward FLOPs per token of archspace's accounting
(`archspace.blocks` Cost, 2 FLOPs per multiply-add, at the task's training length): the backward pass costs about
twice the forward (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1; Hoffmann et al. 2022,
appendix F). For a dense transformer's weight matmuls that is the familiar 6N; here it is counted per architecture:
attention's length-dependent term, the memory mixers' state updates, routed blocks' active parameters and the
output head all enter.

The sequence length of a step is the task's training length (the longest of an MQAR mixture). The cosine or linear
schedule decays over the derived steps, so the learning-rate schedule follows each budget (as Hoffmann et al.
matched the cosine cycle to the number of training tokens). An explicit `max_steps` beside a budget caps the steps;
every run logs the tokens it trained and the FLOPs it spent (`tokens`, `train_flops`), which is what a scaling fit
reads.
"""
from __future__ import annotations

import math

TRAIN_FLOPS_FACTOR = 3  # forward + backward = 3 x forward


def embedding_params(model) -> int:
    """Parameters of the token embedding, plus the output head when it is not tied to it (`ModelConfig`)."""
    return model.vocab_size * model.d_model * (1 if model.tie_embeddings else 2)


def train_flops_per_token(forward_flops_per_token: float) -> float:
    return TRAIN_FLOPS_FACTOR * float(forward_flops_per_token)


def budget_steps(train: dict, model, task: dict) -> int:
    """Optimizer steps of the budget in a (validated) train section; `max_steps` when it sets none."""
    from .grammar import task_seq_len

    tokens_per_step = train["batch_size"] * task_seq_len(task)
    if train.get("tokens") is not None:
        return max(1, math.ceil(train["tokens"] / tokens_per_step))
    if train.get("flops") is not None:
        from .blocks.model import SequenceModel  # torch: only for designs that set a FLOP budget

        per_token = train_flops_per_token(SequenceModel.cost_of(model, task_seq_len(task)).flops_per_token)
        return max(1, math.ceil(train["flops"] / (per_token * tokens_per_step)))
    return int(train["max_steps"])


def apply_budget(train: dict, model, task: dict, max_steps_given: bool) -> dict:
    """The resolved train section: `max_steps` derived from `tokens` or `flops` (capped by a given max_steps)."""
    if train.get("tokens") is None and train.get("flops") is None:
        return train
    steps = budget_steps(train, model, task)
    return {**train, "max_steps": min(steps, train["max_steps"]) if max_steps_given else steps}
