"""YAML loading for user files: safe, YAML-1.2-like scalars, duplicate keys rejected, marks kept.

PyYAML's SafeLoader follows YAML 1.1, which has three traps for config files:
  * `1e-3` (no dot) resolves to a *string*; here it is a float, as in YAML 1.2 and JSON.
  * `yes`/`no`/`on`/`off`/`y`/`n` resolve to booleans; here only `true`/`false` are booleans and
    the others stay strings, so a key that expects a string gets the string the user wrote and a
    key that expects a boolean reports a clear type error.
  * a duplicate key silently keeps the last value; here it is an error naming both lines.
  * `3:1` is the base-60 integer 181 and `010` is octal; here `3:1` is text and `010` is 10.
Only the safe constructors are used: no Python tags, no code or import paths from YAML.

Hostile input is refused with a ConfigError, never expanded: a file over MAX_BYTES (read no further, so
`/dev/zero` answers at once), nesting deeper than MAX_DEPTH, more than MAX_NODES values, an alias that contains
itself, a document that expands to more than MAX_NODES values through aliases (a "billion laughs" bomb),
control characters, and an
empty file (a design or space must say something).

`load(path)` returns the data and a `Marks` table that maps every key path to the line and column
of its value (and key), so that later validation errors can point at `file:line:col`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# YAML 1.1 also reads `3:1` as the base-60 integer 181 and `010` as octal 8; integers here are
# decimal (underscores allowed), 0x hex or 0o octal, so a hybrid ratio written without quotes stays text.
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


# Timestamps are dropped too: `2024-01-01` stays the string the user wrote.
_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")


# Limits on what a user file may make the loader do. Shipped designs and spaces are at most a few kB, about
# 10 levels deep and a few hundred values; these bounds are far above that and keep the pure-Python
# loader under a second (it reads about 1 MB/s, and 50,000 one-line keys took 9 s).
MAX_BYTES = 256 << 10
MAX_DEPTH = 64
MAX_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and booleans, and a nesting limit while composing.

    PyYAML composes nested collections recursively, so 5,000 nested `[` end in a RecursionError; the
    depth is counted here and refused at MAX_DEPTH with the position of the offending node."""

    depth = 0
    composed = 0
    file = "<string>"

    def compose_node(self, parent, index):
        self.depth += 1
        self.composed += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(f"values are nested more than {MAX_DEPTH} levels deep; archspace files are "
                                  "shallow mappings (is this the right file?)", self.file,
                                  *_pos(self.peek_event().start_mark))
            if self.composed > MAX_NODES:
                raise ConfigError(f"the document holds more than {MAX_NODES:,} values; archspace files hold a few "
                                  "hundred (is this the right file?)", self.file, *_pos(self.peek_event().start_mark))
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# Replace the YAML 1.1 bool and float resolvers (copy the table so SafeLoader is untouched).
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0x", "0o")):
        return int(text[2:], 16 if text[1] == "x" else 8)
    return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


class Marks:
    """Key path (tuple of str/int) -> (line, column), 1-based, of the value and of the key."""

    def __init__(self, file: str):
        self.file = file
        self.value: dict[tuple, tuple[int, int]] = {}
        self.key: dict[tuple, tuple[int, int]] = {}

    def locate(self, path, prefer_key: bool = False) -> tuple[Optional[int], Optional[int]]:
        """Line/column of the deepest known prefix of `path` (values unless prefer_key)."""
        path = tuple(path)
        while True:
            table = (self.key, self.value) if prefer_key else (self.value, self.key)
            for t in table:
                if path in t:
                    return t[path]
            if not path:
                return None, None
            path = path[:-1]

    def error(self, message: str, path=(), hint: Optional[str] = None, at_key: bool = False) -> ConfigError:
        line, col = self.locate(path, prefer_key=at_key)
        return ConfigError(message, file=self.file, line=line, column=col, path=tuple(path) or None, hint=hint)

    def child(self, prefix: tuple) -> "Marks":
        """Marks of a subtree, re-rooted at `prefix`."""
        sub = Marks(self.file)
        n = len(prefix)
        sub.value = {p[n:]: m for p, m in self.value.items() if p[:n] == prefix}
        sub.key = {p[n:]: m for p, m in self.key.items() if p[:n] == prefix}
        return sub


