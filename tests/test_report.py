"""The run report page (lakn.report): its HTML, and the page opened in a real headless browser.

The browser test runs Debian's ``chromium`` (``apt-get install -y chromium``); it skips where no
browser is installed, except in CI (``CI=true``), where a missing browser fails the test.
"""

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import lakn
from lakn.evaluation import ChangeRateResult, EditingResult
from lakn.facts import Fact
from lakn.plotting import read_eval_table, run_figures
from lakn.report import promoted_tokens, token_script, write_report
from lakn.testing import save_tiny_model

HOSTILE_PROMPT = "<img src=x onerror=alert(1)> France's capital is [Y]"
HOSTILE_DATA = "<script>alert('data')</script>&"
HOSTILE_RELATION = "capital<b>x</b>"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run: a tiny model saved as a folder (the run's config names it), 2 facts."""
    root = tmp_path_factory.mktemp("report")
    save_tiny_model(root / "model", "llama", weight_scale=4.0)
    model = lakn.load_model(root / "model")
    facts = [
        Fact.from_dict({"fact_id": "capital_france", "relation": HOSTILE_RELATION,
                        "object": {"en": "Paris", "fr": "Paris"},
                        "queries": {"en": ["The capital of France is [Y]", HOSTILE_PROMPT],
                                    "fr": ["La capitale de la France est [Y]"]}}),
        Fact.from_dict({"fact_id": "capital_spain", "relation": HOSTILE_RELATION,
                        "object": {"en": "Madrid", "fr": "Madrid"},
                        "queries": {"en": ["The capital of Spain is [Y]"], "fr": ["La capitale de l'Espagne est [Y]"]}}),
    ]
    lakn.localize(model, facts, languages=["en", "fr"], steps=1, attribution="approx", out=root / "run",
                  data=HOSTILE_DATA, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def page(run):
    path = write_report(run)
    return path, path.read_text(encoding="utf-8")


def _n_figures(run_dir: Path) -> int:
    result = lakn.LocalizationResult.load(run_dir)
    return len(run_figures(result, eval_table=read_eval_table(run_dir / "eval.json")))


def test_html_is_self_contained_and_escaped(run, page):
    import plotly.offline

    path, html = page
    assert path == run / "report.html"
    js = plotly.offline.get_plotlyjs()
    assert html.count(js[:300]) == 1 and html.count('id="plotly-js"') == 1  # plotly.js inlined exactly once
    assert len(html) < len(js) * 1.5
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)  # no external script, no CDN
    assert not re.search(r"<(link|img|iframe)[^>]*\b(href|src)\s*=\s*[\"']?https?:", html, re.I)
    rest = html.replace(js.replace("</script", "<\\/script"), "")
    assert len(rest) < len(html) - len(js) // 2 and not re.search(r"https?://", rest)  # no URL outside plotly.js
    # strings from data never become markup
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>x</b>" not in html and "capital&lt;b&gt;x&lt;/b&gt;" in html
    assert "<script>alert(" not in html and "&lt;script&gt;alert(&#x27;data&#x27;)&lt;/script&gt;&amp;" in html
    # one plot div per figure of `lakn plot`; a card per fact with the model-dependent parts
    n = _n_figures(run)
    assert html.count('class="plotly-graph-div"') == n and f'data-figures="{n}"' in html
    assert html.count('<div class="card"') == 2
    assert "promoted tokens (W_out row x W_U, per script)" in html and "queries that activate it most" in html
    assert "<b>Latin</b>" in html


def test_report_without_model_and_with_experiments(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    path = write_report(folder, tmp_path / "nomodel.html", load_model=False)
    text = path.read_text(encoding="utf-8")
    assert "left out" in text and "queries that activate it most" not in text
    rows = [dict(method=m, intervention=i, target="capital_france", kind=k, language=lang, split="seen",
                 change=c, fact_id="capital_france") for m in ("matrice", "random") for i in ("suppress", "enhance")
            for k in ("related", "other_relation") for lang, c in (("en", -0.5), ("fr", 0.25))]
    ChangeRateResult(rows=rows, config={"n_kept": 4, "n_queries": 5, "top_k_answer": 10,
                                        "kept_by_split": {"seen": 4}}).save(folder / "eval.json")
    edit = [dict(neurons=n, metric=m, language=lang, success=1.0, top1=0.0, n_neurons=3, fact_id="capital_france")
            for n in ("lakn", "random") for m in ("reliability", "generality", "locality") for lang in ("en", "fr")]
    EditingResult(rows=edit, config={}).save(folder / "edit.json")
    text = write_report(folder, load_model=False).read_text(encoding="utf-8")
    assert "(eval.json)" in text and "(edit.json)" in text and "suppress:related" in text and "reliability" in text
    n = _n_figures(folder)
    assert n == _n_figures(run) + 1  # the probability-change figure
    assert text.count('class="plotly-graph-div"') == n
    # a broken experiment file is reported on the page, not fatal
    (folder / "edit.json").write_text('{"kind": "InjectionResult", "rows": []}')
    assert "could not be read as a EditingResult" in write_report(folder, load_model=False).read_text(encoding="utf-8")


def test_promoted_tokens_and_scripts(tmp_path):
    from lakn.testing import tiny_model

    model = tiny_model("llama", weight_scale=4.0)
    groups = promoted_tokens(model, 1, 3, per_script=4)
    assert groups and all(1 <= len(v) <= 4 for v in groups.values())
    w, dim = lakn.w_out(model, 1)
    effect = w.select(dim, 3).float() @ model.W_U.float()
    best = max(v for toks in groups.values() for _, v in toks)
    special = set(model.tokenizer.all_special_ids)
    texts = {i: model.tokenizer.decode([i]) for i in range(effect.numel()) if i not in special}
    readable = [i for i, t in texts.items() if token_script(t) != "none" and "\ufffd" not in t]
    assert best == pytest.approx(max(float(effect[i]) for i in readable), rel=1e-5)
    for script, toks in groups.items():  # best first within a script, and of that script
        assert [v for _, v in toks] == sorted((v for _, v in toks), reverse=True)
        assert all(token_script(t) == script for t, _ in toks)
    assert token_script(" Paris") == "Latin" and token_script("巴黎") == "Han" and token_script("Париж") == "Cyrillic"
    assert token_script("パリ") == "Kana" and token_script(" 12.") == "none"


def test_report_loads_the_model_named_in_the_run_config(run, monkeypatch):
    import lakn.models
    from lakn.report import EMBEDDED_NAME, _load_run_model

    calls = []

    def fake_load(name=None, **kwargs):
        calls.append(name)
        if name is not None and not str(name).startswith("/"):
            raise lakn.ModelLoadError(f"offline: {name}")
        return "MODEL"

    monkeypatch.setattr(lakn.models, "load_model", fake_load)
    recorded = lakn.LocalizationResult.load(run).config["model"]
    assert _load_run_model({"model": recorded}, None)[0] == "MODEL" and calls == [recorded]  # a folder: as recorded
    calls.clear()
    model, note = _load_run_model({"model": EMBEDDED_NAME}, None)  # what lakn.load_model() records
    assert model == "MODEL" and calls == [None] and "embedded" in note
    calls.clear()
    model, note = _load_run_model({"model": "org/other"}, None)
    assert model is None and calls == ["org/other"] and "could not be loaded" in note
    assert _load_run_model({}, None)[0] is None


def test_cli_report(run, tmp_path, capsys):
    from lakn.cli import main

    out = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(out), "--no-model"]) == 0
    assert capsys.readouterr().out.strip() == f"written: {out}"
    text = out.read_text(encoding="utf-8")
    assert "left out" in text and text.count('<div class="card"') == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "--model", "x", "--no-model"])
    assert exit_info.value.code == 2 and "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_figure_text_from_data_is_escaped(run):
    """Plotly renders tags in titles, legends and hover text: data strings reach it as entities."""
    from lakn import plotting
    from lakn.evaluation import ChangeRateResult

    result = lakn.LocalizationResult.load(run)
    fid = result.fact_ids[0]
    hostile = "<b>bold</b>%{x}"
    for table in (result.records, result.lakn, result.language_specific, result.specific):
        if fid in table:
            table[hostile] = table.pop(fid)
    fid = hostile
    for fig in (plotting.score_map(result, fid), plotting.language_scores(result, fid)):
        assert "&lt;b&gt;bold&lt;/b&gt;&#37;{x}" in fig.layout.title.text and "<b>bold" not in fig.layout.title.text
        assert all("<b>bold" not in (t.hovertemplate or "") and "%{x}</" not in (t.hovertemplate or "")
                   for t in fig.data)
    fig = plotting.layer_distribution({"<i>run</i>": result})
    assert fig.data[0].name == "&lt;i&gt;run&lt;/i&gt;" and "<i>run" not in fig.data[0].hovertemplate
    assert all("<b>bold" not in str(c[4]) for c in fig.data[0].customdata)
    rows = [dict(method="<a href=x>m</a>", intervention="suppress", target="t", fact_id="t", kind="related",
                 language="en", split="seen", change=-0.5)]
    fig = plotting.probability_change(ChangeRateResult(rows=rows, config={}))
    assert fig.data[0].name.startswith("&lt;a href=x&gt;m&lt;/a&gt;") and "<a" not in str(fig.data[0].customdata)


