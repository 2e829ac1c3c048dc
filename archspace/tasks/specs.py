"""The YAML keys of each task section (what `task:` may hold), validated like the rest of the grammar.

Each spec is registered with its data module and sequence length in archspace/tasks/registry.py; the grammar
reads the registry. Torch-free (the validator imports this).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field, model_validator

from .. import yamlio
from ..specbase import Spec as _Spec


class SliceSpec(_Spec):
    seq_len: int = Field(ge=4, le=1 << 20)
    num_kv_pairs: int = Field(ge=1)
    num_examples: int = Field(ge=1)


def _default_train_slices() -> list[SliceSpec]:
    return [SliceSpec(seq_len=64, num_kv_pairs=4, num_examples=20000)]


def _default_test_slices() -> list[SliceSpec]:
    return [SliceSpec(seq_len=64, num_kv_pairs=4, num_examples=1000)]


class MQARTaskSpec(_Spec):
    """Multi-query associative recall (Zoology, Arora et al. 2023, https://arxiv.org/abs/2312.04927)."""

    name: Literal["mqar"] = Field("mqar", description="task name")
    vocab_size: int = Field(8192, ge=16, description="vocabulary: keys from the lower half, values from the upper")
    train: list[SliceSpec] = Field(default_factory=_default_train_slices, description="training mixture")
    test: list[SliceSpec] = Field(default_factory=_default_test_slices, description="test mixture (per-slice accuracy)")
    power_a: float = Field(0.01, gt=0, le=1, description="power-law exponent of query placement")
    random_non_queries: bool = Field(True, description="fill non-query positions with random tokens")
    repeat: int = Field(1, ge=1, le=8, description="JRT multi-pass (Arora et al. 2024): the key-value context is read "
                        "`repeat` times before the queries; labels only after the final pass")
    order: Literal["mixed", "curriculum"] = Field(
        "mixed", description="training order: `mixed` shuffles the whole train mixture (rows padded to its longest "
        "slice); `curriculum` trains on the slices one after another as listed (rows shuffled within a slice, "
        "batches cropped to the slice's length), each phase ceil(num_examples / batch_size) steps, then repeats")
    seed: int = Field(0, ge=0, description="data seed (train and test seeds never overlap)")


class _MADSpec(_Spec):
    """Common keys of the MAD synthetic tasks (Poli et al. 2024, https://arxiv.org/abs/2403.17844)."""

    vocab_size: int = Field(16, ge=4, le=1 << 20, description="vocabulary, special ids included")
    seq_len: int = Field(128, ge=4, le=1 << 20, description="sequence length (model input)")
    num_train_examples: int = Field(12800, ge=1, description="training examples (generated once)")
    num_test_examples: int = Field(1280, ge=1, description="test examples")
    seed: int = Field(12345, ge=0, description="data seed (train and test use distinct child seeds)")


class MADInContextRecallSpec(_MADSpec):
    """MAD in-context recall: key-value slots, the mapping fresh per example."""

    name: Literal["mad_in_context_recall"] = Field(description="task name")


class MADNoisyInContextRecallSpec(_MADSpec):
    """MAD noisy in-context recall: in-context recall with whole noise slots from the top noise ids."""

    name: Literal["mad_noisy_in_context_recall"] = Field(description="task name")
    vocab_size: int = Field(32, ge=8, le=1 << 20, description="vocabulary including the noise ids")
    noise_vocab_size: int = Field(16, ge=1, description="noise ids: the top ids of the vocabulary")
    frac_noise: float = Field(0.2, ge=0, lt=1, description="probability that a context slot is noise")


class MADFuzzyInContextRecallSpec(_MADSpec):
    """MAD fuzzy in-context recall: keys and values are tuples of 1..motif-size distinct ids."""

    name: Literal["mad_fuzzy_in_context_recall"] = Field(description="task name")
    k_motif_size: int = Field(3, ge=1, le=16, description="largest key tuple")
    v_motif_size: int = Field(3, ge=1, le=16, description="largest value tuple")
    unrecoverable: Literal["keep", "mask"] = Field(
        "keep", description="final pair whose key never occurred (MAD quirk): keep its targets (MAD) or mask them")


class MADSelectiveCopyingSpec(_MADSpec):
    """MAD selective copying: copy the data tokens scattered among blanks after the copy marker."""

    name: Literal["mad_selective_copying"] = Field(description="task name")
    seq_len: int = Field(256, ge=4, le=1 << 20, description="sequence length (model input)")
    num_tokens_to_copy: int = Field(16, ge=1, description="data tokens to copy")


class MADCompressionSpec(_MADSpec):
    """MAD compression: encode the sequence into the last state, decode every position (encoder-decoder readout)."""

    name: Literal["mad_compression"] = Field(description="task name")
    seq_len: int = Field(32, ge=2, le=1 << 20, description="sequence length (model input)")


class MADMemorizationSpec(_MADSpec):
    """MAD memorization: one fixed key-value map shared by all examples, learned in the weights."""

    name: Literal["mad_memorization"] = Field(description="task name")
    vocab_size: int = Field(256, ge=4, le=1 << 20, description="vocabulary, insert marker included")
    seq_len: int = Field(32, ge=2, le=1 << 20, description="sequence length (model input)")
    num_train_examples: int = Field(256, ge=1, description="training examples (generated once)")


class LMTaskSpec(_Spec):
    """Language modelling on local text: next-token loss at every position; val/ppl and val/bpb."""

    name: Literal["lm"] = Field(description="task name")
    corpus: Literal["stdlib", "files"] = Field(
        "stdlib", description="stdlib: the running Python's standard-library *.py sources (offline demo); files: `files`")
    files: list[str] = Field(default_factory=list, description="text/JSONL/parquet files or globs (relative to the cwd)")
    text_field: str = Field("text", description="JSONL key / parquet column holding the text")
    max_bytes: int = Field(4_000_000, ge=1000, description="read documents in sorted order up to this many bytes")
    tokenizer: Literal["bytes", "bpe"] = Field("bytes", description="bytes: 256 byte ids + specials; bpe: trained on the corpus")
    vocab_size: Optional[int] = Field(None, ge=16, le=1 << 20,
                                      description="bytes: 258 (fixed); bpe: target vocabulary (default 4096)")
    seq_len: int = Field(256, ge=2, le=1 << 20, description="tokens per training sequence")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="fraction of documents held out for validation")
    test_fraction: float = Field(0.05, gt=0, lt=1, description="fraction of documents held out for the final test")
    max_val_sequences: int = Field(64, ge=1, description="sequences scored at each validation and at the test")
    cache_dir: Optional[str] = Field(None, description="token cache (default $ARCHSPACE_CACHE or <results>/cache/lm)")
    seed: int = Field(0, ge=0, description="document split seed")

    @model_validator(mode="after")
    def _vocab(self):
        if self.tokenizer == "bytes":
            if self.vocab_size not in (None, 258):
                raise ValueError("the byte tokenizer has vocab_size 258 (256 bytes + <eos> + <pad>); leave it out")
            self.__dict__["vocab_size"] = 258
        elif self.vocab_size is None:
            self.__dict__["vocab_size"] = 4096
        if self.corpus == "files" and not self.files:
            raise ValueError("corpus: files needs a non-empty `files` list")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave documents to train on (sum below 1)")
        return self


