"""Reading a YAML config file into plain Python data, keeping what PyYAML throws away.

PyYAML's ``safe_load`` silently keeps the last of two equal keys (two ``web:`` workers become
one) and forgets where each value came from. So we ``compose`` the file into a node tree and
build the data ourselves, which lets us:

- report duplicate keys (with the line of the first one),
- remember the line of every key, so a message can say ``app.yaml:12: workers.web.numprocs``,
- keep the *text* of a few scalars instead of YAML's guess at their type: environment values
  (``FLAG: yes`` means the string "yes", not True; ``VERSION: 1.10`` is not 1.1), command-list
  items (``[sleep, 3600]``), ``socket_mode`` and ``umask`` (``0600`` and ``600`` both mean
  octal 600, ``022`` is octal 22),
- support ``<<: *anchor`` merge keys (keys written in the mapping itself win),
- refuse what a config never needs and an attacker would use: tags other than YAML's plain
  scalar and collection ones (``!!python/object`` ...), a value that contains itself through
  an alias, nesting deeper than MAX_DEPTH, more than MAX_VALUES values once aliases are
  expanded (a few hundred bytes of aliases can stand for billions of values), more than
  MAX_NODES keys and values as written (refused while composing: the tree's memory is in
  proportion to them, 500 bytes to 1 KB each), integers longer
  than MAX_INT_CHARS, NUL characters (no path, command, name or environment value can
  hold one) and lone surrogates (a ``"\\ud800"`` escape: half a UTF-16 pair, not text; no
  path or argument can be encoded from one).

Mapping keys are always strings: their text as written (``123:`` is the worker "123").
Problems are collected, not raised, as ``(path, message, line)``; ``YamlSyntaxError`` is raised
only when the file cannot be parsed at all. A refused value (``Document.refused``) is built as
None, so what is left is not worth validating: load_config reports the problems alone.

The node tree is measured before anything is built (``_measure``: each distinct node once,
so in time proportional to the file): a value that contains itself, nesting deeper than
MAX_DEPTH and more than MAX_VALUES values with aliases expanded are refused there. A config
for 10,000 workers with 20 settings each has 200,000 values; 500,000 leaves room for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]

MAX_DEPTH = 64
MAX_VALUES = 500_000
MAX_NODES = 600_000   # keys and values as written (10,000 workers of a dozen settings: 380,000)
PYTHON_PARSER_CHARS = 1 << 20  # the size up to which PyYAML's parser words libyaml's errors
MAX_INT_CHARS = 100
_STD = "tag:yaml.org,2002:"
_MERGE_TAG = _STD + "merge"
_NULL_TAG = _STD + "null"
_INT_TAG = _STD + "int"
_SCALAR_TAGS = frozenset(_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_TAGS = {MappingNode: frozenset({_STD + "map"}), SequenceNode: frozenset({_STD + "seq"}),
         ScalarNode: _SCALAR_TAGS}


class _Bound(yaml.composer.ComposerError):
    """A bound of _DepthLimit: the same with either parser, so never parsed again."""


class _DepthLimit(yaml.composer.Composer):
    """A composer that refuses nesting deeper than MAX_DEPTH (it recurses once per level, so
    a deep file would otherwise end in RecursionError) and more than MAX_NODES nodes (what
    the tree costs in memory is in proportion to them, not to the file's bytes)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
                raise _Bound(None, None, f"nesting deeper than {MAX_DEPTH} levels"
                             if self._depth > MAX_DEPTH else f"more than {MAX_NODES:,} keys "
                             "and values; a config needs far fewer",
                             self.peek_event().start_mark)  # type: ignore[attr-defined]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Loader(_DepthLimit, yaml.SafeLoader):
    pass


_CLoader: type | None = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLoader(_DepthLimit, CParser, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver):
        """libyaml's parser (ten times faster than PyYAML's on a large file) under the same
        composer and resolver as _Loader, so both make the same node tree."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            _DepthLimit.__init__(self)

    _CLoader = _FastLoader


def _compose(text: str) -> Node | None:
    if _CLoader is not None:
        try:
            return yaml.compose(text, Loader=_CLoader)
        except _Bound:
            raise
        except yaml.YAMLError:
            if len(text) > PYTHON_PARSER_CHARS:
                raise  # libyaml's words: PyYAML's parser would take a minute on 16 MiB
            # PyYAML's parser words the error (and may accept what libyaml does not)
    return yaml.compose(text, Loader=_Loader)


def _tag_text(tag: str) -> str:
    return "!!" + tag.removeprefix(_STD) if tag.startswith(_STD) else tag


class YamlSyntaxError(Exception):
    """The file is not YAML. ``line``/``column`` are 1-based (None when unknown)."""

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass
class Document:
    data: Any                                   # None for an empty file
    lines: dict[Path, int] = field(default_factory=dict)   # path -> 1-based line of its key
    problems: list[tuple[Path, str, int | None]] = field(default_factory=list)  # line if known
    refused: bool = False                       # a value was refused (built as None)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor that is in the file."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None


def _keeps_text(path: Path) -> bool:
    """Scalars at these paths are kept as the text written (see the module docstring)."""
    if len(path) == 4 and path[0] == "workers" and path[2] in ("environment", "command"):
        return True
    return path in (("supervisor", "socket_mode"),) or (
        len(path) == 3 and path[0] == "workers" and path[2] == "umask")


def parse(text: str) -> Document:
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = e.problem or e.context or "invalid YAML"
        if e.context and e.problem and e.problem.startswith("but "):
            message = f"{e.context}, {e.problem}"
        elif e.context and e.problem and e.context_mark is not None:
            message = f"{message} ({e.context} started on line {e.context_mark.line + 1})"
        if "<block" in message:
            message += "; check the indentation"
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise YamlSyntaxError(message, line, column) from None
    except yaml.reader.ReaderError as e:   # a control character in the text: say where
        before = text[:e.position]
        line, column = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        raise YamlSyntaxError(f"control character U+{e.character:04X} in the text; remove it "
                              "(YAML allows tabs, newlines and printable characters)",
                              line, column) from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(str(e).replace("\n", " "), None, None) from None
    doc = Document(data=None, lines={(): 1})
    if root is None:
        return doc
    if _measure(root, doc):
        builder = _Builder(doc)
        doc.data = builder.build(root, ())
    return doc


def _has_surrogate(text: str) -> bool:
    """A lone surrogate comes only from a \\u escape (a UTF-8 file cannot hold one)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_char(text: str) -> str:
    return "a NUL character (\\0)" if "\0" in text else "a lone surrogate (not text)"


class _Refused(Exception):
    pass


def _measure(root: Node, doc: Document) -> bool:
    """Whether the tree may be built: no cycle, no deeper than MAX_DEPTH, at most MAX_VALUES
    values once aliases are expanded. Otherwise the reason is in doc.problems."""
    # id(collection node) -> (values in it with aliases expanded, levels of nesting in it)
    measured: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def refuse(path: Path, message: str, node: Node) -> NoReturn:
        doc.refused = True
        doc.problems.append((path, message, node.start_mark.line + 1))
        raise _Refused

    def measure(node: Node, path: Path) -> tuple[int, int]:
        if isinstance(node, ScalarNode):
            return 1, 0
        key = id(node)
        if key in active:
            refuse(path, "recursive alias: this value contains itself", node)
        total, height = measured.get(key, (0, 0))
        if len(active) + height >= MAX_DEPTH:
            refuse(path, f"nesting deeper than {MAX_DEPTH} levels (through aliases)", node)
        if key in measured:
            return total, height
        active.add(key)
        if isinstance(node, SequenceNode):
            children = [(item, path + (i,)) for i, item in enumerate(node.value)]
        else:
            children = [(v, path + (k.value if isinstance(k, ScalarNode) else i,))
                        for i, (k, v) in enumerate(node.value)]
        total, height = 1, 0
        for child, where in children:
            size, levels = measure(child, where)
            total, height = total + size, max(height, levels)
        active.discard(key)
        if total > MAX_VALUES:
            refuse(path, f"has more than {MAX_VALUES:,} values (an alias counts as many as it "
                         "stands for); a config needs far fewer", node)
        measured[key] = total, height + 1
        return total, height + 1

    try:
        measure(root, ())
    except _Refused:
        return False
    return True


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.constructor = yaml.SafeLoader("")   # only its scalar constructors are used

    def refuse(self, path: Path, message: str, node: Node) -> None:
        self.doc.refused = True
        self.doc.problems.append((path, message, node.start_mark.line + 1))

    def build(self, node: Node, path: Path) -> Any:
        if isinstance(node, ScalarNode) and node.tag == _MERGE_TAG:
            return node.value                  # '<<' as a value, not a key: just the text
        if node.tag not in _TAGS.get(type(node), ()):
            self.refuse(path, f"unsupported YAML tag {_tag_text(node.tag)!r}; use plain "
                              "strings, numbers, true/false, null, lists and mappings", node)
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, MappingNode):    # _measure has made sure this ends, and soon
            return self._mapping(node, path)
        items = []
        for i, item in enumerate(node.value):
            self.doc.lines.setdefault(path + (i,), item.start_mark.line + 1)
            items.append(self.build(item, path + (i,)))
        return items

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        if "\0" in node.value:
            self.refuse(path, "contains a NUL character (\\0), which no path, command, name "
                              "or environment value can hold", node)
            return None
        if _has_surrogate(node.value):
            self.refuse(path, f"{node.value[:40]!r} contains a lone surrogate (a \\ud800-\\udfff "
                              "escape), which is not text; write the character itself", node)
            return None
        if _keeps_text(path):
            if node.tag == _NULL_TAG and (path[0] == "supervisor" or path[2] == "umask"):
                return None                    # socket_mode, umask: null -> the default
            if node.tag == _NULL_TAG and path[2] == "environment":
                return ""
            return node.value
        if node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
            self.refuse(path, f"integer of {len(node.value):,} characters; no setting takes "
                              "a number that large", node)
            return None
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception:      # e.g. !!int 'x', !!bool maybe, !!timestamp 1: the text is wrong
            self.refuse(path, f"{node.value[:40]!r} is not a valid {_tag_text(node.tag)}", node)
            return None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path, line))
                continue
            if not isinstance(key_node, ScalarNode):
                self.doc.problems.append((path, "keys must be plain strings", line))
                continue
            key = key_node.value
            if "\0" in key or _has_surrogate(key):
                self.refuse(path, f"the key {key!r} contains {_bad_char(key)}", key_node)
                continue
            if key in first_line:
                self.doc.problems.append(
                    (path + (key,), f"duplicate key; first defined on line {first_line[key]}",
                     line))
                continue
            first_line[key] = line
            self.doc.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        for source in merged:                  # explicit keys win, then earlier sources
            for key_node, value_node in source.value:
                if isinstance(key_node, ScalarNode) and key_node.value not in result:
                    key = key_node.value
                    if "\0" in key or _has_surrogate(key):
                        self.refuse(path, f"the key {key!r} contains {_bad_char(key)}",
                                    key_node)
                        continue
                    self.doc.lines[path + (key,)] = key_node.start_mark.line + 1
                    result[key] = self.build(value_node, path + (key,))
        return result

    def _merge_sources(self, node: Node, path: Path, line: int) -> list[MappingNode]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        if all(isinstance(n, MappingNode) for n in nodes):
            return list(nodes)
        self.doc.problems.append((path, ("'<<' must merge a mapping or a list of mappings "
                                        "(e.g. <<: *defaults)"), line))
        return []
