"""Mutation fuzz of every shipped YAML file through `archspace validate` (issue 17).

Each shipped design, space and task recipe is mutated many times (seeded, so every run tries the same
variants): lines deleted, duplicated, re-indented or cut; values replaced by other types; anchors and
aliases added (undefined, self-referencing, a bomb); control characters and invalid UTF-8 inserted; huge
and deeply nested documents. Every variant must either validate (exit 0) or be refused with exit 2 and
one paragraph that names the file (and the line, where the file was read), with no traceback, in under
2 CPU seconds and 200 MB. Memory is measured for every variant as the rise of the process's peak resident set
(Linux's VmHWM, reset before each variant through /proc/self/clear_refs, after freed heap is handed back with
malloc_trim so that memory the process already holds cannot hide an allocation); where the kernel or libc does not
offer that, tracemalloc measures every variant that ran longer than TRACE_ABOVE_S.

The variants of all files run in one fresh Python process (``fuzz_all``; each file's failures come back as its own
test's result): there the probe's malloc_trim is cheap, where a suite worker's large heap made it slow.

`ARCHSPACE_FUZZ_VARIANTS=N` tries N variants per file (default 24, 576 in all; the README's figure is from N=200, 4,800).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from archspace.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for folder in ("examples", "spaces", "studies")
                 for p in (ROOT / folder).rglob("*.yaml"))
VARIANTS = int(os.environ.get("ARCHSPACE_FUZZ_VARIANTS", "24"))
MAX_SECONDS, MAX_BYTES = 2.0, 200 << 20
# A run shorter than this (CPU seconds) cannot have allocated MAX_BYTES of Python objects (that takes well over a second),
# so only longer runs are repeated under tracemalloc to measure their peak.
TRACE_ABOVE_S = 0.1

WRONG_VALUES = ["abc", "-1", "0", "1e99", "-.inf", ".nan", "true", "null", "[]", "{}", "[1, [2, [3]]]",
                "{a: 1}", "'3:1'", "1:0", "x" * 300, "!!python/object:os.system ls", "!!binary aGVsbG8=",
                "2024-01-01", "0x1F", "0o17", "~", '"\\u0000"', "*undefined", "&a 1", "|\n  text"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\ufeff", "\ufffe", "\t", "\r"]


class PeakResident:
    """The peak resident memory of this process since ``reset``, in bytes, above what it held at the reset."""

    def __init__(self):
        self.libc = ctypes.CDLL("libc.so.6")
        self.reset()  # raises OSError where /proc/self/clear_refs cannot be written

    @staticmethod
    def _status(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) << 10

    def reset(self) -> None:
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base = self._status("VmRSS")

    def rise(self) -> int:
        return self._status("VmHWM") - self.base


def _peak_probe():
    try:
        return PeakResident()
    except (OSError, AttributeError):
        return None


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _value_line(rng: random.Random, lines: list[str]) -> int | None:
    idx = [i for i, ln in enumerate(lines) if re.match(r"^\s*[\w.\-]+:\s*\S", ln) and not ln.lstrip().startswith("#")]
    return rng.choice(idx) if idx else None


def mutate(text: str, rng: random.Random) -> str | bytes:
    """One random mutation of a YAML text (bytes when it is not valid UTF-8 any more)."""
    lines = _lines(text)
    i = rng.randrange(len(lines))
    op = rng.randrange(16)
    if op == 0:  # delete a line
        del lines[i]
    elif op == 1:  # duplicate a line (a duplicate key, or a repeated list item)
        lines.insert(i, lines[i])
    elif op == 2:  # broken indentation
        lines[i] = " " * rng.choice([1, 3, 5, 7]) + lines[i].lstrip() if rng.random() < 0.7 else lines[i].lstrip()
    elif op == 3:  # wrong type for a value
        j = _value_line(rng, lines)
        if j is not None:
            key, _, _ = lines[j].partition(":")
            lines[j] = f"{key}: {rng.choice(WRONG_VALUES)}"
    elif op == 4:  # delete a key with its block
        indent = len(lines[i]) - len(lines[i].lstrip())
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        del lines[i:j]
    elif op == 5:  # truncate the file
        return text[: rng.randrange(len(text) + 1)]
    elif op == 6:  # control character
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + rng.choice(CONTROL) + text[pos:]
    elif op == 7:  # invalid UTF-8
        data = text.encode()
        pos = rng.randrange(len(data) + 1)
        return data[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + data[pos:]
    elif op == 8:  # an anchor on a value and aliases to it elsewhere
        j, k = _value_line(rng, lines), _value_line(rng, lines)
        if j is not None and k is not None:
            key, _, value = lines[j].partition(":")
            lines[j] = f"{key}: &anc {value.strip()}"
            kk, _, _ = lines[k].partition(":")
            lines[k] = f"{kk}: *anc"
    elif op == 9:  # undefined or self-referencing alias
        j = _value_line(rng, lines)
        if j is not None:
            key, _, _ = lines[j].partition(":")
            lines[j] = rng.choice([f"{key}: *nowhere", f"{key}: &me [*me]", f"{key}: &me {{a: *me}}",
                                   f"{key}: &m {{<<: *m}}"])
    elif op == 10:  # an alias bomb at the top
        bomb = ['b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        bomb += [f"b{n}: &b{n} [" + ", ".join([f"*b{n - 1}"] * 8) + "]" for n in range(1, rng.randint(3, 10))]
        lines = bomb + lines
    elif op == 11:  # deep nesting
        d = rng.choice([20, 63, 70, 200])  # 5,000 levels: test_hostile_input.py
        j = _value_line(rng, lines)
        if j is not None:
            key, _, _ = lines[j].partition(":")
            lines[j] = f"{key}: " + rng.choice(["[" * d + "1" + "]" * d, "{a: " * d + "1" + "}" * d])
    elif op == 12:  # a huge document
        return text + "\n# " + "x" * rng.choice([48 << 10, (256 << 10) + 7]) + "\n"
    elif op == 13:  # many keys
        lines += [f"k{n}: {n}" for n in range(rng.choice([10, 2000]))]
    elif op == 14:  # a stray flow or block indicator
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + rng.choice(["[", "]", "{", "}", ": ", "- ", "? ", "&", "*", "!", "%", "@", "`", "'", '"',
                                        "\n---\n", "\n...\n", "#"]) + text[pos:]
    else:  # swap two lines
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def fuzz_all(out_file: str) -> None:
    """Fuzz every shipped file in this (fresh) process and write {file: [failure, ...]} as JSON to ``out_file``.

    A process of its own: `archspace validate` is torch-free, so the process stays small, and the memory probe's
    malloc_trim before each variant costs about a millisecond (in a suite worker holding a large, fragmented heap it
    took 25-45 ms a call, about 25 s for the fuzz)."""
    results = {}
    for shipped in SHIPPED:
        text = (ROOT / shipped).read_text()
        rng = random.Random(zlib.crc32(shipped.encode()))
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[shipped] = _fuzz(shipped, text, rng, Path(tmp) / Path(shipped).name)
            except Exception as exc:  # noqa: BLE001 - reported as this file's failure
                results[shipped] = [f"{shipped}: the fuzz itself raised {type(exc).__name__}: {exc}"]
    Path(out_file).write_text(json.dumps(results))


def _run_validate(target: Path):
    """main(["validate", target]) -> (exit code, stderr, CPU seconds)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        t0 = time.process_time()  # CPU seconds: what the loader costs, whatever else the machine runs
        code = main(["validate", str(target)])
        elapsed = time.process_time() - t0
    return code, err.getvalue(), elapsed


