"""User-facing configuration errors: one paragraph naming file, line, column and key path."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

EXIT_USAGE = 2  # bad input (files, keys, values): nothing ran


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The closest valid name to a misspelt one, or None when nothing is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return found[0] if found else None


def keypath(path: Sequence) -> str:
    """('model', 'layers', 2, 'heads') -> 'model.layers[2].heads'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


@dataclass
class ConfigError(Exception):
    """Invalid user input. `str()` is the complete message shown to the user."""

    message: str
    file: Optional[str] = None
    line: Optional[int] = None  # 1-based
    column: Optional[int] = None  # 1-based
    path: Optional[Sequence] = None
    hint: Optional[str] = None
    kind: str = "invalid"  # "incompatible" when an INCOMPATIBLE rule fired (samplers skip those)

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        key = f"{keypath(self.path)}: " if self.path else ""
        text = f"{where}{key}{self.message}"
        if self.hint:
            text += ("" if text.endswith((".", "?", ")")) else ".") + f" {self.hint}"
        return text
