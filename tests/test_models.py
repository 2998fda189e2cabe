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
    with pytest.raises(ModelLoadError, match="has no config.json: not a Hugging Face model folder"):
        load_model(tmp_path)


def test_unknown_hub_name_offline_is_named():
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody/no-such-model-xyz")
    message = str(info.value)
    assert message == ("could not load model 'nobody/no-such-model-xyz': not a local path, and not in the "
                       "Hugging Face cache (offline: HF_HUB_OFFLINE is set)")  # whole, no URL cut in half


@pytest.mark.parametrize("name, content", [("notes.txt", b"hello"), ("random", bytes(range(256))),
                                           ("model.safetensors", b"\x00" * 64), ("config.json", b"{}")])
def test_existing_non_model_file_is_not_called_missing(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "not a model folder or .gguf file" in str(info.value) and "not found" not in str(info.value)
    assert str(path) in str(info.value)


def test_file_named_gguf_without_gguf_header(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load_model(path)


def test_folder_with_broken_config_names_the_folder(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match=f"could not read the Hugging Face model folder {tmp_path}"):
        load_model(tmp_path)


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match=f"model path not found: {tmp_path}/models/none"):
        load_model("~/models/none")
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match=f"model folder {tmp_path}/models has no config.json"):
        load_model("~/models")


def test_invalid_hub_name_is_named():
    with pytest.raises(ModelLoadError, match="not a valid Hugging Face model name"):
        load_model("no such model")


def test_hub_errors_are_cut_at_a_word_boundary():
    from lakn.models import _brief

    url = "https://huggingface.co/docs/transformers/installation#offline-mode"
    err = OSError("x" * 150 + " see " + url + "\nsecond line")
    text = _brief(err)
    assert url not in text and "https://" not in text and "second line" not in text and text.endswith("...")
    assert _brief(OSError("short " + url)) == "OSError: short " + url


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
