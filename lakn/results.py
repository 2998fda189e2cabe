"""The result of a localisation run: scores, neuron sets and the configuration that made them.

On disk a run folder holds::

    config.json          every argument of the run (model, data, method, steps, seed, version)
    facts/<id>.json      per-fact neuron sets and per-query statistics, written as each fact ends
    facts/<id>.safetensors  per-fact score maps (LAA and per-language scores)
    neurons.json         {fact_id: {"lakn": [[layer, neuron], ...], "language_specific": {lang: [...]}}}
    scores.safetensors   final score maps (raw LAA and, when used, the fact-specific score)
    result.json          final neuron sets, selection rule, query statistics

``facts/`` is what makes a run resumable; the other files are written when the run ends.

:class:`ResultTable` is the base of every experiment's result (one row per measurement plus the
settings that made it; ``save`` / ``load`` as JSON, ``to_dataframe``): see :mod:`lakn.evaluation`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from jaxtyping import Float
from torch import Tensor

from ._io import write_json_atomic
from .config import RunConfig
from .hooks import Neuron

__all__ = ["LocalizationResult", "FactRecord", "ResultTable", "write_json_atomic"]

T = TypeVar("T", bound="ResultTable")


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _pairs(neurons) -> list[Neuron]:
    return [(int(l), int(n)) for l, n in neurons]


@dataclass
class FactRecord:
    """Everything computed for one fact before cross-fact scoring (what a resumed run reloads)."""

    fact_id: str
    relation: str
    laa: Float[Tensor, "layer d_mlp"]
    per_language: dict[str, Float[Tensor, "layer d_mlp"]]
    lakn: list[Neuron]
    language_specific: dict[str, list[Neuron]]
    queries: list[dict]  # one row per query: language, prompt, answer, probability, entropy, rank, ...
    seconds: float = 0.0
    rank: int = 0  # the process that computed it (data-parallel runs)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"laa": self.laa, **{f"lang.{k}": v for k, v in self.per_language.items()}}
        _save_tensors(folder / f"{self.fact_id}.safetensors", tensors)
        meta = {
            "fact_id": self.fact_id,
            "relation": self.relation,
            "lakn": self.lakn,
            "language_specific": self.language_specific,
            "queries": self.queries,
            "seconds": self.seconds,
            "rank": self.rank,
        }
        write_json_atomic(folder / f"{self.fact_id}.json", meta)  # written last: marks the fact done

    @classmethod
    def load(cls, folder: Path, fact_id: str) -> "FactRecord":
        meta = json.loads((folder / f"{fact_id}.json").read_text())
        tensors = _load_tensors(folder / f"{fact_id}.safetensors")
        return cls(
            fact_id=meta["fact_id"],
            relation=meta["relation"],
            laa=tensors["laa"],
            per_language={k[5:]: v for k, v in tensors.items() if k.startswith("lang.")},
            lakn=_pairs(meta["lakn"]),
            language_specific={k: _pairs(v) for k, v in meta["language_specific"].items()},
            queries=meta["queries"],
            seconds=meta.get("seconds", 0.0),
            rank=meta.get("rank", 0),
        )

    @staticmethod
    def done(folder: Path, fact_id: str) -> bool:
        return (folder / f"{fact_id}.json").is_file() and (folder / f"{fact_id}.safetensors").is_file()


@dataclass
class LocalizationResult:
    """LAKNs and scores of a set of facts, with the configuration that produced them.

    Example::

        result = lakn.localize(model, facts, languages=["en", "fr", "zh"])
        result.neurons("capital_france")       # [(layer, neuron), ...]
        result.to_dataframe().head()
        result.save("runs/demo"); lakn.LocalizationResult.load("runs/demo")
    """

    config: dict
    records: dict[str, FactRecord]
    lakn: dict[str, list[Neuron]]
    language_specific: dict[str, dict[str, list[Neuron]]]
    selection: str  # "raw" (LAA) or "specific" (LAA against reference facts) or "sets" (kn/amig)
    specific: dict[str, Float[Tensor, "layer d_mlp"]] = field(default_factory=dict)

    @property
    def fact_ids(self) -> list[str]:
        return list(self.records)

    @property
    def languages(self) -> list[str]:
        return list(self.config.get("languages", []))

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.records.values())).laa.shape[0])

    @property
    def d_mlp(self) -> int:
        return int(next(iter(self.records.values())).laa.shape[1])

    @property
    def run_config(self) -> RunConfig:
        """:attr:`config` as a typed :class:`~lakn.config.RunConfig`."""
        return RunConfig.from_dict(self.config)

    def neurons(self, fact_id: str) -> list[Neuron]:
        """The LAKNs of one fact as (layer, neuron) pairs, best first."""
        if fact_id not in self.lakn:
            raise KeyError(f"fact {fact_id!r} is not in this result; facts: {self.fact_ids[:10]}")
        return list(self.lakn[fact_id])

    def score(self, fact_id: str) -> Float[Tensor, "layer d_mlp"]:
        """The score map that selected the LAKNs (fact-specific when used, else raw LAA)."""
        return self.specific.get(fact_id, self.records[fact_id].laa)

    def neurons_json(self) -> dict:
        return {
            fid: {"lakn": [list(n) for n in self.lakn[fid]],
                  "language_specific": {k: [list(n) for n in v] for k, v in self.language_specific[fid].items()}}
            for fid in self.records
        }

    def to_dataframe(self):
        """One row per selected neuron: fact, relation, kind (lakn / language_specific), language,
        layer, neuron, score, raw LAA."""
        import pandas as pd

        rows = []
        for fid, rec in self.records.items():
            score = self.score(fid)
            for rank, (l, n) in enumerate(self.lakn[fid]):
                rows.append(dict(fact_id=fid, relation=rec.relation, kind="lakn", language="*", layer=l,
                                 neuron=n, rank=rank, score=float(score[l, n]), laa=float(rec.laa[l, n])))
            for lang, neurons in self.language_specific[fid].items():
                s = rec.per_language[lang]
                for rank, (l, n) in enumerate(neurons):
                    rows.append(dict(fact_id=fid, relation=rec.relation, kind="language_specific", language=lang,
                                     layer=l, neuron=n, rank=rank, score=float(s[l, n]), laa=float(rec.laa[l, n])))
        columns = ["fact_id", "relation", "kind", "language", "layer", "neuron", "rank", "score", "laa"]
        return pd.DataFrame(rows, columns=columns)

    def queries_dataframe(self):
        """One row per query: its language, prompt, answer, P(answer), entropy, rank, IG completeness error."""
        import pandas as pd

        return pd.DataFrame([dict(fact_id=fid, **q) for fid, rec in self.records.items() for q in rec.queries])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the whole result (config, per-fact records, neurons.json, scores) to ``folder``."""
        folder = Path(folder)
        (folder / "facts").mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "config.json", self.config)
        for rec in self.records.values():
            if not FactRecord.done(folder / "facts", rec.fact_id):
                rec.save(folder / "facts")
        tensors = {f"laa.{fid}": rec.laa for fid, rec in self.records.items()}
        tensors.update({f"specific.{fid}": s for fid, s in self.specific.items()})
        _save_tensors(folder / "scores.safetensors", tensors)
        write_json_atomic(folder / "result.json", {
            "selection": self.selection,
            "fact_ids": self.fact_ids,
            "lakn": {k: [list(n) for n in v] for k, v in self.lakn.items()},
            "language_specific": {k: {l: [list(n) for n in s] for l, s in v.items()}
                                  for k, v in self.language_specific.items()},
        })
        write_json_atomic(folder / "neurons.json", self.neurons_json())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "LocalizationResult":
        """Read a result written by :meth:`save` (or by ``lakn localize``)."""
        folder = Path(folder)
        if not (folder / "result.json").is_file():
            raise FileNotFoundError(
                f"{folder} holds no finished localisation result (result.json missing); "
                "run or resume `lakn localize --out` on it first"
            )
        config = json.loads((folder / "config.json").read_text())
        result = json.loads((folder / "result.json").read_text())
        tensors = _load_tensors(folder / "scores.safetensors")
        records = {fid: FactRecord.load(folder / "facts", fid) for fid in result["fact_ids"]}
        return cls(
            config=config,
            records=records,
            lakn={k: _pairs(v) for k, v in result["lakn"].items()},
            language_specific={k: {l: _pairs(s) for l, s in v.items()} for k, v in result["language_specific"].items()},
            selection=result["selection"],
            specific={k[9:]: v for k, v in tensors.items() if k.startswith("specific.")},
        )


@dataclass
class ResultTable:
    """Rows of one experiment and the settings that made it; subclasses add a ``table()`` summary.

    On disk: ``{"kind": <class name>, "config": {...}, "rows": [{...}, ...]}``; ``load`` refuses a
    file of another kind, so each file has one schema that readers address by column name.
    """

    rows: list[dict]
    config: dict = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self):
        """The summary the CLI prints: :meth:`_summarize` of the rows (an empty frame without rows)."""
        df = self.to_dataframe()
        return df if df.empty else self._summarize(df)

    def _summarize(self, df):
        """The experiment's summary of a non-empty row frame (subclasses define it)."""
        return df

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"kind": type(self).__name__, "config": self.config, "rows": self.rows})
        return path

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"{path} is not a lakn result table (a JSON object with a list under 'rows')")
        if data.get("kind") not in (None, cls.__name__):
            raise ValueError(f"{path} holds a {data.get('kind')}, not a {cls.__name__}")
        return cls(rows=data["rows"], config=data.get("config", {}))
