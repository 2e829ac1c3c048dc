"""MAD benchmark settings as data (numpy- and torch-free: the grammar imports it).

MAD (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures",
https://arxiv.org/abs/2403.17844) scores an architecture on six synthetic tasks. Each task has a
baseline setting and a difficulty grid; every grid entry changes one baseline value. Every setting
is trained with each (learning rate, weight decay) of SWEEP; a setting's result is its best test
accuracy over the sweep, the task's score the mean over its settings, and the MAD score the mean
over tasks. 66 settings in all (11 + 14 + 11 + 13 + 11 + 6).
"""
from __future__ import annotations

from typing import Any, Optional

#: task name (the `name:` of a task section) -> short label used in tables and slice names.
TASKS: dict[str, str] = {
    "mad_in_context_recall": "in_context_recall",
    "mad_fuzzy_in_context_recall": "fuzzy_in_context_recall",
    "mad_noisy_in_context_recall": "noisy_in_context_recall",
    "mad_selective_copying": "selective_copying",
    "mad_compression": "compression",
    "mad_memorization": "memorization",
}

_TRAIN_SIZES = [6400, 3200, 1600, 800]

#: Baseline parameters (the values MADConfig passes; the test set is always 1,280 examples).
BASELINES: dict[str, dict[str, Any]] = {
    "mad_in_context_recall": dict(vocab_size=16, seq_len=128, num_train_examples=12800),
    "mad_fuzzy_in_context_recall": dict(vocab_size=16, seq_len=128, num_train_examples=12800,
                                        k_motif_size=3, v_motif_size=3),
    "mad_noisy_in_context_recall": dict(vocab_size=32, seq_len=128, num_train_examples=12800,
                                        noise_vocab_size=16, frac_noise=0.2),
    "mad_selective_copying": dict(vocab_size=16, seq_len=256, num_train_examples=12800, num_tokens_to_copy=16),
    "mad_compression": dict(vocab_size=16, seq_len=32, num_train_examples=12800),
    "mad_memorization": dict(vocab_size=256, seq_len=32, num_train_examples=256),
}

#: Difficulty grid: each (key, value) replaces one baseline value.
GRIDS: dict[str, dict[str, list]] = {
    "mad_in_context_recall": dict(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024], num_train_examples=_TRAIN_SIZES),
    "mad_fuzzy_in_context_recall": dict(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024],
                                        num_train_examples=_TRAIN_SIZES),
    "mad_noisy_in_context_recall": dict(vocab_size=[48, 80, 144], seq_len=[256, 512, 1024],
                                        frac_noise=[0.4, 0.6, 0.8], num_train_examples=_TRAIN_SIZES),
    "mad_selective_copying": dict(vocab_size=[32, 64, 128], seq_len=[512, 1024], num_tokens_to_copy=[32, 64, 96],
                                  num_train_examples=_TRAIN_SIZES),
    "mad_compression": dict(vocab_size=[32, 64, 128], seq_len=[64, 128, 256], num_train_examples=_TRAIN_SIZES),
    "mad_memorization": dict(vocab_size=[512, 1024, 2048, 4096, 8192]),
}

#: MAD's optimiser sweep: every setting is trained with each pair.
SWEEP_LR: tuple[float, ...] = (1e-4, 5e-4, 1e-3)
SWEEP_WD: tuple[float, ...] = (0.0, 0.1)

NUM_TEST_EXAMPLES = 1280
MAD_SEED = 12345


def settings(task: str, which: str = "grid") -> list[tuple[str, dict[str, Any]]]:
    """[(label, task section without name)] for `which` = "baseline" (one) or "grid" (baseline + grid)."""
    if task not in BASELINES:
        raise ValueError(f"unknown MAD task {task!r}; tasks: {', '.join(BASELINES)}")
    if which not in ("baseline", "grid"):
        raise ValueError(f"settings must be 'baseline' or 'grid', got {which!r}")
    base = dict(BASELINES[task])
    out = [("baseline", base)]
    if which == "grid":
        for key, values in GRIDS[task].items():
            for v in values:
                out.append((f"{key}={v}", {**base, key: v}))
    return out


def check_params(task: dict[str, Any]) -> Optional[tuple[str, str]]:
    """First cross-key problem of a MAD task section as (key, message), or None."""
    name, V, T = task["name"], task["vocab_size"], task["seq_len"]
    if name in ("mad_in_context_recall", "mad_noisy_in_context_recall", "mad_memorization") and T % 2:
        return "seq_len", f"seq_len {T} must be even (two-token slots)"
    if name == "mad_in_context_recall" and V < 4:
        return "vocab_size", f"vocab_size {V} leaves no room for keys [0, V/2) and values [V/2, V)"
    if name == "mad_noisy_in_context_recall":
        n = V - task["noise_vocab_size"]
        if n < 4:
            return "vocab_size", (f"vocab_size {V} minus noise_vocab_size {task['noise_vocab_size']} must be >= 4 "
                                  "(keys and values below the noise ids)")
    if name == "mad_fuzzy_in_context_recall":
        m = V - 1
        k, v = task["k_motif_size"], task["v_motif_size"]
        if m // 2 < k:
            return "k_motif_size", f"k_motif_size {k} exceeds the {m // 2} key ids of vocab_size {V}"
        if m - m // 2 < v:
            return "v_motif_size", f"v_motif_size {v} exceeds the {m - m // 2} value ids of vocab_size {V}"
        if T < 4 * (k + v):
            return "seq_len", f"seq_len {T} must be >= 4 * (k_motif_size + v_motif_size) = {4 * (k + v)}"
    if name == "mad_selective_copying":
        n = task["num_tokens_to_copy"]
        if V < 3:
            return "vocab_size", f"vocab_size {V} needs data ids plus the blank and copy ids (>= 3)"
        if T < 2 * n + 1:
            return "num_tokens_to_copy", f"num_tokens_to_copy {n} needs seq_len >= {2 * n + 1}, got {T}"
    if name == "mad_memorization" and (V - 1) // 2 < 1:
        return "vocab_size", f"vocab_size {V} leaves no key ids"
    return None
