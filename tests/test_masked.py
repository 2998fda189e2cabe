"""Masked LMs (BERT-shaped, built from a config): mask tokens, attribution at the mask positions."""

import pytest
import torch

import lakn
from lakn.testing import active_hook_count, tiny_model
from lakn.probability import answer_stats
from lakn.tokens import encode_query


@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert", weight_scale=3.0)


@pytest.fixture
def fact():
    return lakn.Fact.from_dict({
        "fact_id": "capital_france", "relation": "capital", "object": {"en": "Paris", "zh": "巴黎"},
        "queries": {"en": ["[Y] is the capital of France.", "The capital of France is [Y]."],
                    "zh": ["法国的首都是[Y]。"]},
    })


def test_one_mask_per_answer_token(bert, fact):
    assert lakn.models.is_masked_lm(bert)
    queries = fact.queries("en", causal=False)
    assert len(queries) == 2  # slot-first queries are usable by a masked LM
    enc = encode_query(bert, queries[0])
    mask = bert.tokenizer.mask_token_id
    assert (enc.prompt == mask).sum() == len(enc.answer) == len(enc.mask_positions)
    # teacher forcing: step t fills the first t masks with the answer and predicts at mask t
    tokens, pos = enc.step(1)
    assert tokens[enc.mask_positions[0]] == enc.answer[0] and tokens[pos] == mask
    stats = answer_stats(bert, enc)
    logits = bert(enc.prompt[None])[0, enc.mask_positions[0]].softmax(-1)
    assert stats.token_probs[0] == pytest.approx(float(logits[enc.answer[0]]), rel=1e-5)


def test_ig_at_mask_position_is_complete(bert, fact):
    query = fact.queries("en", causal=False)[0]
    coarse = lakn.integrated_gradients(bert, query, steps=4, first_token_only=True)
    fine = lakn.integrated_gradients(bert, query, steps=40, first_token_only=True)
    assert coarse.attribution == "reference"
    assert fine.completeness_error.max() < coarse.completeness_error.max() / 4
    # the attribution really is at the mask: per layer, sum_i Attr(l, i) matches F(a) - F(0) with
    # F(0) computed here independently (layer l's neurons zeroed at the first mask position only)
    enc = encode_query(bert, query)
    pos, target = int(enc.mask_positions[0]), int(enc.answer[0])

    def p_target(hooks=()):
        with torch.no_grad(), bert.hooks(fwd_hooks=list(hooks)):
            return float(bert(enc.prompt[None])[0, pos].softmax(-1)[target])

    def zero_at_mask(act, hook=None):
        act = act.clone()
        act[:, pos] = 0.0
        return act

    f_a = p_target()
    for i, layer in enumerate(fine.layers):
        gap = f_a - p_target([(lakn.hook_name(layer), zero_at_mask)])
        total = float(fine.attributions[i].sum())
        assert abs(gap) > 1e-6  # a real difference to account for
        assert float(fine.completeness_error[i]) == pytest.approx(abs(total - gap), rel=1e-3, abs=1e-8)
        assert total == pytest.approx(gap, rel=0.05)
    with pytest.raises(ValueError, match="attribution='fast' is for causal LMs"):
        lakn.integrated_gradients(bert, query, steps=2, attribution="fast")


def test_localize_masked_model(bert, fact):
    built_in = active_hook_count(bert)  # the BERT bridge keeps hooks of its own
    result = lakn.localize(bert, [fact], languages=["en", "zh"], steps=3, progress=False)
    rows = result.queries_dataframe()
    assert list(rows["language"]) == ["en", "en", "zh"]  # both en queries, slot-first included
    assert (rows["answer_tokens"] >= 1).all()
    assert active_hook_count(bert) == built_in
