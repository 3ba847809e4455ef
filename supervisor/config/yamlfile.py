"""Reading a YAML config file into plain Python data, keeping what PyYAML throws away.

PyYAML's ``safe_load`` silently keeps the last of two equal keys (two ``web:`` workers become
one) and forgets where each value came from. So we ``compose`` the file into a node tree and
build the data ourselves, which lets us:

- report duplicate keys (with the line of the first one),
- remember the line of every key, so a message can say ``app.yaml:12: workers.web.numprocs``,
- keep the *text* of a few scalars instead of YAML's guess at their type: environment values
  (``FLAG: yes`` means the string "yes", not True; ``VERSION: 1.10`` is not 1.1), command-list
  items (``[sleep, 3600]``) and ``socket_mode`` (``0600`` and ``600`` both mean octal 600),
- support ``<<: *anchor`` merge keys (keys written in the mapping itself win).

Mapping keys are always strings: their text as written (``123:`` is the worker "123").
Problems are collected, not raised, as ``(path, message, line)``; ``YamlSyntaxError`` is raised
only when the file cannot be parsed at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


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
    return path == ("supervisor", "socket_mode")


def parse(text: str) -> Document:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
    except yaml.YAMLError as e:        # e.g. a reader error: a control character in the text
        raise YamlSyntaxError(str(e).replace("\n", " "), None, None) from None
    doc = Document(data=None, lines={(): 1})
    if root is None:
        return doc
    builder = _Builder(doc)
    doc.data = builder.build(root, ())
    return doc


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.constructor = yaml.SafeLoader("")   # only its scalar constructors are used

    def build(self, node: Node, path: Path) -> Any:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.doc.lines.setdefault(path + (i,), item.start_mark.line + 1)
                items.append(self.build(item, path + (i,)))
            return items
        assert isinstance(node, ScalarNode)
        if _keeps_text(path):
            if node.tag == _NULL_TAG and path[0] == "supervisor":
                return None                    # socket_mode: null -> the default
            if node.tag == _NULL_TAG and path[2] == "environment":
                return ""
            return node.value
        return self.constructor.construct_object(node, deep=True)

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
