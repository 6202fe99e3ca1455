"""The import graph of ``src/vlaser``, read with ``ast``: import circles, imports from a lower layer to a higher
one (the layer order of ``docs/architecture.md``), and which modules a setting crosses on its way from a command
line to the engine.

Every import counts, the ones inside functions and under ``TYPE_CHECKING`` too: a lazy import is still an arrow.
Run it to print the numbers: ``python tests/import_graph.py``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: The layers, lowest first (see docs/architecture.md); a module may import its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("vlaser.errors", "vlaser.jsonl", "vlaser.points", "vlaser.drawing")),
    ("model", ("vlaser.model",)),
    ("data", ("vlaser.data",)),
    ("inference", ("vlaser.inference",)),
    ("api", ("vlaser.api",)),
    ("train", ("vlaser.train",)),
    ("eval", ("vlaser.eval",)),
    ("serve", ("vlaser.serve",)),
    ("vla", ("vlaser.vla",)),
    ("quickstart", ("vlaser.quickstart",)),
    ("cli", ("vlaser.cli", "vlaser.__main__", "vlaser")),
]


def modules(src: Path = SRC) -> dict[str, Path]:
    """``dotted name -> file`` of every module under ``src/vlaser`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((src / "vlaser").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, name: str, is_package: bool, known: set[str]) -> Iterable[str]:
    """The vlaser modules one import statement reads (``from pkg import module`` reads the module)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield from _existing(alias.name, known)
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    for alias in node.names:
        if f"{source}.{alias.name}" in known:
            yield f"{source}.{alias.name}"
        else:
            yield from _existing(source, known)


def _existing(dotted: str, known: set[str]) -> Iterable[str]:
    """The longest known module that ``dotted`` names (``vlaser.x.y.Thing`` -> ``vlaser.x.y``)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            yield candidate
            return


def graph(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> the vlaser modules it imports`` (itself left out)."""
    files = modules(src)
    known = set(files)
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        edges[name] = {t for node in ast.walk(tree) for t in _targets(node, name, is_package, known)} - {name}
    return edges


def layer(module: str) -> int:
    """The index of a module's layer: the layer whose prefix matches it most specifically."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise ValueError(f"{module} is in no layer; add it to LAYERS (and docs/architecture.md)")
    return best


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a module to one in a higher layer; ``vlaser.inference.types`` imports no vlaser module."""
    out = [(a, b) for a, targets in edges.items() for b in targets if layer(b) > layer(a)]
    out += [("vlaser.inference.types", b) for b in edges.get("vlaser.inference.types", ())
            if ("vlaser.inference.types", b) not in out]
    return sorted(out)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan's algorithm).

    A package ``__init__`` that imports its own submodules is not a circle with them: a submodule importing
    ``vlaser.inference`` needs ``__init__`` to run first either way, so those edges are left out.
    """
    edges = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def crossing(modules_on_path: list[str], pattern: str, src: Path = SRC) -> dict[str, set[str]]:
    """``module -> the names matching pattern it uses``, for the modules a setting's value passes through from a
    command line to the engine (traced by hand, listed in :data:`SETTINGS`). A name is an identifier, attribute,
    keyword, argument or string constant (a flag's ``--max-num`` reads ``max_num``)."""
    files = modules(src)
    regex = re.compile(pattern)
    return {module: {word for word in _words(ast.parse(files[module].read_text())) if regex.fullmatch(word)}
            for module in modules_on_path}


def _words(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.keyword, ast.arg)) and node.arg:
            yield node.arg
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value.lstrip("-").replace("-", "_")


#: Every name the tile limit and the new-token count go by, inside vlaser or outside it.
TILE_NAMES = (r"max_tiles|max_num|max_dynamic_patch|POINT_TILES|default_max_tiles|max_tiles_cap|max_num_cap|"
              r"tile_cap")
TOKEN_NAMES = r"max_new_tokens|max_tokens|max_completion_tokens|default_max_tokens|max_tokens_cap|token_cap"
#: The one internal name of each setting.
INTERNAL = {"tiles": "max_tiles", "tokens": "max_new_tokens"}

#: The modules where a setting enters or leaves vlaser under an outside name, and those names: flags (with their
#: argparse dests), the request bodies of OpenAI/vLLM/LMDeploy, the payload sent to such a server, the checkpoint's
#: config key, the seed's tiling API. Elsewhere a setting has its one internal name (:data:`INTERNAL`).
BOUNDARY: dict[str, tuple[str, set[str]]] = {
    "vlaser.cli.chat": ("its flags (--max-num)", {"max_num"}),
    "vlaser.cli.eval": ("its flags (--max-num)", {"max_num"}),
    "vlaser.cli.serve": ("--max-num, --max-num-cap, --max-tokens, --max-tokens-cap and their dests",
                         {"max_num", "max_num_cap", "tile_cap", "max_tokens", "max_tokens_cap", "token_cap"}),
    "vlaser.serve.schema": ("the request body (OpenAI, vLLM, LMDeploy)",
                            {"max_num", "max_dynamic_patch", "max_tokens", "max_completion_tokens"}),
    "vlaser.eval.backends": ("the payload sent to vLLM or LMDeploy", {"max_dynamic_patch", "max_tokens"}),
    "vlaser.model.settings": ("the checkpoint's config key", {"max_dynamic_patch"}),
    "vlaser.model.preprocess": ("the seed's load_image / dynamic_preprocess", {"max_num"}),
}
#: The vocabulary: defines the carrier fields (``GenerationParams.max_new_tokens``, ``Picture.max_tiles``) every path
#: speaks and decides no value; a setting's other modules (not a boundary) handle it.
VOCABULARY = {"vlaser.inference.types"}
#: Modules that handle a setting and still write an outside word, not as a name the value goes by: a flag named in
#: an error message, run records written before the rename. Reported beside the names, not counted as names.
MENTIONS: dict[str, tuple[str, set[str]]] = {
    "vlaser.eval.runner": ("the --max-num flag named in an error", {"max_num"}),
    "vlaser.eval.provenance": ("run.json written before the rename", {"max_num"}),
}
#: Modules outside the inference paths whose own settings share a word: training's InternVL flags
#: (``max_dynamic_patch``; the dataset calls the seed's tiling as ``max_num``) and the packer's token budget.
TRAINING = {"vlaser.cli.train", "vlaser.data.config", "vlaser.data.dataset", "vlaser.data.meta", "vlaser.data.packing",
            "vlaser.model.convert", "vlaser.model.tiny", "vlaser.quickstart.run", "vlaser.train.args",
            "vlaser.train.sft"}


def outside_names(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> the outside names of a setting it uses where it should not`` (not its boundary's, not training):
    empty when each setting has one internal name."""
    outside = re.compile(f"(?:{TILE_NAMES}|{TOKEN_NAMES})")
    internal = set(INTERNAL.values())
    found = {}
    for module, path in modules(src).items():
        if module in TRAINING or module.startswith("vlaser.vla.sim"):
            continue
        allowed = {**BOUNDARY, **MENTIONS}.get(module, ("", set()))[1]
        names = {w for w in _words(ast.parse(path.read_text())) if outside.fullmatch(w)} - internal - allowed
        if names:
            found[module] = names
    return found


#: The settings followed from a command line to the engine: ``(label, the modules its value passes through, in
#: order, names)``; the value's path traced by hand through the code. eval: the flag -> ``effective_settings`` over
#: the benchmark's protocol (the tile limit through ``resolve_max_tiles`` with the backend's checkpoint settings) ->
#: ``GenerationParams`` / ``Picture`` -> the backend -> the engine / the prepare step. serve: the flags -> the caps
#: (``MediaLimits``, the tile cap raised to ``--max-num``) and the default ``GenerationParams`` -> ``create_app``
#: (the default answer length cut to the cap) -> ``parse_chat_request``, which asks the schema for the request's
#: value, checked against the cap there -> the ``Job`` -> the engine; ``--max-num`` itself goes to the
#: ``Scheduler``, which hands it to ``prepare`` for pictures without their own limit.
SETTINGS = [
    ("eval run --max-new-tokens", ["vlaser.cli.eval", "vlaser.eval.runner", "vlaser.eval.benchmark",
                                   "vlaser.inference.types", "vlaser.eval.backends", "vlaser.inference.engine"],
     TOKEN_NAMES),
    ("serve max_tokens", ["vlaser.cli.serve", "vlaser.serve.app", "vlaser.serve.messages", "vlaser.serve.schema",
                          "vlaser.serve.scheduler", "vlaser.inference.types", "vlaser.inference.engine"],
     TOKEN_NAMES),
    ("chat --max-num", ["vlaser.cli.chat", "vlaser.api", "vlaser.inference.types", "vlaser.inference.prepare",
                        "vlaser.model.settings"], TILE_NAMES),
    ("eval run --max-num", ["vlaser.cli.eval", "vlaser.eval.runner", "vlaser.eval.benchmark",
                            "vlaser.inference.prepare", "vlaser.inference.types", "vlaser.eval.backends",
                            "vlaser.model.settings"], TILE_NAMES),
    ("serve --max-num", ["vlaser.cli.serve", "vlaser.serve.app", "vlaser.serve.messages", "vlaser.serve.schema",
                         "vlaser.serve.scheduler", "vlaser.inference.types", "vlaser.inference.prepare",
                         "vlaser.model.settings"], TILE_NAMES),
]


def sorted_by_class(path: list[str], pattern: str, src: Path = SRC) -> dict[str, dict[str, set[str]]]:
    """The modules on a setting's path that name it, in three classes: ``boundary`` (an outside name enters or
    leaves there, :data:`BOUNDARY`), ``vocabulary`` (:data:`VOCABULARY`) and ``handling`` (all others, the engine
    and the prepare step included); a handling module's :data:`MENTIONS` are left out of its names."""
    out: dict[str, dict[str, set[str]]] = {"boundary": {}, "vocabulary": {}, "handling": {}}
    for module, names in crossing(path, pattern, src).items():
        if module in BOUNDARY:
            out["boundary"][module] = names
        elif module in VOCABULARY:
            out["vocabulary"][module] = names
        elif names - MENTIONS.get(module, ("", set()))[1]:
            out["handling"][module] = names - MENTIONS.get(module, ("", set()))[1]
    out = {kind: {m: n for m, n in found.items() if n} for kind, found in out.items()}
    return out


def _setting_lines(label: str, path: list[str], pattern: str) -> list[str]:
    crossed = {m: n for m, n in crossing(path, pattern).items() if n}
    names = sorted(set().union(*crossed.values())) if crossed else []
    lines = [f"{label}: crosses {len(path)} modules, {len(crossed)} of them name it, {len(names)} names {names}"]
    for kind, found in sorted_by_class(path, pattern).items():
        kind_names = sorted(set().union(*found.values())) if found else []
        target = " (target: <= 3 modules, 1 name)" if kind == "handling" else ""
        lines.append(f"  {kind}: {len(found)} modules, {len(kind_names)} names {kind_names}{target}")
        for module, used in found.items():
            why = f" ({BOUNDARY[module][0]})" if module in BOUNDARY else ""
            also = f" (also mentions {sorted(MENTIONS[module][1])}: {MENTIONS[module][0]})" if (
                module in MENTIONS and MENTIONS[module][1] & crossed[module]) else ""
            lines.append(f"    {module}{why}: {sorted(used)}{also}")
    return lines


#: Classes that describe a request or its settings, anywhere on the way from a caller to the engine.
REQUEST_CLASSES = ["Picture", "Turn", "Request", "GenerationParams", "Prepared", "Row", "Media", "Job", "MediaLimits",
                   "ChatCompletionRequest", "EvalProtocol", "PointProtocol", "PromptLayout",
                   "ProcessorSettings", "Tiling"]
MAX_FUNCTION_LINES = 60


def classes(src: Path = SRC) -> dict[str, list[str]]:
    """``class name -> modules defining it`` for every class in ``src/vlaser``."""
    out: dict[str, list[str]] = {}
    for module, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, []).append(module)
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES, src: Path = SRC) -> list[tuple[str, str, int]]:
    """``(module, function, lines)`` of every function or method longer than ``limit`` lines (its decorators and
    docstring included, as it reads)."""
    out = []
    for module, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > limit:
                    out.append((module, node.name, lines))
    return sorted(out)


def report() -> str:
    edges = graph()
    lines = [f"modules: {len(edges)}, imports between them: {sum(map(len, edges.values()))}"]
    up = upward(edges)
    lines.append(f"upward imports: {len(up)}")
    lines += [f"  {a} -> {b}" for a, b in up]
    found = circles(edges)
    lines.append(f"import circles: {len(found)}")
    lines += ["  " + " <-> ".join(group) for group in found]
    for label, path, pattern in SETTINGS:
        lines += _setting_lines(label, path, pattern)
    outside = outside_names()
    lines.append(f"outside names of a setting beyond their boundary modules: {len(outside)} modules "
                 + str({m: sorted(n) for m, n in outside.items()}))
    defined = classes()
    described = {name: defined[name] for name in REQUEST_CLASSES if name in defined}
    lines.append(f"classes describing a request or its settings: {sum(map(len, described.values()))} "
                 + str({name: modules for name, modules in described.items()}))
    engines = defined.get("Engine", [])
    lines.append(f"classes called Engine: {len(engines)} {engines}")
    long = long_functions()
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(long)}")
    lines += [f"  {m}.{f}: {n} lines" for m, f, n in long]
    vla = sorted((SRC / "vlaser" / "vla").rglob("*.py"))
    total = sum(len(p.read_text().splitlines()) for p in SRC.rglob("*.py"))
    vla_lines = sum(len(p.read_text().splitlines()) for p in vla)
    lines.append(f"lines of src/vlaser/vla: {vla_lines} of {total} in src ({100 * vla_lines / total:.0f}%)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