# --------------------------------------------------------------------------- real browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_colours(data: bytes, limit: int = 64) -> set:
    """Distinct pixel colours of a PNG (8-bit RGB/RGBA, not interlaced), up to ``limit``; PIL when present."""
    try:
        from PIL import Image
        import io

        img = Image.open(io.BytesIO(data)).convert("RGB")
        return {c for _, c in (img.getcolors(maxcolors=1 << 24) or [])[: 10 ** 7]}
    except ImportError:
        pass
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, ctype, _, _, interlace = header
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            for x in range(0, width, 2):
                colours.add(bytes(line[x * bpp : x * bpp + 3]))
        prev = line
    return {tuple(c) for c in colours}


def _chromium(browser: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_renders_in_a_headless_browser(run, page, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no chromium in CI: .ci/run must install it (apt-get install -y chromium)")
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    path, _ = page
    url = path.resolve().as_uri()
    n = _n_figures(run)
    dom = _chromium(browser, url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console_errors = [line for line in dom.stderr.splitlines()
                      if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not console_errors, console_errors
    assert 'data-js-errors="0"' in dom.stdout, re.findall(r'id="js-errors">[^<]*', dom.stdout)
    # scripts ran: plotly built every figure
    assert f'data-plots="{n}"' in dom.stdout
    assert len(re.findall(r'class="plot-container\b', dom.stdout)) == n
    assert dom.stdout.count('class="main-svg"') >= n
    assert "<img src=x" not in dom.stdout  # escaped text stayed text
    shot = tmp_path / "page.png"
    res = _chromium(browser, url, tmp_path / "profile2", "--hide-scrollbars", "--window-size=1280,2400",
                    f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    colours = _png_colours(shot.read_bytes())
    assert len(colours) > 10, f"blank screenshot ({len(colours)} colours)"
    # the first figure's bars are drawn in plotly's first colour (#636EFA)
    assert any(abs(r - 0x63) + abs(g - 0x6E) + abs(b - 0xFA) < 30 for r, g, b in colours)