def check_mqar(task: MQARTaskSpec, marks: yamlio.Marks) -> None:
    """Cross-key constraints of the MQAR generator (a validated section; errors at the section's keys)."""
    for split in ("train", "test"):
        for i, s in enumerate(getattr(task, split)):
            where = ("task", split, i)
            if s.seq_len % 2:
                raise marks.error(f"seq_len {s.seq_len} must be even (key/value pairs)", where + ("seq_len",))
            if 4 * s.num_kv_pairs > s.seq_len:
                raise marks.error(f"num_kv_pairs {s.num_kv_pairs} needs seq_len >= {4 * s.num_kv_pairs} "
                                  "(context plus query region)", where + ("num_kv_pairs",))
            if task.vocab_size <= s.seq_len:
                raise marks.error(f"vocab_size {task.vocab_size} must exceed seq_len {s.seq_len}",
                                  ("task", "vocab_size"))
            if s.num_kv_pairs >= task.vocab_size // 2 - 1:
                raise marks.error(f"num_kv_pairs {s.num_kv_pairs} exceeds the {task.vocab_size // 2 - 1} keys",
                                  where + ("num_kv_pairs",))
    if not task.train:
        raise marks.error("the training mixture is empty", ("task", "train"))
    if not task.test:
        raise marks.error("the test mixture is empty", ("task", "test"))


