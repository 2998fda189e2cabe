"""The causal, specificity-seeking selection: effect maps (checked against finite differences and
real zeroing), the reference damage (which reference queries count), the selection rule, every
method, the options (API, config, CLI) and resume of the stored maps."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from lakn import localize
from lakn.attribution.effects import effect_maps
from lakn.causal import causal_scores, causal_sets, reference_damage, reselect
from lakn.config import RunConfig
from lakn.facts import safe_file_stem
from lakn.hooks import hook_name
from lakn.results import FactRecord, LocalizationResult, RunFolderWarning
from lakn.testing import active_hook_count
from lakn.tokens import encode_query

SETTINGS = dict(attribution="approx", specificity="causal", progress=False, causal_competitors=5)


def _encoded(model, facts, lang="en"):
    return [encode_query(model, q) for f in facts for q in f.queries(lang)]


def _log_p(model, enc, layer, index, scale):
    """log P(first answer token) with neuron (layer, index) scaled by ``scale`` at every position;
    also the log-probs of the whole vocabulary."""
    def hook(act, hook=None):
        act = act.clone()
        act[..., index] *= scale
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name(layer), hook)]):
        lp = model(enc.prompt[None].to(torch.long))[0, -1].float().log_softmax(-1)
    return float(lp[int(enc.answer[0])]), lp


# --------------------------------------------------------------------------- effect maps


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_effect_maps_equal_the_numerical_derivative(arch, toy_facts):
    from lakn.testing import tiny_model

    model = tiny_model(arch, weight_scale=4.0) if arch == "llama" else tiny_model(arch)
    enc = _encoded(model, toy_facts[:2])
    maps = effect_maps(model, enc, competitors=5)
    eps = 1e-2  # central differences: O(eps^2) error, well above float32 rounding of log P
    for q in (0, 3):
        flat = maps.total[q].abs().flatten()
        picks = flat.argsort(descending=True)[:4].tolist() + [7, 50]
        _, clean = _log_p(model, enc[q], 0, 0, 1.0)
        y = int(enc[q].answer[0])
        top = clean.topk(6).indices
        comp = top[top != y][:5]
        for flat_i in picks:
            l, i = divmod(flat_i, int(model.cfg.d_mlp))
            up, lp_up = _log_p(model, enc[q], l, i, 1 + eps)
            down, lp_down = _log_p(model, enc[q], l, i, 1 - eps)
            fd = (up - down) / (2 * eps)  # d log P / d scale at scale 1 = sum_t a_t dlogP/da_t
            assert float(maps.total[q, l, i]) == pytest.approx(fd, rel=2e-2, abs=1e-4), (q, l, i)
            f_up = up - float(torch.logsumexp(lp_up[comp], 0))
            f_down = down - float(torch.logsumexp(lp_down[comp], 0))
            assert float(maps.ctr[q, l, i]) == pytest.approx((f_up - f_down) / (2 * eps), rel=2e-2, abs=1e-4)
        assert float(maps.log_p[q]) == pytest.approx(float(clean[y]), abs=1e-4)
        assert int(maps.rank[q]) == int((clean > clean[y]).sum())
        assert int(maps.first_token[q]) == y
    assert active_hook_count(model) == 0


def test_zeroing_a_neuron_changes_log_p_by_about_minus_total(tiny_llama, toy_facts):
    enc = _encoded(tiny_llama, toy_facts[:1])[:1]
    maps = effect_maps(tiny_llama, enc, competitors=5)
    total = maps.total[0]
    d_mlp = total.shape[1]
    order = total.abs().flatten().argsort(descending=True)
    picks = order[5:45].tolist()  # sizeable but not the largest (first order holds best for small effects)
    base, _ = _log_p(tiny_llama, enc[0], 0, 0, 1.0)
    est, real = [], []
    for flat_i in picks:
        l, i = divmod(flat_i, d_mlp)
        zeroed, _ = _log_p(tiny_llama, enc[0], l, i, 0.0)
        est.append(-float(total[l, i]))
        real.append(zeroed - base)
    est_t, real_t = torch.tensor(est), torch.tensor(real)
    assert torch.corrcoef(torch.stack([est_t, real_t]))[0, 1] > 0.95
    assert float((est_t - real_t).abs().median()) < 0.2 * float(est_t.abs().median())
    assert (est_t.sign() == real_t.sign()).float().mean() > 0.9


def test_effect_maps_do_not_depend_on_the_batch_size(tiny_llama, toy_facts):
    enc = _encoded(tiny_llama, toy_facts[:3]) + _encoded(tiny_llama, toy_facts[:1], "zh")  # unequal lengths
    a = effect_maps(tiny_llama, enc, competitors=3)
    b = effect_maps(tiny_llama, enc, competitors=3, batch_size=1)
    for name in ("total", "ctr", "log_p", "entropy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-4)
    assert torch.equal(a.rank, b.rank) and torch.equal(a.first_token, b.first_token)


def test_effect_maps_reject_bad_competitors(tiny_llama, toy_facts):
    enc = _encoded(tiny_llama, toy_facts[:1])
    with pytest.raises(ValueError, match="competitors"):
        effect_maps(tiny_llama, enc, competitors=0)
    with pytest.raises(ValueError, match="competitors must be below the vocabulary size"):
        effect_maps(tiny_llama, enc, competitors=10_000)


# --------------------------------------------------------------------------- selection on constructed maps

L, D = 2, 4


def _record(fid, relation, langs, tokens, ranks, total=None, ctr=None, log_p=None):
    n = len(langs)
    effects = {
        "total": (torch.zeros(n, L, D) if total is None else torch.as_tensor(total, dtype=torch.float32)).half(),
        "ctr": (torch.zeros(n, L, D) if ctr is None else torch.as_tensor(ctr, dtype=torch.float32)).half(),
        "log_p": torch.full((n,), -0.5) if log_p is None else torch.as_tensor(log_p),
        "entropy": torch.full((n,), 0.3), "rank": torch.tensor(ranks), "first_token": torch.tensor(tokens),
    }
    return FactRecord(fid, relation, torch.zeros(L, D), {}, [], {}, [{"language": lang} for lang in langs],
                      effects=effects)


def _map(**cells):
    """A [L, D] map with the given cells: ``_map(a01=0.5)`` sets (0, 1)."""
    m = torch.zeros(L, D)
    for key, value in cells.items():
        m[int(key[1]), int(key[2])] = value
    return m


def test_reference_damage_counts_answered_queries_with_another_first_token():
    target = _record("f", "capital", ["en", "fr"], tokens=[5, 6], ranks=[0, 0])
    g_same = _record("g1", "capital", ["en", "fr"], tokens=[7, 6], ranks=[0, 3],
                     total=torch.stack([_map(a00=0.4, a01=-1.0), _map(a00=9.0)]))  # fr shares token 6: dropped
    g_token = _record("g2", "capital", ["en"], tokens=[5], ranks=[0], total=_map(a02=9.0)[None])  # same token
    g_unanswered = _record("g3", "language", ["en"], tokens=[8], ranks=[10], total=_map(a03=9.0)[None])
    g_other = _record("g4", "language", ["en", "en"], tokens=[9, 9], ranks=[1, 2],
                      total=torch.stack([_map(a10=0.2), _map(a10=0.4, a11=0.3)]))
    damage = reference_damage(target, [g_same, g_token, g_unanswered, g_other], lam_same=4.0, lam_other=1.0)
    # same relation: only g1's en query (0.4 at (0,0); the -1.0 clamps to 0); other: g4's mean
    expected = 4.0 * _map(a00=0.4) + 1.0 * _map(a10=0.3, a11=0.15)
    torch.testing.assert_close(damage, expected, atol=1e-3, rtol=1e-3)
    # a group without facts adds nothing; the weights scale their group only
    only_other = reference_damage(target, [g_token, g_unanswered, g_other], lam_same=4.0, lam_other=2.0)
    torch.testing.assert_close(only_other, 2.0 * _map(a10=0.3, a11=0.15), atol=1e-3, rtol=1e-3)
    assert float(reference_damage(target, [g_token, g_unanswered]).abs().sum()) == 0.0


@pytest.mark.parametrize("method", ["matrice", "mean", "kn", "amig"])
def test_neuron_that_hurts_references_is_dropped(method):
    langs = ["en", "en", "fr", "fr"]
    # neuron (0, 0) helps the target most but also carries the references' answers; (1, 2) is the target's own
    own = torch.stack([_map(a00=1.0, a12=0.6, a03=0.05)] * 4)
    target = _record("f", "capital", langs, tokens=[5, 5, 5, 5], ranks=[0] * 4, ctr=own, total=own)
    refs = [_record(f"g{k}", rel, ["en", "fr"], tokens=[7 + k, 7 + k], ranks=[0, 0],
                    total=torch.stack([_map(a00=0.5, a03=-0.2)] * 2))
            for k, rel in enumerate(["capital", "language", "language"])]
    records = {r.fact_id: r for r in [target, *refs]}
    chosen, scores = causal_sets(records, method=method, lam_same=4.0, lam_other=1.0, top_k=80,
                                 reference={"f": ["g0", "g1", "g2"], "g0": [], "g1": [], "g2": []})
    assert (1, 2) in chosen["f"] and (0, 0) not in chosen["f"]
    assert (0, 3) in chosen["f"]  # hurts no reference (negative effects are not damage)
    assert chosen["f"][0] == (1, 2)
    # without references (or weights 0) the shared neuron wins
    plain, _ = causal_sets(records, method=method, lam_same=0.0, lam_other=0.0, top_k=80,
                           reference={"f": ["g0", "g1", "g2"], "g0": [], "g1": [], "g2": []})
    assert plain["f"][0] == (0, 0)
    # top_k cuts, best first
    assert causal_scores(target, torch.zeros(L, D), method=method, top_k=1)[0] == [(0, 0)]


def test_selection_rejects_bad_weights():
    target = _record("f", "r", ["en"], tokens=[1], ranks=[0], ctr=_map(a00=1.0)[None])
    for kwargs, name in ((dict(lam_same=-1.0), "lam_same"), (dict(lam_other=float("nan")), "lam_other"),
                         (dict(top_k=0), "top_k"), (dict(method="nope"), "method")):
        with pytest.raises(ValueError, match=name):
            causal_sets({"f": target}, **kwargs)
    with pytest.raises(ValueError, match="specificity='causal'"):
        causal_sets({"f": FactRecord("f", "r", torch.zeros(L, D), {}, [], {}, [{"language": "en"}])})


# --------------------------------------------------------------------------- localize, every method


@pytest.fixture(scope="module")
def causal_runs(tiny_llama, toy_facts_module):
    return {m: localize(tiny_llama, toy_facts_module, languages=["en", "fr"], method=m, **SETTINGS)
            for m in ("matrice", "mean", "kn", "amig", "random")}


@pytest.fixture(scope="module")
def toy_facts_module():
    from lakn.facts import Fact

    rows = [("France", "Paris", "capital"), ("Spain", "Madrid", "capital"), ("Italy", "Rome", "capital"),
            ("Japan", "Tokyo", "city")]
    return [Fact.from_dict({"fact_id": f"capital_{c.lower()}", "relation": rel, "object": {"en": city, "fr": city},
                            "queries": {"en": [f"The capital of {c} is [Y]", f"{c}'s capital city is [Y]"],
                                        "fr": [f"La capitale de {c} est [Y]", f"{c} a pour capitale [Y]"]}})
            for c, city, rel in rows]


@pytest.mark.parametrize("method", ["matrice", "mean", "kn", "amig"])
def test_every_method_selects_causally(causal_runs, method):
    result = causal_runs[method]
    assert result.selection == "causal"
    assert sum(len(v) for v in result.lakn.values()) > 0
    for fid, neurons in result.lakn.items():
        assert len(neurons) <= 80 and len(set(neurons)) == len(neurons)
        score = result.score(fid)
        values = [float(score[n]) for n in neurons]
        assert values == sorted(values, reverse=True)  # best first
        if method in ("matrice", "mean"):
            assert all(v > 0 for v in values)
        maps = result.records[fid].effects
        assert maps["total"].dtype == torch.float16 and maps["total"].shape == (4, 2, 64)
    # the stored maps give the same sets again
    assert reselect(result, method=method) == result.lakn
    smaller = reselect(result, method=method, top_k=3)
    assert all(smaller[f] == result.lakn[f][:3] for f in result.lakn)


def test_random_control_matches_the_causal_matrice_sets(causal_runs):
    rnd, mat = causal_runs["random"], causal_runs["matrice"]
    for fid in mat.lakn:
        assert sorted(layer for layer, _ in rnd.lakn[fid]) == sorted(layer for layer, _ in mat.lakn[fid])
    assert rnd.lakn != mat.lakn


def test_weights_change_the_sets(causal_runs):
    result = causal_runs["matrice"]
    none = reselect(result, lam_same=0.0, lam_other=0.0)
    strong = reselect(result, lam_same=50.0, lam_other=50.0)
    assert none != strong
    assert sum(map(len, strong.values())) <= sum(map(len, none.values()))


def test_reselect_needs_a_causal_run(tiny_llama, toy_facts_module):
    plain = localize(tiny_llama, toy_facts_module[:2], languages=["en"], attribution="approx", progress=False)
    with pytest.raises(ValueError, match="causal run.*specificity='auto'"):
        reselect(plain)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("field,value", [("causal_same_weight", -1.0), ("causal_other_weight", float("inf")),
                                         ("causal_top_k", 0), ("causal_competitors", 0), ("causal_top_k", None)])
def test_config_errors_name_the_option(field, value):
    with pytest.raises(ValueError, match=field):
        RunConfig(**{field: value})


def test_causal_is_a_choice_and_defaults_are_unchanged():
    cfg = RunConfig()
    assert cfg.specificity == "auto"
    assert (cfg.causal_same_weight, cfg.causal_other_weight, cfg.causal_top_k, cfg.causal_competitors) == (4.0, 1.0,
                                                                                                          80, 20)
    assert RunConfig(specificity="causal").record_sha256() != cfg.record_sha256()
    # folders written before these options existed (no causal_* keys) keep their per-fact hashes
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith("causal_")}
    assert RunConfig.from_dict(old).record_sha256() == cfg.record_sha256()
    assert RunConfig.from_dict(old).diff(cfg) == {}


def test_localize_rejects_bad_options_before_model_work(tiny_llama, toy_facts_module, monkeypatch):
    import lakn.localization as localization

    monkeypatch.setattr(localization, "effect_maps", lambda *a, **k: pytest.fail("model work started"))
    monkeypatch.setattr(localization, "attribute_queries", lambda *a, **k: pytest.fail("model work started"))
    for bad, name in ((dict(causal_top_k=0), "causal_top_k"), (dict(causal_same_weight=-2.0), "causal_same_weight"),
                      (dict(causal_competitors=0), "causal_competitors")):
        with pytest.raises(ValueError, match=name):
            localize(tiny_llama, toy_facts_module, **{**SETTINGS, **bad})


def test_cli_accepts_the_causal_options(tmp_path, capsys):
    from lakn.cli import build_parser, main
    from lakn.testing import save_tiny_model

    args = build_parser().parse_args(["localize", "--out", "x", "--specificity", "causal", "--causal-same-weight",
                                      "2.5", "--causal-other-weight", "0.5", "--causal-top-k", "7",
                                      "--causal-competitors", "3"])
    assert (args.specificity, args.causal_same_weight, args.causal_other_weight, args.causal_top_k,
            args.causal_competitors) == ("causal", 2.5, 0.5, 7, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["localize", "--out", "x", "--causal-top-k", "0"])
    model_dir = tmp_path / "model"
    save_tiny_model(model_dir, "gpt2")
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(json.dumps({"fact_id": f"f{k}", "relation": "capital" if k < 2 else "city",
                                          "object": {"en": city},
                                          "queries": {"en": [f"The capital of {c} is [Y]", f"{c}'s capital is [Y]"]}})
                              for k, (c, city) in enumerate([("France", "Paris"), ("Spain", "Madrid"),
                                                             ("Japan", "Tokyo")])) + "\n")
    out = tmp_path / "run"
    assert main(["localize", "--out", str(out), "--model", str(model_dir), "--data", str(data), "--attribution",
                 "approx", "--specificity", "causal", "--causal-top-k", "4", "--causal-competitors", "3"]) == 0
    assert "selection: causal" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["specificity"], config["causal_top_k"], config["causal_competitors"]) == ("causal", 4, 3)
    assert all(len(v["lakn"]) <= 4 for v in json.loads((out / "neurons.json").read_text()).values())
    assert len(list((out / "facts").glob("*.effects.safetensors"))) == 3


# --------------------------------------------------------------------------- run folder and resume


def test_interrupted_causal_run_resumes_and_recomputes_a_corrupted_file(tiny_llama, toy_facts_module, tmp_path,
                                                                        monkeypatch, causal_runs):
    import lakn.localization as localization

    full = causal_runs["matrice"]
    real = localization.effect_maps
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(localization, "effect_maps", flaky)
    with pytest.raises(KeyboardInterrupt):
        localize(tiny_llama, toy_facts_module, languages=["en", "fr"], out=tmp_path, **SETTINGS)
    assert len(list((tmp_path / "facts").glob("*.effects.safetensors"))) == 2
    assert not (tmp_path / "result.json").exists()

    calls["n"] = -100  # no more interruptions; count the facts whose maps are computed
    resumed = localize(tiny_llama, toy_facts_module, languages=["en", "fr"], out=tmp_path, **SETTINGS)
    assert calls["n"] == -100 + 2  # the two unfinished facts only
    assert resumed.lakn == full.lakn and resumed.selection == "causal"

    # a corrupted map file: named in a warning, that fact recomputed, the others reused
    victim = toy_facts_module[1].fact_id
    path = tmp_path / "facts" / f"{safe_file_stem(victim)}.effects.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    calls["n"] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = localize(tiny_llama, toy_facts_module, languages=["en", "fr"], out=tmp_path, **SETTINGS)
    texts = [str(w.message) for w in caught if issubclass(w.category, RunFolderWarning)]
    assert len(texts) == 1 and path.name in texts[0] and "checksum" in texts[0]
    assert calls["n"] == 1
    assert [r["fact_id"] for r in again.recomputed] == [victim]
    assert again.lakn == full.lakn

    # the maps survive the folder: the loaded result selects the same sets
    loaded = LocalizationResult.load(tmp_path)
    assert loaded.selection == "causal" and loaded.lakn == full.lakn
    assert reselect(loaded, method="kn", top_k=5) == reselect(full, method="kn", top_k=5)
    for fid in full.fact_ids:
        torch.testing.assert_close(loaded.records[fid].effects["ctr"], full.records[fid].effects["ctr"])


def test_a_fact_file_without_maps_is_recomputed(tiny_llama, toy_facts_module, tmp_path):
    localize(tiny_llama, toy_facts_module[:2], languages=["en"], out=tmp_path, **SETTINGS)
    victim = toy_facts_module[0].fact_id
    record = FactRecord.load(tmp_path / "facts", victim)
    record.effects = {}
    record.save(tmp_path / "facts")  # a valid file, checksums and all, but no maps
    with pytest.warns(RunFolderWarning, match="no effect maps"):
        again = localize(tiny_llama, toy_facts_module[:2], languages=["en"], out=tmp_path, **SETTINGS)
    assert [r["fact_id"] for r in again.recomputed] == [victim]
    assert again.records[victim].effects["total"].shape[0] == 2


def test_masked_models_are_refused(toy_facts_module):
    from lakn.testing import tiny_model

    with pytest.raises(ValueError, match="causal LM"):
        localize(tiny_model("bert"), toy_facts_module[:2], languages=["en"], **SETTINGS)
