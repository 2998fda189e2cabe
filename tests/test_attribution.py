"""Unit tests for lakn.attribution (API, exact, approx, runners, memory) on tiny config-built models.

- the reference implementation: completeness, Gemma's scale invariance (IG = H_m x act*grad),
  multi-token averaging, first-token-only, chunk-size invariance, layer subsets, baselines, errors;
- the fast exact path (cached keys/values, last position only) against the reference on four
  architecture families and several shapes;
- the approximate mode (activation x gradient = IG with one step) and coarse-to-fine.
"""

from __future__ import annotations


import pytest
import torch

import lakn.attribution as attribution_api
import lakn.objective as objective
from lakn.attribution import exact, memory, runners
from lakn.attribution.runners import FastRunner
from lakn.hooks import capture_hook
from lakn.attribution import (
    FAST_VERIFIED_ARCHITECTURES,
    coarse_to_fine,
    fast_path_supported,
    integrated_gradients,
    step_grid,
)
from lakn.testing import tiny_model
from lakn.tokens import EncodedQuery

PROMPT = "The capital of France is"
CAUSAL = ("gpt2", "llama", "gemma3", "bloom")
NO_POST_NORM = ("gpt2", "llama", "bloom")  # completeness from a zero baseline holds


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(arch: str, **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            kwargs.setdefault("weight_scale", 10.0)  # non-trivial answer probabilities
            cache[key] = tiny_model(arch, **kwargs)
        return cache[key]

    return get


def query(model, n_answer: int = 1, prompt: str = PROMPT) -> EncodedQuery:
    """The model's own top next token as the answer (so P(y) is not tiny), plus filler tokens."""
    tokens = model.to_tokens(prompt)[0].cpu()
    with torch.no_grad():
        top = int(model(tokens[None])[0, -1].argmax())
    filler = model.to_tokens(" Paris Berlin Madrid", prepend_bos=False)[0].cpu()
    answer = torch.cat([torch.tensor([top]), filler])[:n_answer]
    return EncodedQuery(tokens, answer)


def f_with_layer_at(model, q: EncodedQuery, layer: int, value: torch.Tensor) -> float:
    """P(first answer token) with layer ``layer``'s neurons at the last position set to ``value``."""

    def hook(act, hook=None):
        act = act.clone()
        act[:, -1] = value.to(act)
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)]):
        return float(model(q.prompt[None])[0, -1].softmax(-1)[q.answer[0]])


def harmonic(m: int) -> float:
    return sum(1.0 / k for k in range(1, m + 1))


# --- the reference implementation -------------------------------------------------------------


@pytest.mark.parametrize("arch", NO_POST_NORM)
def test_completeness_error_shrinks_with_steps(models, arch):
    model = models(arch)
    q = query(model)
    errors = {}
    for m in (2, 8, 32):
        res = integrated_gradients(model, q, steps=m, attribution="reference")
        errors[m] = res.completeness_error
        # the reported error is |sum_i Attr - (F(a) - F(0))|, recomputed here independently
        f_a = res.stats.token_probs[0].item()
        for i, l in enumerate(res.layers):
            f_b = f_with_layer_at(model, q, l, torch.zeros(model.cfg.d_mlp))
            expected = abs(res.attributions[i].sum().item() - (f_a - f_b))
            assert res.completeness_error[i].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert (errors[32] <= errors[8] + 1e-7).all() and (errors[8] <= errors[2] + 1e-7).all()
    assert errors[32].max() < 0.25 * errors[2].max() + 1e-7
    # the right Riemann sum converges as 1/m: at m=32 the error is small next to P(y)
    assert errors[32].max() < 0.05 * res.stats.token_probs[0].item()


