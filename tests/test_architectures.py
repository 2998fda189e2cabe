"""Every architecture family localises and intervenes; dtypes and devices behave."""

import pytest
import torch

import lakn
from lakn.testing import ARCHITECTURES, active_hook_count, tiny_model
from lakn.probability import answer_stats
from lakn.tokens import encode_query


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_localize_and_suppress_each_family(arch, toy_facts):
    model = tiny_model(arch, weight_scale=4.0)
    result = lakn.localize(model, toy_facts[:2], languages=["en", "fr"], steps=3, progress=False)
    fid = result.fact_ids[0]
    neurons = result.neurons(fid)
    assert neurons and all(0 <= l < model.cfg.n_layers and 0 <= n < model.cfg.d_mlp for l, n in neurons)
    # suppressing the neurons changes exactly those activations (the input of W_out) to zero
    query = toy_facts[0].queries("en")[0]
    enc = encode_query(model, query)
    store = {}
    layer, neuron = neurons[0]
    hooks = lakn.neuron_hooks(neurons, factor=0.0) + [(lakn.hook_name(layer), lakn.capture_hook(store, layer))]
    model.run_with_hooks(enc.prompt[None], fwd_hooks=hooks)
    assert float(store[layer][0, :, neuron].abs().max()) == 0.0
    before = answer_stats(model, enc).probability
    with model.hooks(fwd_hooks=lakn.neuron_hooks(neurons, factor=0.0)):
        after = answer_stats(model, enc).probability
        with torch.no_grad():  # the same hooks, read by hand: P of the one-token answer at the last position
            by_hand = float(model(enc.prompt[None])[0, -1].softmax(-1)[enc.answer[0]])
    assert len(enc.answer) == 1 and after == pytest.approx(by_hand, rel=1e-5)
    assert abs(after - before) > 1e-6 * before
    assert active_hook_count(model) == 0


def test_bfloat16_model_accumulates_in_float32():
    query = lakn.Query("The capital of France is [Y]", "The capital of France is", "Paris", " ", "en")
    ref = lakn.integrated_gradients(tiny_model("llama", weight_scale=4.0), query, steps=8)
    half = lakn.integrated_gradients(tiny_model("llama", weight_scale=4.0, dtype=torch.bfloat16), query, steps=8)
    assert half.attributions.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([ref.attributions.flatten(), half.attributions.flatten()]))[0, 1]
    assert corr > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    query = lakn.Query("The capital of France is [Y]", "The capital of France is", "Paris", " ", "en")
    cpu = lakn.integrated_gradients(tiny_model("llama", weight_scale=4.0), query, steps=8)
    gpu = lakn.integrated_gradients(tiny_model("llama", weight_scale=4.0, device="cuda"), query, steps=8)
    torch.testing.assert_close(gpu.attributions, cpu.attributions, rtol=1e-3, atol=1e-6)
