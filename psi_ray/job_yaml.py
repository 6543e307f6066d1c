"""Reading a job file: the bytes, the YAML and its shape, refusing what would hang or crash a run later.

A job file is at most ``MAX_JOB_FILE_BYTES``; its YAML may share blocks with anchors and aliases, but the
document is measured as if every alias were written out (``MAX_YAML_NODES`` values, ``MAX_YAML_DEPTH`` levels),
an alias inside its own anchor and a duplicate key are refused. Every refusal is one ``PsiRayError`` line with
the file, line and column.
"""

from __future__ import annotations

from pathlib import Path

from psi_ray.errors import PsiRayError

MAX_JOB_FILE_BYTES = 1 << 20  # a job file is a page of settings; a bigger one is a mistake (or an attack)
MAX_YAML_NODES = 20_000  # values after expanding aliases: an alias bomb expands to billions
MAX_YAML_DEPTH = 32  # nesting levels, aliases expanded (the deepest job is 4 levels)


def read_job_yaml(path: Path) -> dict:
    """The top-level mapping of the job file at ``path`` (``{}`` for an empty file)."""
    import yaml

    if not path.exists():
        raise PsiRayError(f"config file not found: {path}")
    if not path.is_file():
        raise PsiRayError(f"{path}: not a regular file (a folder, device or pipe); name a job YAML file")
    with open(path, "rb") as f:
        raw = f.read(MAX_JOB_FILE_BYTES + 1)
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise PsiRayError(f"{path}: larger than {MAX_JOB_FILE_BYTES // 1024} KiB; a job file holds settings "
                          "only")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_job_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = "refused YAML" if getattr(exc, "refused", False) else "malformed YAML"
        raise PsiRayError(f"{where}: {what}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise PsiRayError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PsiRayError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _job_loader():
    """A ``yaml.SafeLoader`` that refuses what would hang or crash a run later (see ``load_config``).

    Anchors and aliases stay allowed (sharing one sampling block is a fair use), but the document is measured
    as if every alias were written out: more than ``MAX_YAML_NODES`` values or ``MAX_YAML_DEPTH`` levels is
    refused, as is an alias inside its own anchor (a recursive structure). Counting alias *events* would not
    do: nine aliases of nine aliases already make 9**9 values.
    """
    import yaml
    from yaml.composer import ComposerError
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    class Refused(ComposerError):
        refused = True

        def __init__(self, problem, mark):
            super().__init__(None, None, problem, mark)

    class JobLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise Refused(f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def compose_document(self):
            node = super().compose_document()
            self._measure(node, {}, set())
            return node

        def _measure(self, node, seen: dict, open_: set) -> tuple[int, int]:
            """(values, depth) of ``node`` with aliases expanded; shared nodes are measured once."""
            if id(node) in seen:
                return seen[id(node)]
            if id(node) in open_:
                raise Refused("an alias refers to a value that contains it (recursive YAML)", node.start_mark)
            open_.add(id(node))
            kids = node.value if isinstance(node, SequenceNode) else \
                [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else []
            sizes = [self._measure(k, seen, open_) for k in kids]
            size, depth = 1 + sum(s for s, _ in sizes), 1 + max((d for _, d in sizes), default=0)
            if size > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
                raise Refused(f"aliases expand to more than {MAX_YAML_NODES} values or {MAX_YAML_DEPTH} "
                              "levels (an alias bomb?); write the values out", node.start_mark)
            open_.discard(id(node))
            seen[id(node)] = size, depth
            return size, depth

        def construct_mapping(self, node, deep=False):
            keys: set = set()
            for k, _ in node.value if isinstance(node, MappingNode) else []:
                if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in keys:
                        raise Refused(f"duplicate key '{k.value}' (the later one would silently win)",
                                      k.start_mark)
                    keys.add((k.tag, k.value))
            return super().construct_mapping(node, deep)

    return JobLoader