def test_gemma_post_norm_scale_invariance_gives_harmonic_number(models):
    """Gemma 3 normalises the MLP output (post_feedforward_layernorm): F(alpha a) = F(a) for
    alpha > 0, so IG from zero is exactly H_m x (a * dF/da) and sums to ~0 per layer (Euler's
    theorem for a degree-0 function), whatever F(a) - F(0) is: completeness fails by design."""
    model = models("gemma3")
    q = query(model)
    grad_x_act = integrated_gradients(model, q, attribution="approx").attributions
    for m in (1, 4, 10):
        ig = integrated_gradients(model, q, steps=m, attribution="reference").attributions
        scale = grad_x_act.abs().max()
        assert torch.allclose(ig, harmonic(m) * grad_x_act, atol=2e-3 * scale * harmonic(m))
    res = integrated_gradients(model, q, steps=10, attribution="reference")
    assert res.attributions.sum(-1).abs().max() < 1e-2 * res.attributions.abs().sum(-1).max()
    # scaling the whole activation leaves the output unchanged (up to the norm's eps)
    clean = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post",
                                                   capture_hook(clean, 0, -1))]):
        model(q.prompt[None])
    f_a = f_with_layer_at(model, q, 0, clean[0][0])
    assert f_with_layer_at(model, q, 0, 0.3 * clean[0][0]) == pytest.approx(f_a, rel=1e-3)


@pytest.mark.parametrize("attribution", ["reference", "fast"])
def test_multi_token_answer_is_mean_over_tokens(models, attribution):
    model = models("llama")
    q = query(model, n_answer=3)
    res = integrated_gradients(model, q, steps=4, attribution=attribution)
    assert res.n_answer_tokens == 3
    per_token = [
        integrated_gradients(model, EncodedQuery(q.prefix(t), q.answer[t : t + 1]), steps=4, attribution=attribution)
        for t in range(3)
    ]
    mean = torch.stack([p.attributions for p in per_token]).mean(0)
    assert torch.allclose(res.attributions, mean, atol=1e-9, rtol=1e-5)
    err = torch.stack([p.completeness_error for p in per_token]).mean(0)
    assert torch.allclose(res.completeness_error, err, atol=1e-9, rtol=1e-4)


def test_first_token_only(models):
    model = models("gpt2")
    q = query(model, n_answer=3)
    res = integrated_gradients(model, q, steps=4, first_token_only=True, attribution="reference")
    single = integrated_gradients(model, EncodedQuery(q.prompt, q.answer[:1]), steps=4, attribution="reference")
    assert res.n_answer_tokens == 1
    assert torch.equal(res.attributions, single.attributions)
    assert res.stats.token_probs.shape == (3,)  # stats still cover the whole answer


@pytest.mark.parametrize("attribution", ["reference", "fast", "approx"])
def test_chunk_size_does_not_change_result(models, attribution):
    model = models("gpt2", n_layers=3)
    q = query(model, n_answer=2)
    results = [integrated_gradients(model, q, steps=5, batch_size=b, attribution=attribution, completeness=True) for b in (1, 4, 7, 1000)]
    scale = results[0].attributions.abs().max()
    for other in results[1:]:  # equal up to float rounding (matmul kernels differ by batch size)
        assert torch.allclose(results[0].attributions, other.attributions, atol=1e-6 * scale, rtol=1e-4)
        assert torch.allclose(results[0].completeness_error, other.completeness_error, atol=1e-6 * scale,
                              rtol=1e-3)


@pytest.mark.parametrize("attribution", ["reference", "fast", "approx"])
def test_layer_subset_matches_full_rows(models, attribution):
    model = models("bloom", n_layers=3)
    q = query(model)
    full = integrated_gradients(model, q, steps=4, attribution=attribution)
    sub = integrated_gradients(model, q, steps=4, layers=[2, 0], attribution=attribution)
    assert sub.layers == [2, 0] and sub.attributions.shape == (2, model.cfg.d_mlp)
    assert torch.allclose(sub.attributions, full.attributions[[2, 0]], atol=1e-10, rtol=1e-5)


