"""One self-contained HTML page for a run folder (``lakn report DIR``): everything a researcher looks at.

The page works offline and alone (plotly's JavaScript is inlined once; no CDN, no network):

- the run's configuration;
- summary tables: queries answered per language, neurons per fact, and the evaluation, enhancement
  and editing tables when ``DIR/eval.json``, ``DIR/enhance.json``, ``DIR/edit.json`` exist (read
  through their result classes' ``load()``);
- every figure of ``lakn plot`` (:func:`lakn.plotting.run_figures`);
- a card per fact: its LAKNs (layer, index, selection score, LAA, per-language scores), the tokens
  each LAKN's output vector promotes most (``W_out`` row x ``W_U``, a direct logit attribution that
  ignores the final norm; shown per script), and the run's queries that activate it most
  (``blocks.{l}.mlp.hook_post`` at the answer position). These two need the model: pass it, or
  the page loads the one named in the run's configuration, and leaves them out with a note when
  it cannot.

Every string from data or configuration is escaped (:func:`html.escape`): fact ids, prompts,
answers and tokens never become markup. The page records its own JavaScript errors (shown at the
bottom, and as ``data-js-errors`` on ``<body>``)::

    path = lakn.report.write_report("runs/demo")              # runs/demo/report.html
    path = lakn.report.write_report("runs/demo", model=model)  # reuse a loaded model
"""

from __future__ import annotations

