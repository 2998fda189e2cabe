"""The package's shape: the data path runs one way (no import reaches back up) and modules stay small.

The layers below are the README's "Architecture" section: a module may import only from modules in
a lower layer (imports inside functions and under ``TYPE_CHECKING`` count too). Deprecated aliases
name their targets as strings (``lakn._deprecation``), so they add no arrow. A new module must be
placed in a layer here, which is where a newcomer decides which way its imports may go.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lakn"

LAYERS: list[list[str]] = [
    ["_version", "_io", "_progress", "_deprecation"],
    ["facts.errors"],                                  # FactsError, short quoting
    ["facts.languages", "facts.ids"],                  # language codes; the safe-id rule, file stems
    ["facts.schema"],                                  # the record checks
    ["facts.records"],                                 # Fact, Query, fact_sha256, check_context_length
    ["facts.loading", "facts.select"],                 # facts files; the facts and languages of a run
    ["config", "facts", "hooks"],                      # records, choices, hook factories, Neuron
    ["models"],                                        # loading models
    ["rml.reading", "rml.datasheet"],                  # mParaRel files; what a build made (datasheet)
    ["rml.building"],
    ["rml"],                                           # RML-LAMA-style facts from mParaRel (uses only facts)
    ["testing", "tokens"],                             # tiny models; encode queries, logits_at
    ["probability", "objective"],                      # P(answer) family; the IG objective
    ["known", "translate"],                            # which facts the model knows; its own translation of an answer
    ["results"],                                       # LocalizationResult, FactRecord, ResultTable
    ["attribution.memory", "attribution.kv_cache"],
    ["attribution.runners"],
    ["attribution.exact", "attribution.approx", "attribution.effects"],
    ["attribution"],                                   # integrated gradients, public API
    ["selection"],                                     # scores -> neuron sets, random control
    ["scoring"],                                       # MATRICE and baselines per fact
    ["causal"],                                        # causal, specificity-seeking selection (effect maps)
    ["splits", "interventions", "weights"],            # honest splits; activation interventions; W_out rows, Edit
    ["keys"],                                          # where keys are read, key neurons; forwards that stop early
    ["pivot"],                                         # the logit lens and the pivot term of the target
    ["target"],                                        # the closed-form target (one or a batch's, Adam on a delta)
    ["closed_form"],                                   # preserved-key covariance, the constrained solve
    ["closed_form_edit"],                              # target-and-key groups, the solve with pivot and re-solves
    ["editing"],                                       # edit / inject methods (closed form, gradient, kn embedding)
    ["localization"],                                  # attribute -> score -> select, resumable
    ["evaluation.specificity"],                        # the specificity protocol's groups, per-row mask pass
    ["evaluation.change_rates", "evaluation.editing", "evaluation.enhancement", "evaluation.injection",
     "evaluation.runs"],
    ["evaluation.tradeoff"],                           # own vs unrelated drop over k and contrast weights
    ["evaluation"],
    ["plotting._style"],
    ["plotting.layers", "plotting.scores", "plotting.languages", "plotting.changes", "plotting.tradeoff"],
    ["plotting.runs"],
    ["plotting"],
    ["report"],                                        # one HTML page per run: tables, figures, LAKN cards
    ["cli._common"],
    ["cli.localize", "cli.plot", "cli.evaluate", "cli.edit", "cli.inject", "cli.data", "cli.report"],
    ["cli"],
    ["__main__"],
]
PACKAGE_ROOT = "<lakn>"  # `from . import __version__`: the package itself, above every module
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer} | {PACKAGE_ROOT: len(LAYERS)}
MAX_LINES = 550
# Over the cap for now, with the reason; the split is tracked, and a module leaves this list when split.
OVER_CAP: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    """{dotted name below lakn ("attribution.exact", "attribution" for its __init__): path}."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # lakn/__init__.py is the top: it re-exports everything
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The lakn modules an import statement in module ``name`` reads from."""
    if isinstance(node, ast.Import):
        return [a.name[len("lakn."):] if a.name != "lakn" else PACKAGE_ROOT
                for a in node.names if a.name == "lakn" or a.name.startswith("lakn.")]
    if node.level == 0:
        if not (node.module == "lakn" or (node.module or "").startswith("lakn.")):
            return []
        base = (node.module or "")[len("lakn"):].lstrip(".")
    else:
        here = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
        up = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        base = ".".join([*up, *([node.module] if node.module else [])])
    targets = []
    for alias in node.names:  # `from . import objective` names a module, not a function
        candidate = f"{base}.{alias.name}" if base else alias.name
        targets.append(candidate if candidate in MODULES else (base or PACKAGE_ROOT))
    return targets


def _imports(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_resolve(name, node))
    return {t for t in found if t != name}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LEVEL)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_reaches_back_up(name):
    upward = sorted(t for t in _imports(name) if LEVEL.get(t, -1) >= LEVEL[name])
    assert upward == [], f"lakn.{name} imports from the same or a higher layer: {upward}"


def test_the_resolver_sees_relative_imports():
    assert {"objective", "hooks", "attribution.runners"} <= _imports("attribution.exact")
    assert "localization" in _imports("evaluation.runs")  # an import inside a function counts
    assert "selection" in _imports("scoring")  # `from . import selection as _selection`
    # what localization once did (`from . import __version__`) counts as reaching the very top
    node = ast.parse("from . import __version__").body[0]
    assert _resolve("localization", node) == [PACKAGE_ROOT] and LEVEL[PACKAGE_ROOT] > LEVEL["cli"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    if name in OVER_CAP:
        assert lines > MAX_LINES, f"lakn.{name} is back under the cap: drop it from OVER_CAP"
        pytest.xfail(OVER_CAP[name])
    assert lines <= MAX_LINES, f"lakn.{name} has {lines} lines: split it by idea"
