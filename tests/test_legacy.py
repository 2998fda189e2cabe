"""lakn's hooks, attribution and localisation on a legacy TransformerLens 3.x ``HookedTransformer``.

Runs only where transformer-lens 3.x is installed (CI makes such an environment: see .ci/run);
elsewhere it is skipped. The model is built from a config: no download.
"""

import pytest
import torch

try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4 removed HookedTransformer
    pytest.skip("needs transformer-lens 3.x (HookedTransformer)", allow_module_level=True)

import lakn
from lakn.testing import active_hook_count, tiny_tokenizer


@pytest.fixture(scope="module")
def legacy_model():
    tok = tiny_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=16, n_heads=2, d_mlp=64, d_vocab=len(tok),
                                  n_ctx=128, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg, tokenizer=tok)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(4.0)
    model.eval()
    return model


def test_completeness_on_hooked_transformer(legacy_model):
    query = lakn.Query("The capital of France is [Y]", "The capital of France is", "Paris", " ", "en")
    coarse = lakn.integrated_gradients(legacy_model, query, steps=5)
    fine = lakn.integrated_gradients(legacy_model, query, steps=50)
    # the Riemann error shrinks like 1/m: 10x the steps, well under a quarter of the error
    assert fine.completeness_error.max() < coarse.completeness_error.max() / 4
    assert active_hook_count(legacy_model) == 0


def test_neuron_hooks_on_hooked_transformer(legacy_model):
    tokens = legacy_model.to_tokens("The capital of France is")
    store = {}
    hooks = lakn.neuron_hooks([(1, 3), (1, 5)], factor=0.0, position="last")
    hooks.append((lakn.hook_name(1), lakn.capture_hook(store, 1)))
    legacy_model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert store[1][0, -1, 3] == 0 and store[1][0, -1, 5] == 0
    assert store[1][0, 0].abs().sum() > 0


def test_localize_on_hooked_transformer(legacy_model, toy_facts):
    result = lakn.localize(legacy_model, toy_facts[:2], languages=["en", "fr"], steps=3, progress=False)
    assert result.config["n_layers"] == 2 and result.config["d_mlp"] == 64
    assert all(0 <= l < 2 and 0 <= n < 64 for v in result.lakn.values() for l, n in v)