def check_mad(task: BaseModel, marks: yamlio.Marks) -> None:
    """Cross-key constraints of the MAD generators (archspace.tasks.mad.check_params holds the same rules)."""
    from .mad_params import check_params  # numpy-free rules shared with the generators

    problem = check_params(task.model_dump())
    if problem is not None:
        key, msg = problem
        raise marks.error(msg, ("task", key))


def lm_file_matches(pattern: str) -> list[str]:
    """The paths one `task.files` entry of the lm task names: a glob's matches in sorted order, else itself."""
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) or [pattern]


def check_lm(task: LMTaskSpec, marks: yamlio.Marks) -> None:
    """Every corpus entry names a file now, not after minutes of tokenising the others."""
    if task.corpus != "files":
        return
    for i, pattern in enumerate(task.files):
        missing = [m for m in lm_file_matches(pattern) if not Path(m).is_file()]
        if missing:
            raise marks.error(f"no such corpus file {missing[0]!r}", ("task", "files", i),
                              hint=f"Relative paths and globs are taken from the current folder ({Path.cwd()}).")


class _StateTrackingSpec(_Spec):
    """Common keys of the state-tracking tasks (archspace/tasks/state_tracking.py): group word problems, trained on
    short sequences and tested on longer ones."""

    train_lengths: list[int] = Field(default_factory=lambda: [3, 40], min_length=2, max_length=2,
                                     description="[lo, hi]: training lengths, uniform in lo..hi")
    test_lengths: list[int] = Field(default_factory=lambda: [40, 64, 128, 256], min_length=1,
                                    description="validation and test lengths, one slice each (len<L>)")
    num_train_examples: int = Field(20000, ge=1, description="training sequences (generated once)")
    num_test_examples: int = Field(500, ge=1, description="validation and test sequences per length")
    train_labels: Literal["all", "final"] = Field(
        "all", description="training targets: the prefix product at every position (all) or at the last (final)")
    eval_labels: Literal["final", "all"] = Field(
        "final", description="validation and test targets: final (a slice's accuracy is the fraction of sequences whose "
        "whole product is right) or all")
    vocab_size: Optional[int] = Field(None, ge=2, description="|G| (derived; must equal it if given)")
    seed: int = Field(0, ge=0, description="data seed (train, validation and test use distinct child seeds)")

    def _order(self) -> int:
        raise NotImplementedError

    @model_validator(mode="after")
    def _vocab(self):
        if self.vocab_size is None:  # a wrong one is refused at its key by check_state_tracking
            self.__dict__["vocab_size"] = self._order()
        return self


class ParitySpec(_StateTrackingSpec):
    """Parity (Z_2 word problem): bits in, the parity of the ones so far out."""

    name: Literal["parity"] = Field(description="task name")

    def _order(self) -> int:
        return 2


class ModularAdditionSpec(_StateTrackingSpec):
    """Modular addition (Z_m word problem): residues in, the running sum mod m out."""

    name: Literal["modular_addition"] = Field(description="task name")
    modulus: int = Field(5, ge=2, le=4096, description="m")

    def _order(self) -> int:
        return self.modulus


class PermutationSpec(_StateTrackingSpec):
    """Permutation composition (S_3 or S_5 word problem): permutations in, their running composition out."""

    name: Literal["permutation"] = Field(description="task name")
    group: Literal["s3", "s5"] = Field("s5", description="S_3 (6 elements, solvable) or S_5 (120, not solvable)")

    def _order(self) -> int:
        return {"s3": 6, "s5": 120}[self.group]


def check_state_tracking(task: BaseModel, marks: yamlio.Marks) -> None:
    """Cross-key constraints of the state-tracking generators."""
    order = task._order()
    if task.vocab_size != order:
        raise marks.error(f"vocab_size {task.vocab_size}: this task's vocabulary is its group's {order} elements; "
                          "leave vocab_size out", ("task", "vocab_size"))
    lo, hi = task.train_lengths
    if lo < 1 or hi < lo:
        raise marks.error(f"train_lengths [{lo}, {hi}] must be [lo, hi] with 1 <= lo <= hi", ("task", "train_lengths"))
    for i, L in enumerate(task.test_lengths):
        if L < 1:
            raise marks.error(f"test length {L} must be >= 1", ("task", "test_lengths", i))