@pytest.mark.parametrize("attribution", ["reference", "fast"])
def test_baseline(models, attribution):
    model = models("llama")
    q = query(model)
    n, d = model.cfg.n_layers, model.cfg.d_mlp
    clean = {}
    hooks = [(f"blocks.{l}.mlp.hook_post", capture_hook(clean, l, -1)) for l in range(n)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(q.prompt[None])
    a = torch.stack([clean[l][0] for l in range(n)])
    # baseline = the real activation: nothing to attribute, F(b) = F(a)
    same = integrated_gradients(model, q, steps=4, baseline=a, attribution=attribution)
    # (the fast path reads a from its own single-position pass: equal up to float rounding)
    assert same.attributions.abs().max() < 1e-7 and same.completeness_error.max() < 1e-7
    # a random baseline: completeness against F(b) computed independently
    b = 0.5 * a + 0.1 * torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    res = integrated_gradients(model, q, steps=64, baseline=b, attribution=attribution)
    for l in range(n):
        gap = res.stats.token_probs[0].item() - f_with_layer_at(model, q, l, b[l])
        assert res.attributions[l].sum().item() == pytest.approx(gap, abs=0.05 * abs(gap) + 1e-6)


def test_step_grid():
    assert torch.allclose(step_grid(4), torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(step_grid(3, "linspace"), torch.tensor([0.0, 0.5, 1.0]))


def test_linspace_grid_counts_the_zero_step(models):
    """grid="linspace" (EleutherAI knowledge-neurons) weighs alpha = 0 as a real step: with
    m = 2 the sum is (g(0) + g(a)) / 2, checked against the m = 1 right-rule result g(a)."""
    model = models("gpt2")
    q = query(model)
    g_a = integrated_gradients(model, q, steps=1, attribution="reference").attributions  # a * g(a)
    lin = integrated_gradients(model, q, steps=2, grid="linspace", attribution="reference").attributions
    assert not torch.allclose(lin, g_a / 2)  # g(0) contributes
    fast = integrated_gradients(model, q, steps=2, grid="linspace", attribution="fast").attributions
    assert torch.allclose(fast, lin, atol=1e-5 * lin.abs().max(), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(layers=[]), "layers"),
        (dict(layers=[-1]), "layers"),
        (dict(layers=[2]), "layers"),
        (dict(layers=[0, 0]), "layers"),
        (dict(baseline=torch.zeros(64)), "baseline"),
        (dict(baseline=torch.zeros(1, 64)), "baseline"),
        (dict(baseline=torch.zeros(2, 63)), "baseline"),
        (dict(attribution="magic"), "attribution"),
        (dict(grid="left"), "grid"),
    ],
)
def test_errors(models, kwargs, message):
    model = models("gpt2")
    with pytest.raises(ValueError, match=message):
        integrated_gradients(model, query(model), **kwargs)


# --- the fast exact path ----------------------------------------------------------------------


SHAPES = [
    ("gpt2", dict()),
    ("gpt2", dict(n_layers=3, d_model=48, d_mlp=96, n_heads=4)),
    ("llama", dict()),
    ("llama", dict(n_layers=3, d_model=64, d_mlp=40, n_heads=4)),
    ("gemma3", dict()),
    ("gemma3", dict(n_layers=3, d_model=64, d_mlp=128, n_heads=4)),
    ("bloom", dict()),
    ("bloom", dict(n_layers=3, d_model=48, n_heads=3)),
]


@pytest.mark.parametrize("arch, shape", SHAPES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SHAPES)])
def test_fast_matches_reference(models, arch, shape):
    model = models(arch, **shape)
    q = query(model, n_answer=2)
    ref = integrated_gradients(model, q, steps=6, attribution="reference", batch_size=9)
    fast = integrated_gradients(model, q, steps=6, attribution="fast", batch_size=5)
    assert fast.attribution == "fast" and ref.attribution == "reference"
    scale = ref.attributions.abs().max()
    assert torch.allclose(fast.attributions, ref.attributions, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(fast.completeness_error, ref.completeness_error, atol=1e-5 * scale + 1e-8, rtol=1e-3)


@pytest.mark.parametrize("arch", CAUSAL)
def test_fast_matches_reference_long_prompt_and_pre_activation(models, arch):
    """A prompt longer than Gemma 3's tiny sliding window (64), and the pre-activation hook."""
    model = models(arch)
    prompt = " ".join(["Paris is the capital of France. Berlin, Madrid, Rome."] * 6)
    q = query(model, prompt=prompt)
    assert len(q.prompt) > 64
    point = "mlp.hook_pre" if arch != "bloom" else "mlp.hook_post"
    ref = integrated_gradients(model, q, steps=3, attribution="reference", point=point, grid="linspace")
    fast = integrated_gradients(model, q, steps=3, attribution="fast", point=point, grid="linspace")
    scale = ref.attributions.abs().max()
    assert torch.allclose(fast.attributions, ref.attributions, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 2, 7, 500])
