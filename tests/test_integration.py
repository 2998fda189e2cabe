"""Integration on the embedded default, Gemma 3 270M (de-quantised once per machine, then cached).

Small settings: one fact, two languages, few steps.
"""

import json

import pytest
import torch

import lakn
from lakn.hooks import neuron_hooks
from lakn.probability import answer_stats
from lakn.tokens import encode_query

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def capital_france():
    (fact,) = [f for f in lakn.load_facts("demo") if f.fact_id == "capital_france"]
    return fact


def test_default_model_is_cached_and_knows_paris(default_model, capital_france):
    marker = lakn.cache_dir() / "models" / "gemma-3-270m-q4_k_m" / "lakn_cache.json"
    assert json.loads(marker.read_text())["format"] == 1
    assert default_model.cfg.n_layers == 18 and default_model.cfg.d_mlp == 2048
    for lang in ("en", "fr"):
        ranks = [answer_stats(default_model, encode_query(default_model, q)).rank
                 for q in capital_france.queries(lang)]
        assert min(ranks) < 10, f"{lang}: Paris not in the top 10 of any paraphrase (ranks {ranks})"


def test_localize_one_fact_two_languages(default_model, capital_france, tmp_path):
    result = lakn.localize(default_model, [capital_france], languages=["en", "fr"], steps=3, max_queries=1,
                           first_token_only=True, out=tmp_path, progress=False)
    neurons = result.neurons("capital_france")
    assert 0 < len(neurons) < 200
    assert json.loads((tmp_path / "neurons.json").read_text())["capital_france"]["lakn"] == [list(n) for n in neurons]
    q = result.queries_dataframe()
    assert list(q["language"]) == ["en", "fr"] and (q["probability"] > 0).all()
    # suppressing the fact's LAKNs lowers P(Paris) in both languages
    for lang in ("en", "fr"):
        encoded = encode_query(default_model, capital_france.queries(lang)[0])
        before = answer_stats(default_model, encoded).probability
        with default_model.hooks(fwd_hooks=neuron_hooks(neurons, factor=0.0)):
            after = answer_stats(default_model, encoded).probability
        assert after < before, f"{lang}: {before:.4f} -> {after:.4f}"


def test_gemma_ig_is_scaled_activation_times_gradient(default_model, capital_france):
    """Gemma 3 normalises the MLP output (post-feedforward RMSNorm), so F(alpha a) is flat in alpha
    and IG from a zero baseline equals H_m x activation x gradient (H_m: harmonic number)."""
    query = capital_france.queries("en")[0]
    steps = 4
    ig = lakn.integrated_gradients(default_model, query, steps=steps, layers=[9], first_token_only=True)
    encoded = encode_query(default_model, query)
    store = {}

    def leaf_hook(act, hook):
        act = act.clone()
        leaf = act[:, -1].detach().clone().requires_grad_(True)
        store["leaf"] = leaf
        act[:, -1] = leaf
        return act

    with default_model.hooks(fwd_hooks=[(lakn.hook_name(9), leaf_hook)]):
        probs = default_model(encoded.prompt[None])[0, -1].softmax(-1)
    (grad,) = torch.autograd.grad(probs[encoded.answer[0]], store["leaf"])
    harmonic = sum(1.0 / k for k in range(1, steps + 1))
    expected = store["leaf"].detach()[0] * grad[0] * harmonic
    scale = float(expected.abs().max())
    torch.testing.assert_close(ig.attributions[0], expected, rtol=2e-2, atol=1e-2 * scale)
    # and the per-layer sum is ~0 (scale invariance), far from F(a) - F(0)
    assert abs(float(ig.attributions[0].sum())) < 0.05 * float(ig.attributions[0].abs().sum())
