"""The specificity trade-off: the fact's own drop against the unrelated drop as the neuron count k and
the contrast weights vary, one curve per method and selection, measured with the fair protocol.

For a finished localisation, each run's neurons are re-selected at every grid point: with the causal
selection through :func:`lakn.causal.reselect` (k, and the weights of the same-relation and the
other-relation contrast), otherwise as the first k of each fact's ranked neurons (the selection as it
was, cut shorter). Every grid point is measured in one batched :func:`~lakn.evaluation.change_rates`
call (suppress: neurons zeroed at all positions) on the same queries and the same unrelated facts::

    runs = lakn.load_runs("runs/causal")
    curve = lakn.tradeoff(model, runs, facts, ks=(10, 20, 40, 80), weights=((1, 0.25), (4, 1), (16, 4)))
    curve.save("runs/causal/tradeoff.json"); lakn.plotting.tradeoff_figure(curve).show()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..facts import Fact
from ..hooks import Neuron
from ..results import LocalizationResult, ResultTable
from .change_rates import change_rates
from .specificity import GROUPS

__all__ = ["TradeoffResult", "tradeoff", "Reselect"]

Reselect = Callable[..., Mapping[str, Sequence[Neuron]]]
"""``reselect(result, *, method, lam_same, lam_other, top_k) -> {fact_id: neurons}`` (:func:`lakn.causal.reselect`)."""

_CELL = ("", "_se", "_retention", "_retention_se", "_n_facts", "_n_queries")


@dataclass
class TradeoffResult(ResultTable):
    """One row per grid point: method, selection, k, lam_same, lam_other (NaN for a cut selection),
    the targets and how many got neurons, the mean neuron count, and per group of
    :data:`~lakn.evaluation.specificity.GROUPS` the change rate (mean over facts), its standard error,
    top-1 retention (and its s.e.) and the facts and queries behind it (columns ``<group><suffix>``,
    suffixes ``"", _se, _retention, _retention_se, _n_facts, _n_queries``). ``DIR/tradeoff.json``."""

    COLUMNS = ("method", "selection", "k", "lam_same", "lam_other", "n_targets", "facts_with_neurons",
               "mean_neurons", *(f"{g}{s}" for g in GROUPS for s in _CELL))

    def curves(self) -> dict[str, object]:
        """{curve label: its rows sorted by k}; a curve is one method, selection and weight pair."""
        df = self.to_dataframe()
        if df.empty:
            return {}
        return {curve_label(part.iloc[0]): part.sort_values("k").reset_index(drop=True)
                for _, part in df.groupby(["method", "selection", "lam_same", "lam_other"], dropna=False, sort=False)}

    def _summarize(self, df):
        keep = ["method", "selection", "k", "lam_same", "lam_other", "facts_with_neurons", "mean_neurons", "seen",
                "heldout_language", "same_relation_different_answer", "other_relations"]
        return df[[c for c in keep if c in df.columns]].round(3)


def curve_label(row) -> str:
    """``method · selection`` and, for a weighted selection, ``(λ same/other)``."""
    label = f"{row['method']} · {row['selection']}"
    if row.get("lam_same") == row.get("lam_same") and row.get("lam_same") is not None:
        label += f" (λ {row['lam_same']:g}/{row['lam_other']:g})"
    return label


def _causal_reselect() -> Reselect:
    from ..causal import reselect

    return reselect


def _prefix(result: LocalizationResult, k: int) -> dict[str, list[Neuron]]:
    return {fid: list(result.neurons(fid))[:k] for fid in result.fact_ids}


def tradeoff(
    model,
    runs: LocalizationResult | Mapping[str, LocalizationResult],
    facts: Sequence[Fact],
    *,
    ks: Sequence[int] = (10, 20, 40, 80),
    weights: Sequence[tuple[float, float]] = ((4.0, 1.0),),
    methods: Sequence[str] | None = None,
    reselect: Reselect | None = None,
    unrelated: Sequence[Fact] | None = None,
    languages: Sequence[str] | None = None,
    top_k_answer: int = 10,
    max_queries: int | None = 3,
    max_unrelated: int | None = 16,
    max_same_relation: int | None = None,
    unrelated_per_relation: int | None = 8,
    seed: int = 0,
    first_token_only: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> TradeoffResult:
    """Measure own against unrelated drop over a grid of neuron counts ``ks`` and contrast
    ``weights`` ((lam_same, lam_other) pairs), one curve per method and selection.

    ``runs``: one result or {name: result} (:func:`~lakn.evaluation.load_runs`). A run re-selects with
    ``reselect`` when one is given, or with :func:`lakn.causal.reselect` when it was localised with
    the causal selection: once per method of ``methods`` (default: the run's method), weight pair and
    k. Any other run is cut to the first k of each fact's neurons (weights do not apply). ``facts``
    and the protocol's options are those of :func:`~lakn.evaluation.change_rates` (the unrelated
    facts come from ``facts`` minus the run's, unless ``unrelated`` is given);
    ``first_token_only`` defaults to the first run's setting.
    """
    if isinstance(runs, LocalizationResult):
        runs = {str(runs.config.get("method", "run")): runs}
    if not runs:
        raise ValueError("tradeoff needs at least one localisation result")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be neuron counts >= 1, got {list(ks)}")
    first = next(iter(runs.values()))
    points: dict[str, dict] = {}
    sets: dict[str, dict[str, list[Neuron]]] = {}
    for name, result in runs.items():
        run_method = str(result.config.get("method", name))
        chooser = reselect
        if chooser is None and result.selection == "causal":
            chooser = _causal_reselect()
        if chooser is None:
            for k in ks:
                label = f"{name}|{result.selection}|{k}"
                points[label] = dict(method=run_method, selection=result.selection, k=k, lam_same=float("nan"),
                                     lam_other=float("nan"))
                sets[label] = _prefix(result, k)
            continue
        for method in methods or [run_method]:
            for lam_same, lam_other in weights:
                for k in ks:
                    label = f"{name}|{method}|causal|{k}|{lam_same}|{lam_other}"
                    points[label] = dict(method=method, selection="causal", k=k, lam_same=float(lam_same),
                                         lam_other=float(lam_other))
                    chosen = chooser(result, method=method, lam_same=float(lam_same), lam_other=float(lam_other),
                                     top_k=k)
                    sets[label] = {fid: list(n) for fid, n in chosen.items()}
    if first_token_only is None:
        first_token_only = bool(first.config.get("first_token_only"))
    rates = change_rates(model, sets, facts, result=first, unrelated=unrelated, languages=languages,
                         interventions={"suppress": 0.0}, top_k_answer=top_k_answer, max_queries=max_queries,
                         max_unrelated=max_unrelated, max_same_relation=max_same_relation,
                         unrelated_per_relation=unrelated_per_relation, seed=seed, first_token_only=first_token_only,
                         batch_size=batch_size, progress=progress)
    summary = rates.specificity(intervention="suppress")
    targets = sorted({fid for per in sets.values() for fid in per} & {f.fact_id for f in facts})
    rows = []
    for label, point in points.items():
        per = {fid: sets[label].get(fid, []) for fid in targets}
        with_neurons = [fid for fid in targets if per[fid]]
        row = dict(point, n_targets=len(targets), facts_with_neurons=len(with_neurons),
                   mean_neurons=(sum(len(per[f]) for f in with_neurons) / len(with_neurons)) if with_neurons else 0.0)
        part = summary[summary["method"] == label].set_index("group")
        for g in GROUPS:
            has = g in part.index
            for suffix, col in zip(_CELL, ("change", "change_se", "retention", "retention_se", "n_facts",
                                           "n_queries")):
                value = part.loc[g, col] if has else (0 if col.startswith("n_") else float("nan"))
                row[f"{g}{suffix}"] = int(value) if col.startswith("n_") else float(value)
        rows.append(row)
    config = dict(ks=ks, weights=[list(map(float, w)) for w in weights], methods=list(methods) if methods else None,
                  runs=list(runs), evaluation={k: v for k, v in rates.config.items() if k not in ("n_neurons",)})
    return TradeoffResult(rows, config)
