"""Model loading: clear errors for what cannot be loaded, and the tiny config-built families."""

import pytest
import torch

import lakn
from lakn.models import ModelLoadError, load_model
from lakn.testing import ARCHITECTURES, tiny_model


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF model file not found: .*nothing.gguf"):
        load_model(tmp_path / "nothing.gguf")


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        load_model(str(tmp_path / "a" / "b" / "model"))


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)


def test_unknown_hub_name_offline_is_named():
    with pytest.raises(ModelLoadError, match="could not load model 'nobody/no-such-model-xyz'"):
        load_model("nobody/no-such-model-xyz")


def test_local_hf_folder_loads(tmp_path):
    from lakn.testing import save_tiny_model

    hf = save_tiny_model(tmp_path, "llama")
    model = load_model(tmp_path)
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf.eval()(tokens).logits)
    assert not any(p.requires_grad for p in model.parameters())
    assert lakn.models.model_name(model) == str(tmp_path)


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM, CTRLConfig  # an architecture the bridge lacks

    from lakn.models import bridge_from_hf
    from lakn.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    hf = AutoModelForCausalLM.from_config(CTRLConfig(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, dff=32))
    with pytest.raises(ModelLoadError, match="not supported"):
        bridge_from_hf(hf, tok, name="tiny-ctrl")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_families_expose_neuron_hooks(arch):
    model = tiny_model(arch)
    store = {}
    from lakn.hooks import capture_hook, hook_name

    tokens = model.to_tokens("Paris")
    model.run_with_hooks(tokens, fwd_hooks=[(hook_name(1), capture_hook(store, 1))])
    assert store[1].shape == (1, tokens.shape[1], model.cfg.d_mlp)
