"""The result of a localisation run: scores, neuron sets and the configuration that made them.

On disk a run folder holds::

    config.json          every argument of the run (model, data and its SHA-256, method, steps, seed, versions)
    facts/<stem>.json    per-fact neuron sets and per-query statistics, written as each fact ends
    facts/<stem>.safetensors  per-fact score maps (LAA and per-language scores)
    neurons.json         {fact_id: {"lakn": [[layer, neuron], ...], "language_specific": {lang: [...]}}}
    scores.safetensors   final score maps (raw LAA and, when used, the fact-specific score)
    result.json          final neuron sets, selection rule, facts recomputed on resume, scores' SHA-256

``<stem>`` is :func:`lakn.facts.safe_file_stem` of the fact id (the id made safe plus 16 hex digits of
its SHA-256), so no id can name a file outside ``facts/``. Each per-fact ``.json`` carries what its
files were made from and checksums (format 2): the fact id, ``fact_sha256`` (its record's content,
:func:`lakn.facts.fact_sha256`), ``config_sha256`` (:meth:`lakn.config.RunConfig.record_sha256`),
``tensors_sha256`` (of the ``.safetensors`` bytes) and ``sha256`` (of the JSON payload itself, as
canonical JSON without that key). A resume loads a fact only when every check passes; otherwise it
reports the file and recomputes the fact (:func:`lakn.localize`). Folders of lakn 0.1.0 (files named
by the raw id, no checksums) still load: the raw name is read only when no new-style file exists, the
id passes :func:`lakn.facts.check_fact_id` and the file's stored id is that id; their contents are
checked for shape, languages and (on resume) the queries and answers they were made from.

Every file is written through a temporary file and a rename, so a crash never leaves half a file; the
per-fact ``.json`` is written last and marks the fact done. ``facts/`` is what makes a run resumable;
the other files are written when the run ends.

:class:`ResultTable` is the base of every experiment's result (one row per measurement plus the
settings that made it; ``save`` / ``load`` as JSON, ``to_dataframe``): see :mod:`lakn.evaluation`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from jaxtyping import Float
from torch import Tensor

from ._io import write_json_atomic
from .config import RunConfig
from .facts import FactsError, check_fact_id, safe_file_stem
from .hooks import Neuron

__all__ = ["LocalizationResult", "FactRecord", "ResultTable", "RunFolderError", "RunFolderWarning", "run_folder",
           "fact_files", "write_json_atomic", "FACT_FORMAT"]

T = TypeVar("T", bound="ResultTable")
FACT_FORMAT = 2
"""Format of the per-fact files this version writes (lakn 0.1.0's, without checksums, is format 1)."""


class RunFolderError(ValueError):
    """A run folder or one of its files cannot be used; the message (one line) names the file and why."""


class RunFolderWarning(UserWarning):
    """A resumed run found a per-fact file it cannot trust (it names the file) and recomputes the fact."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return _sha256(text.encode("utf-8", "surrogatepass"))


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tensor_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None, keep_dtype: bool = False) -> bytes:
    from safetensors.torch import save

    return save({k: (v.detach() if keep_dtype else v.detach().float()).contiguous().cpu() for k, v in tensors.items()},
                metadata=metadata)


def _read_tensors(path: Path, sha256: str | None = None) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file; a missing, unreadable or (with ``sha256``) changed file is
    a :class:`RunFolderError` naming it."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing") from None
    except OSError as err:
        raise RunFolderError(f"{path} cannot be read: {err.strerror or err}") from None
    if sha256 is not None and _sha256(data) != sha256:
        raise RunFolderError(f"{path} fails its checksum ({len(data):,} bytes: truncated, changed or replaced "
                             "since it was written)")
    try:
        return load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise RunFolderError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                             f"{str(err).splitlines()[0][:120] if str(err) else type(err).__name__}") from None


def _read_json(path: Path) -> Any:
    """A JSON file; a malformed one is a :class:`RunFolderError` naming it (a missing one a FileNotFoundError)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except OSError as err:
        raise RunFolderError(f"{path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise RunFolderError(f"{path} is not valid UTF-8 (corrupt?): bad byte at offset {err.start:,}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path} is not valid JSON (truncated or corrupt?): {err.msg} (line {err.lineno}, "
                             f"column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise RunFolderError(f"{path} is not valid JSON: {type(err).__name__}") from None


def _pairs(neurons) -> list[Neuron]:
    return [(int(l), int(n)) for l, n in neurons]


def run_folder(out: str | os.PathLike) -> Path:
    """``out`` with ``~`` expanded and made absolute, checked to be usable as a run folder; creates nothing.

    An existing file (not a folder), a path below a file, or a run folder whose ``facts`` or
    ``config.json`` has the wrong kind is a :class:`RunFolderError`; an unreadable ``config.json`` is a
    :class:`~lakn.config.RunConfigError`. Called before the model loads, so these fail at once.
    """
    path = Path(os.path.abspath(Path(out).expanduser()))
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder {path} exists and is a file, not a folder: choose another output folder")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise RunFolderError(f"run folder {path} cannot be made: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunFolderError(f"run folder {path} cannot be made: {parent} is not writable")
        return path
    for name, folder in (("facts", True), ("config.json", False), ("result.json", False)):
        inner = path / name
        if inner.exists() and inner.is_dir() != folder:
            kind = "a file" if folder else "a folder"
            raise RunFolderError(f"run folder {path}: {name} is {kind}; this is not a lakn run folder (choose another)")
    if (path / "config.json").exists():
        RunConfig.load(path / "config.json")  # raises RunConfigError naming the file
    return path


def fact_files(folder: Path, fact_id: str) -> tuple[Path, Path]:
    """The ``.json`` and ``.safetensors`` paths of a fact in ``folder`` (a run folder's ``facts/``)."""
    stem = safe_file_stem(fact_id)
    return folder / f"{stem}.json", folder / f"{stem}.safetensors"


def _legacy_files(folder: Path, fact_id: str) -> tuple[Path, Path] | None:
    """lakn 0.1.0's names (the raw id), only for an id that passes the safe-id rule."""
    try:
        check_fact_id(fact_id)
    except FactsError:
        return None
    return folder / f"{fact_id}.json", folder / f"{fact_id}.safetensors"


@dataclass
class FactRecord:
    """Everything computed for one fact before cross-fact scoring (what a resumed run reloads).

    ``fact_sha256`` and ``config_sha256`` say what it was made from (written with its files);
    ``recomputed_because`` is why a bad file of this fact was replaced, if one was. ``effects``: the
    causal selection's per-query maps (:class:`lakn.attribution.effects.EffectMaps` tensors, stored
    as they are, in ``<stem>.effects.safetensors`` with their SHA-256 in the JSON); empty otherwise.
    """

    fact_id: str
    relation: str
    laa: Float[Tensor, "layer d_mlp"]
    per_language: dict[str, Float[Tensor, "layer d_mlp"]]
    lakn: list[Neuron]
    language_specific: dict[str, list[Neuron]]
    queries: list[dict]  # one row per query: language, prompt, answer, probability, entropy, rank, ...
    seconds: float = 0.0
    rank: int = 0  # the process that computed it (data-parallel runs)
    fact_sha256: str = ""
    config_sha256: str = ""
    recomputed_because: str = ""
    effects: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def save(self, folder: Path) -> None:
        """Write the fact's two files (the ``.safetensors`` first, then the ``.json`` that marks it done)."""
        folder.mkdir(parents=True, exist_ok=True)
        json_path, tensor_path = fact_files(folder, self.fact_id)
        blob = _tensor_bytes({"laa": self.laa, **{f"lang.{k}": v for k, v in self.per_language.items()}},
                             metadata={"fact_id": self.fact_id})
        _write_bytes_atomic(tensor_path, blob)
        effects = _tensor_bytes(self.effects, keep_dtype=True) if self.effects else None
        if effects is not None:
            _write_bytes_atomic(tensor_path.with_suffix(".effects.safetensors"), effects)
        meta: dict[str, Any] = {
            "format": FACT_FORMAT,
            "fact_id": self.fact_id,
            "fact_sha256": self.fact_sha256,
            "config_sha256": self.config_sha256,
            "tensors": tensor_path.name,
            "tensors_sha256": _sha256(blob),
            "relation": self.relation,
            "lakn": [list(n) for n in self.lakn],
            "language_specific": {k: [list(n) for n in v] for k, v in self.language_specific.items()},
            "queries": self.queries,
            "seconds": self.seconds,
            "rank": self.rank,
            "recomputed_because": self.recomputed_because,
            **({} if effects is None else {"effects_sha256": _sha256(effects)}),
        }
        meta["sha256"] = _canonical_sha256(meta)
        write_json_atomic(json_path, meta)  # written last: marks the fact done

    @staticmethod
    def find(folder: Path, fact_id: str) -> tuple[Path, Path] | None:
        """The fact's files in ``folder``: the new names, else lakn 0.1.0's (safe ids only); None if neither."""
        for paths in (fact_files(folder, fact_id), _legacy_files(folder, fact_id)):
            if paths is not None and paths[0].is_file():
                return paths
        return None

    @staticmethod
    def done(folder: Path, fact_id: str) -> bool:
        return FactRecord.find(folder, fact_id) is not None

    @classmethod
    def load(cls, folder: Path, fact_id: str, *, config_sha256: str | None = None, fact_sha256: str | None = None,
             shape: tuple[int, int] | None = None, languages: Sequence[str] | None = None,
             queries: Sequence[tuple[str, str, str]] | None = None) -> "FactRecord":
        """Read and check a fact's files; any failed check is a :class:`RunFolderError` naming the file.

        Always checked: the stored id is ``fact_id``, the JSON's and the tensors' checksums, the
        fields' types. When given: the settings' hash (``config_sha256``), the fact record's hash
        (``fact_sha256``), the maps' ``shape``, the ``languages`` and the (language, prompt, answer)
        of every query (``queries``). Files of lakn 0.1.0 carry no hashes: for them only the id,
        types, shape, languages and queries are checked.
        """
        paths = cls.find(folder, fact_id)
        if paths is None:
            raise RunFolderError(f"{fact_files(folder, fact_id)[0]} is missing (fact {fact_id!r} not finished)")
        json_path, tensor_path = paths
        try:
            meta = _read_json(json_path)
        except FileNotFoundError as err:  # removed since find() saw it
            raise RunFolderError(str(err)) from None
        if not isinstance(meta, dict):
            raise RunFolderError(f"{json_path} is not a lakn fact file: expected a JSON object")
        legacy = "format" not in meta
        if meta.get("fact_id") != fact_id:
            raise RunFolderError(f"{json_path} holds fact {str(meta.get('fact_id'))[:80]!r}, not {fact_id!r} "
                                 "(a file copied over another fact's?)")
        if not legacy:
            if meta.get("format") != FACT_FORMAT:
                raise RunFolderError(f"{json_path} has format {str(meta.get('format'))[:20]!r}; this lakn reads "
                                     f"format {FACT_FORMAT}")
            body = {k: v for k, v in meta.items() if k != "sha256"}
            if meta.get("sha256") != _canonical_sha256(body):
                raise RunFolderError(f"{json_path} fails its checksum (changed after it was written)")
            if config_sha256 is not None and meta.get("config_sha256") != config_sha256:
                raise RunFolderError(f"{json_path} was made with other run settings than this run's "
                                     "(copied from another run folder?)")
            if fact_sha256 is not None and meta.get("fact_sha256") != fact_sha256:
                raise RunFolderError(f"{json_path} was made from another version of fact {fact_id!r} "
                                     "(its record in the data file changed)")
        tensors = _read_tensors(tensor_path, None if legacy else str(meta.get("tensors_sha256")))
        effects = ({} if "effects_sha256" not in meta else
                   _read_tensors(tensor_path.with_suffix(".effects.safetensors"), str(meta["effects_sha256"])))
        try:
            record = cls(
                fact_id=fact_id,
                relation=str(meta["relation"]),
                laa=tensors["laa"],
                per_language={k[5:]: v for k, v in tensors.items() if k.startswith("lang.")},
                lakn=_pairs(meta["lakn"]),
                language_specific={str(k): _pairs(v) for k, v in meta["language_specific"].items()},
                queries=[dict(q) for q in meta["queries"]],
                seconds=float(meta.get("seconds", 0.0)),
                rank=int(meta.get("rank", 0)),
                fact_sha256=str(meta.get("fact_sha256", "")),
                config_sha256=str(meta.get("config_sha256", "")),
                recomputed_because=str(meta.get("recomputed_because", "")),
                effects=effects,
            )
        except KeyError as err:
            raise RunFolderError(f"{json_path}: field {err} is missing ({tensor_path.name} or the JSON)") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise RunFolderError(f"{json_path}: a field has the wrong type ({str(err)[:100]})") from None
        record._check(json_path, shape, languages, queries)
        return record

    def _check(self, path: Path, shape, languages, queries) -> None:
        maps = [self.laa, *self.per_language.values()]
        if shape is not None and any(tuple(m.shape) != tuple(shape) for m in maps):
            raise RunFolderError(f"{path}: score maps of shape {tuple(self.laa.shape)}, expected {tuple(shape)} "
                                 "(made with another model?)")
        if languages is not None and set(self.per_language) != set(languages):
            raise RunFolderError(f"{path}: made for languages {sorted(self.per_language)}, not {sorted(languages)}")
        if queries is not None:
            stored = [(q.get("language"), q.get("prompt"), q.get("answer")) for q in self.queries]
            if stored != [tuple(q) for q in queries]:
                raise RunFolderError(f"{path} was made from other queries or answers than the data gives now")

    def _stored_here(self, folder: Path) -> bool:
        """True when ``folder`` already holds this record's files (by id and hashes; cheap: the JSON only)."""
        paths = self.find(folder, self.fact_id)
        if paths is None or not paths[1].is_file():
            return False
        try:
            meta = _read_json(paths[0])
        except (RunFolderError, FileNotFoundError):
            return False
        if not isinstance(meta, dict) or meta.get("fact_id") != self.fact_id:
            return False
        if "format" not in meta:  # lakn 0.1.0's file: kept when this record came from it
            return not self.fact_sha256 and not self.config_sha256
        body = {k: v for k, v in meta.items() if k != "sha256"}
        return (meta.get("sha256") == _canonical_sha256(body) and meta.get("fact_sha256") == self.fact_sha256
                and meta.get("config_sha256") == self.config_sha256)


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

    @property
    def recomputed(self) -> list[dict]:
        """The facts whose files were found bad on a resume and recomputed: ``{"fact_id", "reason"}``
        each (also in ``result.json``)."""
        return [{"fact_id": fid, "reason": rec.recomputed_because}
                for fid, rec in self.records.items() if rec.recomputed_because]

    def save(self, folder: str | os.PathLike, *, records: bool = True) -> Path:
        """Write the whole result (config, per-fact records, neurons.json, scores) to ``folder``.

        A per-fact file already in ``folder`` for the same fact, settings and record is kept;
        ``records=False`` writes none (:func:`lakn.localize` has written them as it went).
        """
        folder = Path(folder)
        try:
            (folder / "facts").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot make run folder {folder}: {err.strerror or err}") from None
        write_json_atomic(folder / "config.json", self.config)
        if records:
            config_sha256 = RunConfig.from_dict(self.config).record_sha256()
            for rec in self.records.values():
                if not rec.config_sha256:
                    rec.config_sha256 = config_sha256
                if not rec._stored_here(folder / "facts"):
                    rec.save(folder / "facts")
        tensors = {f"laa.{fid}": rec.laa for fid, rec in self.records.items()}
        tensors.update({f"specific.{fid}": s for fid, s in self.specific.items()})
        blob = _tensor_bytes(tensors)
        _write_bytes_atomic(folder / "scores.safetensors", blob)
        write_json_atomic(folder / "result.json", {
            "selection": self.selection,
            "fact_ids": self.fact_ids,
            "lakn": {k: [list(n) for n in v] for k, v in self.lakn.items()},
            "language_specific": {k: {l: [list(n) for n in s] for l, s in v.items()}
                                  for k, v in self.language_specific.items()},
            "recomputed": self.recomputed,
            "scores_sha256": _sha256(blob),
        })
        write_json_atomic(folder / "neurons.json", self.neurons_json())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "LocalizationResult":
        """Read a result written by :meth:`save` (or by ``lakn localize``).

        Every file is checked (JSON, checksums, ids, the settings each per-fact file was made with,
        shapes, languages); a missing or bad one is a one-line :class:`RunFolderError` naming it.
        """
        folder = Path(folder).expanduser()
        if not (folder / "result.json").is_file():
            raise FileNotFoundError(
                f"{folder} holds no finished localisation result (result.json missing); "
                "run or resume `lakn localize --out` on it first"
            )
        config = _read_json(folder / "config.json")
        try:
            run_config = RunConfig.from_dict(config)
        except (TypeError, ValueError, AttributeError) as err:
            raise RunFolderError(f"{folder / 'config.json'} is not a valid run configuration: {str(err)[:150]}") \
                from None
        path = folder / "result.json"
        result = _read_json(path)
        try:
            fact_ids = [str(fid) for fid in result["fact_ids"]]
            lakn = {str(k): _pairs(v) for k, v in result["lakn"].items()}
            language_specific = {str(k): {str(l): _pairs(s) for l, s in v.items()}
                                 for k, v in result["language_specific"].items()}
            selection = str(result["selection"])
            scores_sha256 = result.get("scores_sha256")
        except KeyError as err:
            raise RunFolderError(f"{path} is not a lakn result: field {err} is missing") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise RunFolderError(f"{path} is not a lakn result: a field has the wrong type ({str(err)[:100]})") \
                from None
        missing = [fid for fid in fact_ids if fid not in lakn or fid not in language_specific]
        if missing:
            raise RunFolderError(f"{path} is not a lakn result: no neuron sets for fact {missing[0][:80]!r}")
        tensors = _read_tensors(folder / "scores.safetensors", None if scores_sha256 is None else str(scores_sha256))
        shape = (run_config.n_layers, run_config.d_mlp) if run_config.n_layers and run_config.d_mlp else None
        records = {fid: FactRecord.load(folder / "facts", fid, config_sha256=run_config.record_sha256(), shape=shape,
                                        languages=run_config.languages or None)
                   for fid in fact_ids}
        return cls(
            config=config,
            records=records,
            lakn=lakn,
            language_specific=language_specific,
            selection=selection,
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
        data = _read_json(Path(path))
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"{path} is not a lakn result table (a JSON object with a list under 'rows')")
        if data.get("kind") not in (None, cls.__name__):
            raise ValueError(f"{path} holds a {data.get('kind')}, not a {cls.__name__}")
        return cls(rows=data["rows"], config=data.get("config", {}))
