"""Shared fixtures. Tests never reach a model hub: offline mode is forced before any import."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rml_lama_like"


@pytest.fixture(scope="session")
def tiny_llama():
    from lakn.testing import tiny_model

    return tiny_model("llama", weight_scale=4.0)


@pytest.fixture(scope="session")
def default_model():
    """The embedded Gemma 3 270M (de-quantised once per machine, then loaded from the cache)."""
    import lakn

    return lakn.load_model()


@pytest.fixture
def toy_facts():
    from lakn.facts import Fact

    rows = [("France", "Paris", "巴黎", "capital"), ("Spain", "Madrid", "马德里", "capital"),
            ("Italy", "Rome", "罗马", "capital"), ("Japan", "Tokyo", "东京", "capital")]
    return [
        Fact.from_dict({
            "fact_id": f"capital_{country.lower()}", "relation": rel,
            "subject": {"en": country, "fr": country, "zh": country},
            "object": {"en": city, "fr": city, "zh": zh},
            "queries": {
                "en": [f"The capital of {country} is [Y]", f"{country}'s capital city is [Y]"],
                "fr": [f"La capitale de {country} est [Y]", f"{country} a pour capitale [Y]"],
                "zh": [f"{country}的首都是[Y]", f"{country}的首都叫[Y]。"],
            },
        })
        for country, city, zh, rel in rows
    ]


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared RML-LAMA-like data not found at {SHARED_DATA}")
    return SHARED_DATA