def _pos(mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


class _Budget:
    """What one document's construction has used: the nodes on the current path (an alias that leads back
    to one of them would recurse forever) and the values built so far (aliases re-expand their target)."""

    def __init__(self):
        self.open: set[int] = set()
        self.nodes = 0


def _construct(loader: _Loader, node, path: tuple, marks: Marks, budget: Optional[_Budget] = None) -> Any:
    budget = budget or _Budget()
    if id(node) in budget.open:
        raise ConfigError("an alias refers to itself (a value that contains itself has no end)", marks.file,
                          *_pos(node.start_mark), path or None)
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise ConfigError(f"the document expands to more than {MAX_NODES:,} values (aliases repeat their anchor's "
                          "value each time they are used); archspace files are far smaller", marks.file,
                          *_pos(node.start_mark), path or None)
    marks.value[path] = _pos(node.start_mark)
    allowed = {yaml.MappingNode: {"tag:yaml.org,2002:map"}, yaml.SequenceNode: {"tag:yaml.org,2002:seq"}}
    if node.tag not in allowed.get(type(node), _SCALAR_TAGS):
        raise ConfigError(
            f"tag {node.tag!r} is not allowed: archspace files hold plain data only (no Python objects or code)",
            marks.file,
            *_pos(node.start_mark),
            path or None,
        )
    if isinstance(node, yaml.CollectionNode):
        budget.open.add(id(node))
        try:
            return _construct_collection(loader, node, path, marks, budget)
        finally:
            budget.open.discard(id(node))
    return _construct_leaf(loader, node, path, marks)


def _construct_collection(loader: _Loader, node, path: tuple, marks: Marks, budget: _Budget) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys
        out: dict = {}
        seen: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain scalars", marks.file, *_pos(key_node.start_mark), path or None)
            key = loader.construct_object(key_node)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ConfigError(
                    f"mapping key {key_node.value!r} must be a name", marks.file, *_pos(key_node.start_mark), path or None
                )
            if key in seen:
                first = seen[key]
                raise ConfigError(
                    f"duplicate key '{key}' (first defined on line {first[0]}); YAML would silently keep only the last value",
                    marks.file,
                    *_pos(key_node.start_mark),
                    path + (key,),
                    hint="Remove one of the two.",
                )
            seen[key] = _pos(key_node.start_mark)
            marks.key[path + (key,)] = _pos(key_node.start_mark)
            out[key] = _construct(loader, value_node, path + (key,), marks, budget)
        return out
    return [_construct(loader, item, path + (i,), marks, budget) for i, item in enumerate(node.value)]


def _construct_leaf(loader: _Loader, node, path: tuple, marks: Marks) -> Any:
    try:
        return loader.construct_object(node)
    except yaml.YAMLError as exc:  # e.g. a malformed timestamp-like scalar
        raise ConfigError(f"cannot read value: {exc}", marks.file, *_pos(node.start_mark), path or None) from None


def loads(text: str, file: str = "<string>") -> tuple[Any, Marks]:
    """Parse YAML text; raise ConfigError on any syntax or safety problem."""
    marks = Marks(file)
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here (NUL and other control bytes)
        loader.file = file
        node = loader.get_single_node()
        if node is None:
            return {}, marks
        return _construct(loader, node, (), marks), marks
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(f"unacceptable character {what}: {exc.reason}; YAML files are printable text", file,
                          line, col) from None
    except RecursionError:  # e.g. merge keys (`<<`) that merge a mapping into itself
        raise ConfigError("the document refers to itself too deeply to be read (recursive aliases or merge keys)",
                          file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _pos(mark) if mark is not None else (None, None)
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(f"YAML syntax error: {problem}", file, line, col) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file) from None
    finally:
        if loader is not None:
            loader.dispose()


def load(path) -> tuple[Any, Marks]:
    p = Path(path)
    if not p.exists():
        raise ConfigError("file not found", file=str(path))
    if p.is_dir():
        raise ConfigError("is a directory, expected a YAML file", file=str(path))
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more: /dev/zero or a 10 GB file answer at once
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"the file is larger than {MAX_BYTES >> 10} KiB; archspace design and space files are a few "
                          "kB (is this the right file?)", file=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", str(path), line, col) from None
    data, marks = loads(text, str(path))
    if data is None or data == {} and not marks.value:
        raise ConfigError("the file is empty (no YAML document, or only null): a design needs at least one of "
                          "model, task, train, and a space a base and axes", file=str(path))
    return data, marks


def dump(data: Any) -> str:
    """YAML text for resolved configs (block style, key order kept)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