import html
import json
import math
import os
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["write_report", "report_html", "promoted_tokens", "top_activating_queries", "token_script"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:0;color:#1f2933;background:#fff}
header{background:#1f2933;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cbd2d9;font-size:14px}nav{padding:8px 28px;border-bottom:1px solid #e4e7eb;font-size:14px}
nav a{margin-right:16px;color:#2563eb;text-decoration:none}main{padding:0 28px 40px}
h2{margin-top:32px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}h3{margin-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}th,td{border:1px solid #d9dee3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f7fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#7b8794;font-size:13px}.figure{margin:12px 0 24px;border:1px solid #e4e7eb}
.card{border:1px solid #d9dee3;border-radius:6px;padding:10px 16px;margin:16px 0;background:#fbfcfd}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;background:#eef2f7;border-radius:3px;padding:0 3px;margin:0 2px;white-space:pre}
.own{font-weight:600}pre{background:#f5f7fa;padding:8px;overflow:auto;font-size:12px}details{margin:6px 0}
#js-errors{color:#b91c1c;white-space:pre-wrap}
"""

# Installed first: collects JavaScript errors so the page (and its browser test) can report them.
_ERROR_COLLECTOR = """
window.__laknErrors = [];
window.addEventListener("error", function (e) { window.__laknErrors.push(String(e.message || e)); });
window.addEventListener("unhandledrejection", function (e) { window.__laknErrors.push("unhandled rejection: " + String(e.reason)); });
"""
_STATUS = """
function laknStatus() {
  document.body.setAttribute("data-js-errors", String(window.__laknErrors.length));
  document.body.setAttribute("data-plots", String(document.querySelectorAll(".js-plotly-plot").length));
  var box = document.getElementById("js-errors");
  if (box) { box.textContent = window.__laknErrors.length ? "JavaScript errors:\\n" + window.__laknErrors.join("\\n") : ""; }
}
window.addEventListener("load", function () { laknStatus(); setTimeout(laknStatus, 300); });
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return _e(f"{value:.4g}")
    if isinstance(value, int):
        return _e(value)
    if isinstance(value, (list, dict, tuple)):
        return _e(json.dumps(value, ensure_ascii=False))
    return _e(value)


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None, *, raw: Sequence[str] = ()) -> str:
    """An HTML table of dict rows, every cell escaped (except the pre-built HTML columns in ``raw``)."""
    if not rows:
        return '<p class="note">(no rows)</p>'
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_fmt(v)}</td>' if num else f"<td>{v if c in raw else _fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _frame_rows(df) -> list[dict]:
    """Rows of a (possibly multi-indexed) DataFrame as plain dicts."""
    if df is None or len(df) == 0:
        return []
    if not (df.index.nlevels == 1 and df.index.name is None):
        df = df.reset_index()
    out = []
    for rec in df.to_dict("records"):
        out.append({str(k): (v.item() if hasattr(v, "item") else v) for k, v in rec.items()})
    return out


# --------------------------------------------------------------------------- model-dependent parts


_SCRIPT_NAMES = {"CJK": "Han", "HIRAGANA": "Kana", "KATAKANA": "Kana", "HANGUL": "Hangul"}
# Letter variants whose Unicode name starts with a form, not a script ("FULLWIDTH LATIN ...", "MATHEMATICAL BOLD ...")
_FORMS = {"FULLWIDTH", "HALFWIDTH", "MATHEMATICAL", "DOUBLE-STRUCK", "MODIFIER", "SMALL", "CIRCLED", "PARENTHESIZED",
          "SCRIPT", "BLACK-LETTER", "SUPERSCRIPT", "SUBSCRIPT", "NEGATIVE", "SQUARED", "LETTERLIKE"}
_SCRIPT_WORDS = ("LATIN", "GREEK", "CYRILLIC", "ARABIC", "HEBREW", "KATAKANA", "HIRAGANA", "HANGUL", "CJK")


def _char_script(ch: str) -> str:
    words = unicodedata.name(ch, "UNKNOWN").split()
    if words[0] in _FORMS:
        found = next((w for w in words if w in _SCRIPT_WORDS), "LATIN")  # bare math letters are Latin forms
        return _SCRIPT_NAMES.get(found, found.title())
    return _SCRIPT_NAMES.get(words[0], words[0].title())


def token_script(text: str) -> str:
    """The script most letters of ``text`` belong to (``Latin``, ``Cyrillic``, ``Han``, ``Kana``, ...),
    ``"none"`` when it has no letters (digits, punctuation, spaces, byte pieces)."""
    counts: dict[str, int] = {}
    for ch in text:
        if unicodedata.category(ch).startswith("L"):
            script = _char_script(ch)
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=lambda s: counts[s]) if counts else "none"


def _scripts_of(languages: Sequence[str]) -> list[str]:
    """The scripts the run's languages are written in (lakn.facts.LANGUAGES), e.g. ja -> Kana, Han."""
    from .facts import LANGUAGES

    out: list[str] = []
    for lang in languages:
        for script in LANGUAGES.get(lang, ("", ""))[1].split("/"):
            if script and script not in out:
                out.append(script)
    return out


def _w_u(model) -> Float[Tensor, "d_model d_vocab"]:
    w = getattr(model, "W_U", None)
    if w is None:
        raise AttributeError("the model exposes no W_U")
    return w.detach()


def promoted_tokens(model, layer: int, neuron: int, *, per_script: int = 5, pool: int = 2000
                    ) -> dict[str, list[tuple[str, float]]]:
    """Tokens a neuron's output vector promotes most, grouped by script.

    The neuron writes ``a * W_out[neuron]`` into the residual stream; ``W_out[neuron] @ W_U`` is
    its direct effect on every token's logit (final norm ignored). The ``pool`` highest tokens are
    grouped by :func:`token_script` and the best ``per_script`` of each script are returned,
    scripts ordered by their best token: ``{script: [(token text, logit effect), ...]}``.
    """
    from .weights import w_out

    weight, dim = w_out(model, layer)
    row = weight.detach().select(dim, int(neuron)).float()
    w_u = _w_u(model).float().to(row.device)
    effect = row @ w_u  # [d_vocab]
    k = min(int(pool), effect.numel())
    values, ids = torch.topk(effect, k)
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    groups: dict[str, list[tuple[str, float]]] = {}
    for v, i in zip(values.tolist(), ids.tolist()):
        if i in special:
            continue
        text = model.tokenizer.decode([i])
        if "\ufffd" in text:  # a piece of a multi-byte character: no readable text on its own
            continue
        script = token_script(text)
        if script == "none":
            continue
        bucket = groups.setdefault(script, [])
        if len(bucket) < per_script:
            bucket.append((text, float(v)))
    return groups


@dataclass(frozen=True)
class _Prompt:
    fact_id: str
    language: str
    prompt: str
    answer: str


def top_activating_queries(model, neurons: Sequence[tuple[int, int]], prompts: Sequence[_Prompt | dict], *,
                           top: int = 5, batch_size: int = 16) -> dict[tuple[int, int], list[tuple[float, Any]]]:
    """For each neuron, the ``top`` prompts on which its activation at the answer position (the
    prompt's last token, ``blocks.{l}.mlp.hook_post``) is highest: ``{(layer, neuron): [(activation,
    prompt), ...]}``. Prompts run in right-padded batches (a causal LM's real positions never see
    the padding); only the last position is unembedded."""
    from .hooks import hook_name
    from .tokens import logits_at

    neurons = [(int(l), int(n)) for l, n in neurons]
    if not neurons or not prompts:
        return {nr: [] for nr in neurons}
    by_layer: dict[int, list[int]] = {}
    for l, n in neurons:
        by_layer.setdefault(l, [])
        if n not in by_layer[l]:
            by_layer[l].append(n)
    device = next(model.parameters()).device
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    encoded = [model.to_tokens(p.prompt if isinstance(p, _Prompt) else p["prompt"])[0].cpu() for p in prompts]
    acts = {l: torch.zeros(len(prompts), len(ns)) for l, ns in by_layer.items()}
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens[row, : len(encoded[i])] = encoded[i]
        rows = torch.arange(len(chunk))
        last = torch.tensor([len(encoded[i]) - 1 for i in chunk])
        got: dict[int, Tensor] = {}

        def capture(layer: int, rows: Tensor, last: Tensor, got: dict):
            idx = torch.tensor(by_layer[layer])

            def fn(act: Float[Tensor, "batch pos d_mlp"], hook):
                got[layer] = act[rows.to(act.device), last.to(act.device)][:, idx.to(act.device)].detach().float().cpu()
                return act

            return fn

        hooks = [(hook_name(l), capture(l, rows, last, got)) for l in by_layer]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits_at(model, tokens.to(device), 1)
        for l in by_layer:
            acts[l][torch.tensor(chunk)] = got[l]
    out = {}
    for l, n in neurons:
        column = acts[l][:, by_layer[l].index(n)]
        k = min(int(top), len(prompts))
        vals, idx = torch.topk(column, k)
        out[(l, n)] = [(float(v), prompts[i]) for v, i in zip(vals.tolist(), idx.tolist())]
    return out


# The name lakn.load_model() records for its embedded default (the hub name of the weights it was
# quantised from). Loading that name would go to the hub; the embedded copy is what the run used.
EMBEDDED_NAME = "google/gemma-3-270m"


def _load_run_model(config: dict, model) -> tuple[Any, str]:
    """(model or None, what was loaded or why not): the given model, a name or path to load, or the
    model named in the run's configuration (``config["model"]``). The embedded default's recorded
    name loads the embedded model (offline), and the hub only if that fails."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model, "the model passed in"
    from .models import DEFAULT_MODEL, load_model

    name = str(model) if model is not None else str(config.get("model") or "")
    if not name:
        return None, "the run's configuration names no model (pass one: lakn report DIR --model NAME)"
    embedded = name in (EMBEDDED_NAME, DEFAULT_MODEL)
    tries: list = [None, name] if embedded else [name]
    error: Exception | None = None
    for t in tries:
        try:
            loaded = load_model(t)
        except Exception as err:  # any failure only removes the model-dependent parts
            error = err
            continue
        return loaded, (f"the embedded Gemma 3 270M (recorded as {name!r})" if t is None else repr(name))
    return None, f"model {name!r} could not be loaded ({type(error).__name__}: {error})"


# --------------------------------------------------------------------------- sections


def _summary_sections(result) -> str:
    df = result.queries_dataframe()
    parts = ['<h2 id="summary">Summary</h2>']
    rows = []
    if len(df):
        for lang in dict.fromkeys(df["language"]):
            d = df[df["language"] == lang]
            rows.append({"language": lang, "queries": int(len(d)), "top-1 answered": int((d["rank"] == 0).sum()),
                         "share top-1": f"{(d['rank'] == 0).mean():.0%}",
                         "top-10 answered": int((d["rank"] < 10).sum()), "share top-10": f"{(d['rank'] < 10).mean():.0%}",
                         "mean P(answer)": float(d["probability"].mean()), "mean entropy": float(d["entropy"].mean())})
    parts.append("<h3>Queries answered per language</h3>"
                 '<p class="note">The localisation\'s queries: rank of the answer\'s first token before any '
                 "intervention (0 = the model's top prediction), P(answer) and normalised entropy.</p>")
    parts.append(_table(rows))
    rows = []
    for fid, rec in result.records.items():
        lakn = result.lakn.get(fid, [])
        row = {"fact": fid, "relation": rec.relation, "LAKNs": len(lakn),
               "layers": ", ".join(str(l) for l in sorted({l for l, _ in lakn})) or "—"}
        for lang in result.languages:
            row[f"specific {lang}"] = len(result.language_specific.get(fid, {}).get(lang, []))
        row["queries"] = len(rec.queries)
        row["seconds"] = float(rec.seconds)
        rows.append(row)
    parts.append("<h3>Neurons per fact</h3>")
    parts.append(_table(rows))
    return "\n".join(parts)


def _experiment_sections(run_dir: Path) -> str:
    from .evaluation import ChangeRateResult, EditingResult, EnhancementResult

    items = [("eval.json", ChangeRateResult, "Suppression and enhancement: probability change rates (mean over facts)"),
             ("enhance.json", EnhancementResult, "Knowledge enhancement in languages the model got wrong"),
             ("edit.json", EditingResult, "Cross-lingual editing through W_out rows")]
    parts = []
    for name, cls, title in items:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            res = cls.load(path)
            table = _frame_rows(res.table())
            body = _table(table)
            if name == "eval.json":
                c = res.config
                if "n_kept" in c:
                    splits = ", ".join(f"{k} {v}" for k, v in c.get("kept_by_split", {}).items())
                    body = (f'<p class="note">queries kept (first answer token in the top '
                            f'{_e(c.get("top_k_answer", "?"))}): {_e(c.get("n_kept"))}/{_e(c.get("n_queries"))}; '
                            f"by split: {_e(splits)}. Each cell is the mean over facts of (P_after − P_before) / "
                            "P_before (−1: the answer is gone; +1: its probability doubled).</p>" + body)
        except Exception as err:  # a file of another shape: say so, keep the rest of the page
            body = f'<p class="note">{_e(name)} could not be read as a {_e(cls.__name__)}: {_e(err)}</p>'
        parts.append(f"<h3>{_e(title)} <span class=\"note\">({_e(name)})</span></h3>{body}")
    if not parts:
        return ('<h2 id="experiments">Evaluation and editing</h2><p class="note">No eval.json, enhance.json or '
                "edit.json in the run folder (run <code>lakn evaluate DIR</code> / <code>lakn edit DIR</code>).</p>")
    return '<h2 id="experiments">Evaluation and editing</h2>' + "\n".join(parts)


def _figure_section(figs: dict) -> tuple[str, int]:
    parts = ['<h2 id="figures">Figures</h2>',
             f'<p class="note">The {len(figs)} figures of <code>lakn plot</code>; hover for values.</p>']
    for i, (stem, fig) in enumerate(figs.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"lakn-fig-{i}", default_height="460px",
                          default_width="100%", config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="figure" data-figure="{_e(stem)}">{div}</div>')
    return "\n".join(parts), len(figs)


def _tokens_html(groups: dict[str, list[tuple[str, float]]], first: Sequence[str] = (), max_scripts: int = 6) -> str:
    """Promoted tokens per script: the scripts in ``first`` (the run's languages'), then the others
    by their best token, ``max_scripts`` in all."""
    if not groups:
        return '<span class="note">no letter tokens among the top</span>'
    order = [s for s in first if s in groups] + [s for s in groups if s not in first]
    lines = []
    for script in order[:max_scripts]:
        toks = groups[script]
        shown = " ".join('<span class="tok" title="' + _e(format(v, "+.3f")) + '">' + _e(t.replace(" ", "␣"))
                         + "</span>" for t, v in toks)
        lines.append(f"<b>{_e(script)}</b>: {shown}")
    hidden = len(order) - max_scripts
    return "<br>".join(lines) + (f'<br><span class="note">+{hidden} more scripts</span>' if hidden > 0 else "")


def _card(result, fid: str, promoted: dict | None, activating: dict | None) -> str:
    rec = result.records[fid]
    lakn = result.lakn.get(fid, [])
    score = result.score(fid)
    which = "fact-specific LAA" if fid in result.specific else "LAA"
    langs = [lang for lang in result.languages if lang in rec.per_language] + [
        lang for lang in rec.per_language if lang not in result.languages]
    head = (f'<div class="card" id="fact-{_e(fid)}"><h3>{_e(fid)} <span class="note">relation {_e(rec.relation)}; '
            f"{len(lakn)} LAKNs; selection by {_e(result.selection)} score</span></h3>")
    first: dict[str, dict] = {}  # one localised query per language: what the fact is
    for q in rec.queries:
        first.setdefault(q["language"], q)
    if first:
        head += ('<p class="note">' + " · ".join(
            f"{_e(lang)}: {_e(q['prompt'])} → <b>{_e(q['answer'])}</b>" for lang, q in first.items()) + "</p>")
    if not lakn:
        return head + '<p class="note">No LAKN selected for this fact.</p></div>'
    rows = []
    for rank, (l, n) in enumerate(lakn):
        row = {"#": rank + 1, "layer": l, "neuron": n, which: float(score[l, n]), "raw LAA": float(rec.laa[l, n])}
        for lang in langs:
            row[f"s_{lang}"] = float(rec.per_language[lang][l, n])
        if promoted is not None:
            row["promoted tokens (W_out row x W_U, per script)"] = _tokens_html(promoted.get((l, n), {}),
                                                                                _scripts_of(result.languages))
        if activating is not None:
            items = []
            for act, p in activating.get((l, n), []):
                cls = ' class="own"' if p.fact_id == fid else ""
                items.append(f"<li{cls}>{_e(f'{act:.3f}')} · {_e(p.fact_id)} ({_e(p.language)}): "
                             f"{_e(p.prompt)} → {_e(p.answer)}</li>")
            row["queries that activate it most"] = f"<ol>{''.join(items)}</ol>" if items else "—"
        rows.append(row)
    raw = ["promoted tokens (W_out row x W_U, per script)", "queries that activate it most"]
    spec = ", ".join(f"{_e(lang)}: {len(v)}" for lang, v in result.language_specific.get(fid, {}).items())
    return (head + _table(rows, raw=raw) + (f'<p class="note">language-specific neurons: {spec}</p>' if spec else "")
            + "</div>")


def _config_section(config: dict) -> str:
    rows = []
    long = {}
    for k, v in config.items():
        if isinstance(v, (dict, list)) and len(json.dumps(v, ensure_ascii=False)) > 120:
            long[k] = v
            continue
        rows.append({"setting": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v, ensure_ascii=False)})
    extra = "".join(f"<details><summary>{_e(k)}</summary><pre>{_e(json.dumps(v, ensure_ascii=False, indent=1))}</pre>"
                    "</details>" for k, v in long.items())
    return '<h2 id="config">Configuration</h2>' + _table(rows, ["setting", "value"]) + extra


# --------------------------------------------------------------------------- page


def report_html(run_dir: str | os.PathLike, *, model=None, load_model: bool = True, max_facts: int | None = None,
                figure_facts: int = 5, top_tokens: int = 5, top_queries: int = 5, batch_size: int = 16) -> str:
    """The report page of a run folder as one HTML string (see :func:`write_report`)."""
    import plotly.offline

    from .plotting import read_eval_table, run_figures
    from .results import LocalizationResult

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    result = LocalizationResult.load(run_dir)
    config = result.config
    figs = run_figures(result, eval_table=read_eval_table(run_dir / "eval.json"), max_facts=figure_facts)
    figures_html, n_figs = _figure_section(figs)

    fact_ids = result.fact_ids[:max_facts] if max_facts is not None else result.fact_ids
    notes: list[str] = []
    if load_model or model is not None:
        loaded, why = _load_run_model(config, model)
    else:
        loaded, why = None, "no model (load_model=False, lakn report --no-model)"
    promoted = activating = None
    if loaded is None:
        notes.append(f"Promoted tokens and activating queries need the model and are left out: {why}.")
    else:
        notes.append(f"Promoted tokens and activating queries computed with {why}.")
        from .models import is_masked_lm

        neurons = list(dict.fromkeys(nr for fid in fact_ids for nr in result.lakn.get(fid, [])))
        try:
            promoted = {nr: promoted_tokens(loaded, *nr, per_script=top_tokens) for nr in neurons}
        except (AttributeError, TypeError, IndexError) as err:
            notes.append(f"Promoted tokens are left out: {type(err).__name__}: {err}.")
        if is_masked_lm(loaded):
            notes.append("Activating queries are left out: the model is a masked LM (answer at the mask, not "
                         "the prompt's end).")
        else:
            prompts = list(dict.fromkeys(_Prompt(fid, q["language"], q["prompt"], q["answer"])
                                         for fid, rec in result.records.items() for q in rec.queries))
            activating = top_activating_queries(loaded, neurons, prompts, top=top_queries, batch_size=batch_size)
    cards = "\n".join(_card(result, fid, promoted, activating) for fid in fact_ids)
    more = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    if len(fact_ids) < len(result.fact_ids):
        more += f'<p class="note">Cards for the first {len(fact_ids)} of {len(result.fact_ids)} facts.</p>'


    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    model_label = str(config.get("model", "?"))
    title = f"lakn report — {run_dir.name}"
    sub = (f"model {model_label} · method {config.get('method', '?')} · {len(result.fact_ids)} facts · "
           f"languages {', '.join(result.languages)} · lakn {config.get('lakn_version', '?')} · written "
           f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    nav = ('<nav><a href="#summary">Summary</a><a href="#experiments">Evaluation and editing</a>'
           '<a href="#figures">Figures</a><a href="#facts">LAKN cards</a><a href="#config">Configuration</a></nav>')
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_ERROR_COLLECTOR}</script>",
        f'<script id="plotly-js">{plotly_js}</script>',
        f'</head><body data-figures="{n_figs}">',
        f"<header><h1>{_e(title)}</h1><p>{_e(sub)}</p><p>{_e(run_dir.resolve())}</p></header>",
        nav,
        "<main>",
        _summary_sections(result),
        _experiment_sections(run_dir),
        figures_html,
        '<h2 id="facts">LAKN cards</h2>' + more + cards,
        _config_section(config),
        '<p id="js-errors"></p>',
        "</main>",
        f"<script>{_STATUS}</script>",
        "</body></html>",
    ])


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, model=None,
                 load_model: bool = True, max_facts: int | None = None, figure_facts: int = 5, top_tokens: int = 5,
                 top_queries: int = 5, batch_size: int = 16) -> Path:
    """Write a run's report page: one self-contained, offline HTML file.

    Args:
        run_dir: a finished run folder (``lakn localize --out DIR``).
        out: the file to write (default ``DIR/report.html``).
        model: a loaded model, or a name/path to load; default: the model in the run's config,
            loaded when ``load_model`` (the page leaves the model-dependent parts out, with a note,
            when loading fails or ``load_model=False``).
        max_facts: cards for the first ``max_facts`` facts (default all).
        figure_facts: facts that get a score map and per-language scores figure (as ``lakn plot``).
        top_tokens: promoted tokens shown per script; top_queries: activating queries per LAKN.

    Returns the path written. Example: ``lakn.report.write_report("runs/demo")``.
    """
    page = report_html(run_dir, model=model, load_model=load_model, max_facts=max_facts, figure_facts=figure_facts,
                       top_tokens=top_tokens, top_queries=top_queries, batch_size=batch_size)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