def _fuzz(shipped, text, rng, target) -> list:
    failures, refused = [], 0
    probe = _peak_probe()
    for n in range(VARIANTS):
        variant = mutate(text, rng)
        if isinstance(variant, bytes):
            target.write_bytes(variant)
        else:
            target.write_text(variant, encoding="utf-8", newline="")
        if probe is not None:
            probe.reset()
        code, err, elapsed = _run_validate(target)
        where = f"{shipped} variant {n}"
        if elapsed >= MAX_SECONDS:
            failures.append(f"{where}: {elapsed:.2f} CPU s")
        if probe is not None:
            if probe.rise() >= MAX_BYTES:
                failures.append(f"{where}: peak resident memory rose by {probe.rise()} bytes")
        elif elapsed > TRACE_ABOVE_S:  # tracing slows a run about 5x: only where it could have allocated much
            tracemalloc.start()
            try:
                _run_validate(target)
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            if peak >= MAX_BYTES:
                failures.append(f"{where}: {peak} bytes allocated")
        if code not in (0, 2):
            failures.append(f"{where}: exit {code}: {err}")
        if code == 2:
            refused += 1
            if not (err.startswith("error: ") and "Traceback" not in err):
                failures.append(f"{where}: not a one-paragraph error: {err}")
            elif err.strip().count("\n") != 0:
                failures.append(f"{where}: more than one paragraph: {err}")
            elif "larger than" not in err and "the file is empty" not in err:
                if not re.search(re.escape(str(target)) + r"(\s\(sampled [^)]*\))?:\d+:\d+: ", err):
                    failures.append(f"{where}: no file:line:col: {err}")
            elif str(target) not in err:
                failures.append(f"{where}: the file is not named: {err}")
    if refused <= VARIANTS // 4:
        failures.append(f"{shipped}: only {refused} of {VARIANTS} variants were refused: the mutations do not break it")
    return failures


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """Every shipped file's failures, from one fresh process running ``fuzz_all``."""
    out = tmp_path_factory.mktemp("fuzz") / "results.json"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_yaml_fuzz as f; "
            f"f.fuzz_all({str(out)!r})")
    env = dict(os.environ, ARCHSPACE_FUZZ_VARIANTS=str(VARIANTS))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)  # task recipes by name resolve from ./studies, as for a user in the checkout
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("shipped", SHIPPED)
def test_mutated_shipped_yaml_never_crashes(shipped, fuzzed):
    assert fuzzed[shipped] == [], "\n".join(fuzzed[shipped][:10])


def test_the_memory_probe_sees_an_allocation_over_the_bound():
    probe = _peak_probe()
    if probe is None:
        pytest.skip("no writable /proc/self/clear_refs here: the fuzz measures with tracemalloc instead")
    probe.reset()
    blob = [[i] for i in range(2_000_000)]  # about 230 MB of Python objects
    assert probe.rise() > MAX_BYTES, probe.rise()
    del blob
    probe.reset()
    assert probe.rise() < 16 << 20  # and a reset starts from what the process holds now