def test_branching_rows_match_per_row_fast_path(models, arch, batch_size):
    """The default fast path branches each layer's rows off one clean row inside the pass; it must
    equal the per-row cached path (every row runs all layers) for any chunking, with a baseline."""
    model = models(arch, n_layers=3)
    q = query(model)
    tokens, _ = q.step(0)
    target = int(q.answer[0])
    run = FastRunner.prepare(model, tokens)
    baseline = 0.3 * torch.randn(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    layers = [2, 0]
    args = (run, target, layers, 4, baseline, batch_size, "mlp.hook_post", "right", True)
    branched, err_b = exact.suffix_ig(*args)
    per_row, err_r = exact.ig_one_token(*args)
    scale = per_row.abs().max()
    assert torch.allclose(branched, per_row, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(err_b, err_r, atol=1e-5 * scale + 1e-8, rtol=1e-3)
    assert not any(len(hp.fwd_hooks) for hp in model.hook_dict.values())


@pytest.mark.parametrize("arch", CAUSAL)
def test_auto_uses_fast_path_on_verified_families(models, arch):
    model = models(arch)
    assert fast_path_supported(model)
    assert integrated_gradients(model, query(model), steps=2).attribution == "fast"


def test_fast_path_leaves_model_unchanged(models):
    model = models("gemma3")
    q = query(model)
    before = model(q.prompt[None])
    integrated_gradients(model, q, steps=2, attribution="fast")
    assert all("_update_kv_cache" not in block.attn.__dict__ for block in model.blocks)
    assert not any(len(hp.fwd_hooks) for hp in model.hook_dict.values())
    assert torch.equal(model(q.prompt[None]), before)


def test_fast_path_falls_back_when_it_disagrees(models, monkeypatch):
    model = models("gpt2")
    q = query(model)
    ref = integrated_gradients(model, q, steps=3, attribution="reference")
    monkeypatch.setattr(runners, "FAST_CHECK_TOL", -1.0)  # every check fails
    with pytest.warns(UserWarning, match="fast path"):
        res = integrated_gradients(model, q, steps=3, attribution="fast")
    assert res.attribution == "reference" and torch.equal(res.attributions, ref.attributions)


def test_unverified_architecture_uses_reference(models, monkeypatch):
    model = models("gpt2")
    monkeypatch.setattr(attribution_api, "FAST_VERIFIED_ARCHITECTURES", frozenset())
    assert not fast_path_supported(model)
    assert integrated_gradients(model, query(model), steps=2).attribution == "reference"
    assert "GPT2LMHeadModel" in FAST_VERIFIED_ARCHITECTURES


# --- approximate screening --------------------------------------------------------------------


@pytest.mark.parametrize("arch", CAUSAL)
def test_approx_is_one_step_integrated_gradients(models, arch):
    """Activation x gradient from one pass equals exact IG with m = 1 (alpha = 1 only)."""
    model = models(arch)
    q = query(model, n_answer=2)
    approx = integrated_gradients(model, q, attribution="approx", completeness=True)
    one_step = integrated_gradients(model, q, steps=1, attribution="reference")
    assert approx.attribution == "approx"
    scale = one_step.attributions.abs().max()
    assert torch.allclose(approx.attributions, one_step.attributions, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(approx.completeness_error, one_step.completeness_error, atol=1e-5 * scale + 1e-8,
                          rtol=1e-3)


@pytest.mark.parametrize("attribution", ["approx", "fast", "reference"])
def test_completeness_check_can_be_skipped_without_changing_attributions(models, attribution):
    model = models("gemma3")
    q = query(model, n_answer=2)
    checked = integrated_gradients(model, q, steps=3, attribution=attribution, completeness=True)
    skipped = integrated_gradients(model, q, steps=3, attribution=attribution, completeness=False)
    # exact modes: the same rows without the baseline ones; approx: completeness=True runs the per-token
    # pass through the model's logits, completeness=False the shared padded pass with the fused
    # objective, so they agree to float rounding (as in test_attribute_queries_batches_approx_exactly)
    scale = float(checked.attributions.abs().max())
    tol = dict(rtol=1e-4, atol=1e-5 * scale) if attribution == "approx" else dict(rtol=1e-5, atol=1e-7 * scale)
    assert torch.allclose(checked.attributions, skipped.attributions, **tol)
    assert torch.isfinite(checked.completeness_error).all() and torch.isnan(skipped.completeness_error).all()
    default = integrated_gradients(model, q, steps=3, attribution=attribution)
    assert torch.isnan(default.completeness_error).all() == (attribution == "approx")


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_approx_statistics_come_from_its_own_pass(models, arch):
    """approx takes P(answer), entropy and rank from its gradient pass; they equal the separate
    teacher-forced pass that exact IG uses."""
    from lakn.probability import answer_stats

    model = models(arch)
    q = query(model, n_answer=3)
    got = integrated_gradients(model, q, attribution="approx").stats
    ref = answer_stats(model, q)
    assert torch.allclose(got.token_probs, ref.token_probs, rtol=1e-4, atol=1e-7)
    assert got.rank == ref.rank and got.entropy == pytest.approx(ref.entropy, rel=1e-4)
    assert got.probability == pytest.approx(ref.probability, rel=1e-4)


def test_target_probability_gradient_matches_softmax():
    from lakn.objective import target_probability

    logits = torch.randn(5, 300, dtype=torch.float64) * 3
    weights = torch.rand(5, dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    (target_probability(x, 17) * weights).sum().backward()
    y = logits.clone().requires_grad_(True)
    (y.softmax(-1)[:, 17] * weights).sum().backward()
    assert torch.allclose(target_probability(logits, 17), logits.softmax(-1)[:, 17], rtol=1e-12)
    assert torch.allclose(x.grad, y.grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda z: target_probability(z, 3), (logits[:2, :20].clone().requires_grad_(True),))


def test_coarse_to_fine_refines_chosen_layers(models):
    model = models("llama", n_layers=3)
    q = query(model)
    res = coarse_to_fine(model, q, refine_layers=1, steps=4)
    exact = integrated_gradients(model, q, steps=4)
    approx = integrated_gradients(model, q, attribution="approx")
    refined = int(res.attribution.split(":")[1].rstrip(")"))
    scale = float(exact.attributions.abs().max())
    for l in range(3):  # equal up to float rounding (the rows share batches differently)
        target = exact if l == refined else approx
        assert torch.allclose(res.attributions[l], target.attributions[l], atol=1e-5 * scale, rtol=1e-4)
    with pytest.raises(ValueError):
        coarse_to_fine(model, q, refine_layers=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_unembedding_objective_matches_softmax(with_bias):
    """The fast path's objective unembeds ln_final's output itself, tile by tile: its value and
    gradient equal softmax(h W^T + b)[y] (float64, a vocabulary that the tiles do not divide,
    the target in the last, partial tile)."""
    from lakn.objective import unembed_target_probability

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, dtype=torch.float64, generator=g)
    weight = torch.randn(300, 16, dtype=torch.float64, generator=g)
    bias = torch.randn(300, dtype=torch.float64, generator=g) if with_bias else None
    row_w = torch.rand(6, dtype=torch.float64, generator=g)
    for target in (5, 299):
        x = hidden.clone().requires_grad_(True)
        got = unembed_target_probability(x, weight, target, bias, tile=64)
        (got * row_w).sum().backward()
        y = hidden.clone().requires_grad_(True)
        logits = y @ weight.T + (0 if bias is None else bias)
        want = logits.softmax(-1)[:, target]
        (want * row_w).sum().backward()
        assert torch.allclose(got, want.detach(), rtol=1e-12)
        assert torch.allclose(x.grad, y.grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda h: unembed_target_probability(h, weight, 7, bias, tile=32),
                                    (hidden[:2].clone().requires_grad_(True),))
    with pytest.raises(ValueError, match="hidden must have shape"):
        unembed_target_probability(hidden[:, :3], weight, 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        unembed_target_probability(hidden, weight, 300)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_fused_unembedding_leaves_fast_path_results_unchanged(models, arch, monkeypatch):
    """The branching fast path with the fused objective equals the same path with the model's own
    unembedding (``lakn.objective.unembedding`` disabled)."""
    model = models(arch, n_layers=3)
    q = query(model)
    assert objective.unembedding(model) is not None
    fused = integrated_gradients(model, q, steps=4, attribution="fast", batch_size=9)
    monkeypatch.setattr(objective, "unembedding", lambda model: None)
    plain = integrated_gradients(model, q, steps=4, attribution="fast", batch_size=9)
    scale = plain.attributions.abs().max()
    assert torch.allclose(fused.attributions, plain.attributions, atol=1e-6 * scale, rtol=1e-5)
    assert torch.allclose(fused.completeness_error, plain.completeness_error, atol=1e-6 * scale + 1e-9, rtol=1e-4)


def test_fused_unembedding_statistics_and_per_row_targets():
    """Per-row targets, entropy (nats) and rank from the fused objective equal the softmax's."""
    from lakn.objective import target_probability, unembed_target_probability

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 12, dtype=torch.float64, generator=g) * 2
    weight = torch.randn(260, 12, dtype=torch.float64, generator=g)
    targets = torch.tensor([0, 63, 64, 200, 259])
    prob, entropy, rank = unembed_target_probability(hidden, weight, targets, tile=64, with_stats=True)
    log_p = (hidden @ weight.T).log_softmax(-1)
    want = log_p.gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(prob, want.exp(), rtol=1e-12)
    assert torch.allclose(entropy, -(log_p.exp() * log_p).sum(-1), rtol=1e-10)
    assert rank.tolist() == (log_p > want[:, None]).sum(-1).tolist()
    assert torch.allclose(target_probability(hidden @ weight.T, targets), want.exp(), rtol=1e-12)
    p2, ent2, rank2 = target_probability(hidden @ weight.T, targets, with_stats=True)
    assert torch.allclose(p2, prob, rtol=1e-12) and torch.allclose(ent2, entropy, rtol=1e-10)
    assert rank2.tolist() == rank.tolist()


@pytest.mark.parametrize("arch", CAUSAL)
def test_attribute_queries_batches_approx_exactly(models, arch):
    """approx rows of several queries (different prompt and answer lengths) share right-padded
    passes: attributions and statistics equal each query attributed on its own, for any batch."""
    from lakn.attribution import attribute_queries
    from lakn.probability import answer_stats

    model = models(arch)
    qs = [query(model, n_answer=2), query(model, n_answer=1, prompt="Paris is the capital city of"),
          query(model, n_answer=3, prompt="Berlin")]
    for first in (False, True):
        alone = [integrated_gradients(model, q, attribution="approx", completeness=True, first_token_only=first) for q in qs]
        for batch_size in (None, 2):
            together = attribute_queries(model, qs, attribution="approx", first_token_only=first, batch_size=batch_size)
            for a, b, q in zip(together, alone, qs):
                scale = b.attributions.abs().max()
                assert a.attribution == "approx" and a.n_answer_tokens == b.n_answer_tokens
                assert torch.allclose(a.attributions, b.attributions, atol=1e-5 * scale, rtol=1e-4)
                ref = answer_stats(model, q)
                assert torch.allclose(a.stats.token_probs, ref.token_probs, rtol=1e-4, atol=1e-7)
                assert a.stats.rank == ref.rank and a.stats.entropy == pytest.approx(ref.entropy, rel=1e-4)


def test_approx_batches_with_the_models_own_unembedding(models, monkeypatch):
    """Where the objective cannot unembed itself (lakn.objective.unembedding gives None), shared
    approx passes read the model's logits and give the same attributions and statistics."""
    from lakn.attribution import attribute_queries

    model = models("gemma3")
    qs = [query(model, n_answer=2), query(model, n_answer=1, prompt="Paris is the capital city of")]
    fused = attribute_queries(model, qs, attribution="approx")
    monkeypatch.setattr(objective, "unembedding", lambda model: None)
    plain = attribute_queries(model, qs, attribution="approx")
    for a, b in zip(plain, fused):
        scale = b.attributions.abs().max()
        assert torch.allclose(a.attributions, b.attributions, atol=1e-5 * scale, rtol=1e-4)
        assert torch.allclose(a.stats.token_probs, b.stats.token_probs, rtol=1e-4, atol=1e-7)
        assert a.stats.rank == b.stats.rank and a.stats.entropy == pytest.approx(b.stats.entropy, rel=1e-4)


def test_attribute_queries_exact_modes_equal_single_queries(models):
    from lakn.attribution import attribute_queries

    model = models("llama")
    qs = [query(model, n_answer=2), query(model, prompt="Berlin")]
    for attribution in ("fast", "reference"):
        together = attribute_queries(model, qs, attribution=attribution, steps=3)
        for a, q in zip(together, qs):
            b = integrated_gradients(model, q, attribution=attribution, steps=3)
            assert torch.equal(a.attributions, b.attributions) and a.attribution == b.attribution
    with pytest.raises(ValueError, match="unknown attribution"):
        attribute_queries(model, qs, attribution="nope")
    with pytest.raises(TypeError, match="unexpected"):
        attribute_queries(model, qs, attribution="approx", chunk=3)
    for attribution in ("approx", "fast"):
        with pytest.raises(ValueError, match="layers must be a non-empty subset"):
            attribute_queries(model, qs, attribution=attribution, layers=[0, 99])
        with pytest.raises(ValueError, match="baseline must have shape"):
            attribute_queries(model, qs, attribution=attribution, baseline=torch.zeros(2, 3))
    assert attribute_queries(model, [], attribution="approx") == []


def test_default_chunk_follows_the_memory_budget(models, monkeypatch):
    """batch_size=None sizes the chunk from memory_estimate and CHUNK_MEMORY_GIB: all rows when they
    fit, fewer for longer prompts and for the full-sequence reference, never under 16 rows; the
    result does not depend on it."""
    from lakn.attribution.memory import auto_batch_size, memory_estimate

    model = models("llama")
    assert auto_batch_size(model, 6, 50) == 50  # a tiny model: everything fits
    monkeypatch.setattr(memory, "CHUNK_MEMORY_GIB", 1e-4)  # ~100 KiB a chunk
    cfg = model.cfg
    per_row = memory_estimate(n_params=0, n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=cfg.d_mlp,
                              d_vocab=cfg.d_vocab, n_kv_heads=cfg.n_heads, d_head=cfg.d_head, prompt_len=6,
                              batch_size=1, weight_bytes=4)["total"]
    assert auto_batch_size(model, 6, 10_000) == max(16, int(1e-4 / per_row))
    assert auto_batch_size(model, 200, 10_000) <= auto_batch_size(model, 6, 10_000)
    assert auto_batch_size(model, 6, 10_000, full_sequence=True) <= auto_batch_size(model, 6, 10_000)
    assert auto_batch_size(model, 10_000, 10_000, full_sequence=True) == 16
    assert auto_batch_size(model, 6, 5) == 5
    q = query(model)
    assert auto_batch_size(model, len(q.prompt), 2 * 31 + 1) < 2 * 31 + 1  # several chunks below
    small = integrated_gradients(model, q, steps=30)
    monkeypatch.setattr(memory, "CHUNK_MEMORY_GIB", 1.0)
    large = integrated_gradients(model, q, steps=30)
    scale = large.attributions.abs().max()
    assert torch.allclose(small.attributions, large.attributions, atol=1e-6 * scale, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_exact_queries_of_equal_length_share_passes(models, arch, monkeypatch):
    """The exact fast path runs (query, answer token) inputs of equal length in the same passes
    (each row's key/value cache is its own query's prompt); the result equals each query alone,
    for any chunk size, with multi-token answers, a baseline and a layer subset."""
    from lakn.attribution import attribute_queries

    model = models(arch, n_layers=3)
    toks = model.to_tokens("The capital of France is Paris and Berlin is the capital of Germany")[0].cpu()
    qs = [EncodedQuery(toks[i : i + 5], toks[i + 5 : i + 5 + n]) for i, n in [(0, 2), (2, 1), (4, 2), (1, 1)]]
    groups = []
    real = exact.suffix_ig_group
    monkeypatch.setattr(exact, "suffix_ig_group", lambda runs, *a, **k: groups.append(len(runs)) or real(runs, *a, **k))
    baseline = 0.2 * torch.randn(3, model.cfg.d_mlp, generator=torch.Generator().manual_seed(1))
    for kwargs in [dict(steps=3), dict(steps=4, layers=[2, 0], baseline=baseline, first_token_only=True)]:
        alone = [integrated_gradients(model, q, attribution="fast", **kwargs) for q in qs]
        for batch_size in (None, 9, 40):
            groups.clear()
            together = attribute_queries(model, qs, attribution="fast", batch_size=batch_size, **kwargs)
            # several query tokens share passes when the chunk holds their rows (9 holds one)
            assert (max(groups) > 1) == (batch_size != 9)
            for a, b in zip(together, alone):
                scale = b.attributions.abs().max()
                assert a.attribution == "fast" and a.n_answer_tokens == b.n_answer_tokens
                assert torch.allclose(a.attributions, b.attributions, atol=1e-5 * scale, rtol=1e-4)
                assert torch.allclose(a.completeness_error, b.completeness_error, atol=1e-5 * scale + 1e-8, rtol=1e-3)
                assert torch.equal(a.stats.token_probs, b.stats.token_probs)
    assert not any(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def test_exact_queries_share_passes_beyond_the_sliding_window(models):
    """Equal-length prompts longer than Gemma 3's tiny sliding window (64) also share passes exactly."""
    from lakn.attribution import attribute_queries

    model = models("gemma3", n_layers=3)
    toks = model.to_tokens(" ".join(["Paris is the capital of France. Berlin, Madrid, Rome."] * 8))[0].cpu()
    qs = [EncodedQuery(toks[i : i + 70], toks[i + 70 : i + 71]) for i in (0, 3, 9)]
    together = attribute_queries(model, qs, attribution="fast", steps=2)
    for a, q in zip(together, qs):
        b = integrated_gradients(model, q, attribution="fast", steps=2)
        scale = b.attributions.abs().max()
        assert torch.allclose(a.attributions, b.attributions, atol=1e-5 * scale, rtol=1e-4)


def test_fused_unembedding_with_extreme_logits_and_bfloat16():
    """Tiles far below the maximum (floored at e^-80 to avoid denormals) change nothing at float32
    precision, and a bfloat16 unembedding accumulates in float32."""
    from lakn.objective import unembed_target_probability

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 8, generator=g)
    weight = torch.randn(512, 8, generator=g)
    weight[:256] *= 40.0  # logits spanning hundreds of nats between tiles
    logits = hidden.double() @ weight.double().T
    second = logits.argsort(-1, descending=True)[:, 1]  # a likely token (the top one's P is ~1)
    targets = torch.cat([second[:3], torch.tensor([400])])  # and one in a far-below tile
    x = hidden.clone().requires_grad_(True)
    got = unembed_target_probability(x, weight, targets, tile=64)
    got.sum().backward()
    h64 = hidden.double().requires_grad_(True)
    want = (h64 @ weight.double().T).softmax(-1).gather(-1, targets[:, None])[:, 0]
    want.sum().backward()
    assert torch.isfinite(got).all() and torch.allclose(got.double(), want, rtol=1e-4, atol=1e-30)
    assert torch.allclose(x.grad.double(), h64.grad, rtol=1e-4, atol=1e-6 * float(h64.grad.abs().max()))
    half = unembed_target_probability(hidden.bfloat16(), weight.bfloat16(), targets, tile=64)
    assert half.dtype == torch.float32
    ref = (hidden.bfloat16() @ weight.bfloat16().T).float().softmax(-1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(half, ref, rtol=2e-2, atol=1e-6)
