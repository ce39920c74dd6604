"""Imports point one way: labels/config <- data <- models <- {training, evaluation, inference} <- analysis
<- orchestration (runs, study, ship) <- serve <- cli. Every import counts, including those inside functions."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "emodetect"
LAYERS = [
    {"errors", "labels", "files", "plots", "malloc", "weights"},
    {"config"},
    {"data"},
    {"models"},
    {"training", "evaluation", "inference"},  # siblings: none imports another
    {"analysis"},  # reads evaluation's metrics and prediction files
    {"runs", "study", "ship"},  # orchestration
    {"serve"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
SIBLINGS = {"training", "evaluation", "inference"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield path, "emodetect" + "".join(f".{p}" for p in parts), parts[0] if parts else ""


def _imports(path: Path):
    """(line, imported module, names) of every emodetect import in the file, wherever it is."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "emodetect":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "emodetect":
                    yield node.lineno, a.name, []


def _part(module: str, names: list[str]) -> str | None:
    """The top-level part of the package an import reaches (None: the package's version only)."""
    parts = module.split(".")
    if len(parts) > 1:
        return parts[1]
    if names == ["__version__"]:
        return None
    if len(names) == 1 and names[0] in RANK:  # `from emodetect import plots`
        return names[0]
    return "cli"  # the package root's API (load_model, ...) sits above everything inside the package


def test_every_module_belongs_to_a_layer():
    missing = {part for _, _, part in _modules() if part and part not in RANK}
    assert not missing, f"add these to LAYERS: {missing}"


def _points_wrong(part: str, target: str, names: list[str]) -> bool:
    other = _part(target, names)
    if other is None or other == part:
        return False
    return RANK[other] > RANK[part] or (part in SIBLINGS and other in SIBLINGS)


def test_the_rule_catches_upward_and_sideways_imports():
    assert _points_wrong("data", "emodetect.models.registry", ["get_spec"])
    assert _points_wrong("evaluation", "emodetect.runs", ["load_run"])
    assert _points_wrong("evaluation", "emodetect", ["load_model"])  # the package root's API
    assert _points_wrong("training", "emodetect.evaluation.metrics", ["classification_metrics"])
    assert not _points_wrong("models", "emodetect", ["__version__"])
    assert not _points_wrong("runs", "emodetect.training", ["fit_network"])


def test_no_import_points_up_or_across_siblings():
    bad = [f"{module}:{line} imports {target}"
           for path, module, part in _modules() if part  # the package root is a lazy facade over the layers
           for line, target, names in _imports(path) if _points_wrong(part, target, names)]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_parts():
    graph: dict[str, set[str]] = {}
    for path, _, part in _modules():
        for _, target, names in _imports(path):
            other = _part(target, names)
            if part and other and other != part:
                graph.setdefault(part, set()).add(other)
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)
