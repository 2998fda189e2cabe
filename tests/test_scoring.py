"""Unit tests for lakn.scoring and lakn.selection: hand-computed numbers on tiny constructed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lakn.scoring import (
    METHODS,
    SHARED_KWARGS,
    WEIGHT_EPS,
    FactScores,
    amig_method,
    kn_method,
    laa_score,
    language_score,
    matrice,
    mean_method,
    normalize_by_max,
    query_weights,
    score_fact,
    validate_fact_inputs,
)
from lakn.selection import (
    common_neuron_filter,
    random_neurons,
    reference_sets,
    select_neurons,
    specific_scores,
    use_specific,
)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# --------------------------------------------------------------------------- fixtures


def two_language_fact():
    """2 languages x 3 queries x 2 layers x 4 neurons; every query has max 1 at (0, 0), so the
    normalised maps equal the raw ones and hand computation is direct."""
    en = torch.zeros(3, 2, 4)
    fr = torch.zeros(3, 2, 4)
    en[:, 0, 0] = 1.0
    fr[:, 0, 0] = 1.0
    en[:, 1, 2] = torch.tensor([1.0, 0.0, 0.0])  # used by one en paraphrase
    fr[:, 1, 2] = 1.0  # used by every fr paraphrase
    en[:, 0, 1] = 0.5  # shared by everyone at 0.5
    fr[:, 0, 1] = 0.5
    attributions = {"en": en, "fr": fr}
    confidence = {"en": torch.tensor([0.5, 0.25, 0.25]), "fr": torch.tensor([0.9, 0.9, 0.9])}
    entropy = {"en": torch.tensor([0.2, 0.4, 0.6]), "fr": torch.tensor([0.1, 0.1, 0.1])}
    return attributions, confidence, entropy


def random_fact(n_lang=3, n_query=4, layers=3, d_mlp=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    langs = ["en", "fr", "zh", "ru"][:n_lang]
    shared = torch.rand(layers, d_mlp, generator=g)  # a common pattern, so the LAA has a clear top
    attributions = {l: shared + 0.1 * torch.randn(n_query, layers, d_mlp, generator=g) for l in langs}
    confidence = {l: torch.rand(n_query, generator=g) * 0.9 + 0.05 for l in langs}
    entropy = {l: torch.rand(n_query, generator=g) for l in langs}
    return attributions, confidence, entropy


# --------------------------------------------------------------------------- normalize_by_max


def test_normalize_by_max_divides_each_query_by_its_own_max():
    attr = torch.tensor(
        [
            [[2.0, 1.0], [-1.0, 0.5]],  # max 2
            [[4.0, 0.0], [1.0, 2.0]],  # max 4
        ],
        dtype=torch.float64,
    )
    out = normalize_by_max(attr)
    assert out.dtype == torch.float32
    assert close(out[0], [[1.0, 0.5], [-0.5, 0.25]])
    assert close(out[1], [[1.0, 0.0], [0.25, 0.5]])


def test_normalize_by_max_nonpositive_max_gives_zeros():
    attr = torch.tensor([[[-1.0, -3.0]], [[0.0, 0.0]], [[0.0, -2.0]], [[1.0, 3.0]]])
    out = normalize_by_max(attr)
    assert out[:3].abs().sum().item() == 0.0
    assert close(out[3], [[1 / 3, 1.0]])
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- query_weights


def test_query_weights_schemes():
    conf = torch.tensor([0.1, 0.1, 0.2])
    ent = torch.tensor([0.5, 0.0, 1.0])
    assert close(query_weights(conf, ent, "uniform"), [1 / 3, 1 / 3, 1 / 3])
    assert close(query_weights(conf, ent, "confidence"), [0.25, 0.25, 0.5])
    # 1 - H = [0.5, 1.0, 0 -> eps]
    w = query_weights(conf, ent, "entropy")
    assert close(w, [0.5 / 1.5, 1.0 / 1.5, 0.0], tol=1e-5)
    assert w[2].item() > 0
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)


def test_query_weights_never_all_vanish():
    w = query_weights(torch.zeros(4), torch.ones(4), "entropy")
    assert close(w, [0.25] * 4)
    w = query_weights(torch.zeros(2), torch.zeros(2), "confidence")
    assert close(w, [0.5, 0.5])
    assert WEIGHT_EPS > 0


def test_query_weights_errors():
    with pytest.raises(ValueError, match="unknown query weighting 'softmax'"):
        query_weights(torch.ones(2), torch.ones(2), "softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confidence has 2 queries but entropy has 3"):
        query_weights(torch.ones(2), torch.ones(3), "uniform")
    with pytest.raises(ValueError, match="zero queries"):
        query_weights(torch.ones(0), torch.ones(0), "uniform")


# --------------------------------------------------------------------------- language_score / laa_score


def test_language_score_hand_computed():
    A = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # 2 queries, 1 layer, 2 neurons
    s, mu, sigma = language_score(A, torch.tensor([0.5, 0.5]), beta=1.0)
    assert close(mu, [[1.0, 0.5]])
    assert close(sigma, [[0.0, 0.5]])
    assert close(s, [[1.0, 0.0]])
    # weights 0.75 / 0.25: mu2 = 0.25, var2 = .75*.25^2 + .25*.75^2 = 0.1875
    s, mu, sigma = language_score(A, torch.tensor([0.75, 0.25]), beta=2.0)
    assert close(mu, [[1.0, 0.25]])
    assert close(sigma, [[0.0, math.sqrt(0.1875)]])
    assert close(s, [[1.0, 0.25 - 2 * math.sqrt(0.1875)]])
    # unnormalised weights are renormalised
    s3, _, _ = language_score(A, torch.tensor([3.0, 1.0]), beta=2.0)
    assert close(s3, s)


def test_laa_score_hand_computed():
    scores = {"en": torch.tensor([[1.0, 0.5]]), "fr": torch.tensor([[1.0, 0.0]])}
    assert close(laa_score(scores, None, gamma=1.0), [[1.0, 0.0]])
    assert close(laa_score(scores, None, gamma=0.0), [[1.0, 0.25]])
    # v = [0.75, 0.25]: mu2 = .375, var2 = .75*.125^2 + .25*.375^2 = .046875
    laa = laa_score(scores, {"en": 3.0, "fr": 1.0}, gamma=1.0)
    assert close(laa, [[1.0, 0.375 - math.sqrt(0.046875)]])


def test_laa_score_errors():
    scores = {"en": torch.ones(1, 2), "fr": torch.ones(1, 2)}
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        laa_score(scores, None, gamma=-0.1)
    with pytest.raises(ValueError, match=r"only in weights \['de'\]"):
        laa_score(scores, {"en": 1.0, "fr": 1.0, "de": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        laa_score(scores, {"en": 0.0, "fr": 0.0})
    with pytest.raises(ValueError, match="scores is empty"):
        laa_score({})
    with pytest.raises(ValueError, match="share one"):
        laa_score({"en": torch.ones(1, 2), "fr": torch.ones(2, 2)})


def test_language_score_errors():
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        language_score(torch.ones(2, 1, 2), torch.tensor([0.5, 0.5]), beta=-1.0)
    with pytest.raises(ValueError, match=r"w must have shape \[2\]"):
        language_score(torch.ones(2, 1, 2), torch.tensor([1.0]), beta=1.0)


# --------------------------------------------------------------------------- select_neurons


def test_select_neurons_inclusive_threshold_and_order():
    score = torch.tensor([[1.0, 0.25, 0.2499, 0.5], [-1.0, 0.3, 0.0, 0.25]])
    got = select_neurons(score, threshold=0.25)
    # 0.25 exactly is kept (inclusive); ties keep (layer, index) order
    assert got == [(0, 0), (0, 3), (1, 1), (0, 1), (1, 3)]
    assert select_neurons(score, threshold=0.25, top_k=2) == [(0, 0), (0, 3)]
    assert select_neurons(score, threshold=1.0) == [(0, 0)]


def test_select_neurons_default_threshold_boundary():
    score = torch.tensor([[5.0, 1.0, 0.999]])  # 0.2 * 5 = 1.0
    assert select_neurons(score) == [(0, 0), (0, 1)]


def test_select_neurons_empty_when_nothing_positive():
    assert select_neurons(torch.tensor([[-1.0, -0.5], [0.0, -2.0]])) == []
    assert select_neurons(torch.zeros(2, 3), top_k=5) == []


def test_select_neurons_errors():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            select_neurons(torch.ones(1, 2), threshold=bad)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        select_neurons(torch.ones(1, 2), top_k=0)
    with pytest.raises(ValueError, match=r"score must have shape \[layer, d_mlp\]"):
        select_neurons(torch.ones(3))


# --------------------------------------------------------------------------- matrice


def test_matrice_hand_computed_confidence_weighting():
    attributions, confidence, entropy = two_language_fact()
    fs = matrice(attributions, confidence, entropy, query_weighting="confidence", beta=1.0, gamma=1.0)
    assert isinstance(fs, FactScores) and fs.method == "matrice"
    # (1, 2): en values [1, 0, 0], w = [.5, .25, .25] -> mu .5, sigma .5 -> s_en 0; s_fr = 1
    assert close(fs.per_language["en"][1, 2], 0.0)
    assert close(fs.per_language["fr"][1, 2], 1.0)
    # LAA(1, 2): mu .5, sigma .5 -> 0
    assert close(fs.laa[1, 2], 0.0)
    assert close(fs.laa[0, 0], 1.0)
    assert close(fs.laa[0, 1], 0.5)
    assert fs.lakn == [(0, 0), (0, 1)]
    assert fs.language_specific == {"en": [], "fr": [(1, 2)]}
    assert fs.params["beta"] == 1.0 and fs.params["query_weighting"] == "confidence"


def test_matrice_hand_computed_language_confidence_weighting():
    attributions, confidence, entropy = two_language_fact()
    fs = matrice(attributions, confidence, entropy, query_weighting="confidence",
                 language_weighting="confidence", beta=0.0, gamma=1.0)
    # beta = 0: s_en(1,2) = .5, s_fr(1,2) = 1; v ~ mean confidence = [1/3, 0.9]
    v_en, v_fr = (1 / 3) / (1 / 3 + 0.9), 0.9 / (1 / 3 + 0.9)
    mu = v_en * 0.5 + v_fr * 1.0
    sigma = math.sqrt(v_en * (0.5 - mu) ** 2 + v_fr * (1.0 - mu) ** 2)
    assert close(fs.laa[1, 2], mu - sigma)
    # a mapping gives v_l explicitly and matches
    fs2 = matrice(attributions, confidence, entropy, query_weighting="confidence",
                  language_weighting={"en": 1 / 3, "fr": 0.9}, beta=0.0, gamma=1.0)
    assert close(fs2.laa, fs.laa)


def test_matrice_entropy_weighting_hand_computed():
    attributions, confidence, entropy = two_language_fact()
    fs = matrice(attributions, confidence, entropy, query_weighting="entropy", beta=0.0, gamma=0.0)
    # en 1 - H = [.8, .6, .4] -> w = [.4, .3, .2]/.9...; (1,2) en = w_0 = .8/1.8
    w0 = 0.8 / 1.8
    assert close(fs.per_language["en"][1, 2], w0)
    assert close(fs.laa[1, 2], (w0 + 1.0) / 2)


def test_matrice_zero_beta_gamma_uniform_is_plain_mean():
    attributions, confidence, entropy = random_fact()
    fs = matrice(attributions, confidence, entropy, query_weighting="uniform", beta=0.0, gamma=0.0)
    plain = torch.cat([normalize_by_max(a) for a in attributions.values()]).mean(0)
    assert close(fs.laa, plain)
    assert close(fs.laa, mean_method(attributions).laa)
    assert fs.lakn == mean_method(attributions).lakn


def test_beta_penalises_neuron_used_by_some_paraphrases():
    # 4 paraphrases; neuron 1 used by all at 0.5, neuron 2 by half at 1.0 (same mean 0.5)
    attr = torch.zeros(4, 1, 3)
    attr[:, 0, 0] = 1.0
    attr[:, 0, 1] = 0.5
    attr[:, 0, 2] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    w = torch.full((4,), 0.25)
    s0, _, _ = language_score(attr, w, beta=0.0)
    assert close(s0[0, 1], s0[0, 2])
    s1, _, sigma = language_score(attr, w, beta=1.0)
    assert close(sigma[0, 2], 0.5) and close(sigma[0, 1], 0.0)
    assert close(s1[0, 1], 0.5) and close(s1[0, 2], 0.0)
    s2, _, _ = language_score(attr, w, beta=2.0)
    assert s2[0, 2] < s1[0, 2] < s1[0, 1]


def test_laa_prefers_all_language_neuron_over_stronger_single_language_neuron():
    # neuron A = 0.6 everywhere; neuron B = 1.0 but only in en; neuron C = 1.0 only in fr
    en = torch.zeros(2, 1, 3)
    fr = torch.zeros(2, 1, 3)
    en[:, 0, 0] = 0.6
    fr[:, 0, 0] = 0.6
    en[:, 0, 1] = 1.0
    fr[:, 0, 2] = 1.0
    conf = {"en": torch.ones(2), "fr": torch.ones(2)}
    ent = {"en": torch.zeros(2), "fr": torch.zeros(2)}
    fs = matrice({"en": en, "fr": fr}, conf, ent, beta=1.0, gamma=1.0)
    assert en[0, 0, 1] > en[0, 0, 0]  # raw attribution of B is larger
    assert close(fs.laa[0], [0.6, 0.0, 0.0])
    assert fs.laa[0, 0] > fs.laa[0, 1]
    assert fs.lakn == [(0, 0)]
    assert fs.language_specific == {"en": [(0, 1)], "fr": [(0, 2)]}


def test_matrice_top_k_and_threshold():
    attributions, confidence, entropy = random_fact()
    full = matrice(attributions, confidence, entropy)
    capped = matrice(attributions, confidence, entropy, top_k=2)
    assert len(full.lakn) > 2
    assert capped.lakn == full.lakn[:2]
    strict = matrice(attributions, confidence, entropy, threshold=0.9)
    assert set(strict.lakn) <= set(full.lakn) and len(strict.lakn) < len(full.lakn)
    vals = [full.laa[n].item() for n in full.lakn]
    assert vals == sorted(vals, reverse=True)
    peak = full.laa.max().item()
    assert all(v >= 0.2 * peak - 1e-7 for v in vals)


def test_matrice_errors():
    attributions, confidence, entropy = two_language_fact()
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        matrice(attributions, confidence, entropy, beta=-1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        matrice(attributions, confidence, entropy, gamma=-0.5)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        matrice(attributions, confidence, entropy, threshold=0.0)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        matrice(attributions, confidence, entropy, threshold=1.01)
    with pytest.raises(ValueError, match="unknown language weighting 'entropy'"):
        matrice(attributions, confidence, entropy, language_weighting="entropy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown query weighting 'x'"):
        matrice(attributions, confidence, entropy, query_weighting="x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- input validation


def test_validation_empty():
    with pytest.raises(ValueError, match="attributions is empty"):
        validate_fact_inputs({})
    with pytest.raises(ValueError, match="attributions is empty"):
        matrice({}, {}, {})
    for fn in (mean_method, kn_method, amig_method):
        with pytest.raises(ValueError, match="attributions is empty"):
            fn({})


def test_validation_languages_differ():
    attributions, confidence, entropy = two_language_fact()
    conf = {"en": confidence["en"], "de": confidence["fr"]}
    with pytest.raises(ValueError, match=r"languages differ between attributions and confidence: "
                       r"only in attributions \['fr'\], only in confidence \['de'\]"):
        matrice(attributions, conf, entropy)
    with pytest.raises(ValueError, match="languages differ between attributions and entropy"):
        matrice(attributions, confidence, {"en": entropy["en"]})


def test_validation_zero_queries():
    with pytest.raises(ValueError, match=r"language 'fr' has zero queries"):
        validate_fact_inputs({"en": torch.ones(2, 1, 3), "fr": torch.ones(0, 1, 3)})


def test_validation_mismatched_query_counts():
    attributions, confidence, entropy = two_language_fact()
    conf = dict(confidence, fr=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="language 'fr': confidence has 2 queries but attributions has 3"):
        matrice(attributions, conf, entropy)
    ent = dict(entropy, en=torch.zeros(4))
    with pytest.raises(ValueError, match="language 'en': entropy has 4 queries but attributions has 3"):
        matrice(attributions, confidence, ent)
    with pytest.raises(ValueError, match=r"language 'en': confidence must have shape \[query\], got \(3, 1\)"):
        matrice(attributions, dict(confidence, en=torch.ones(3, 1)), entropy)


def test_validation_shapes():
    with pytest.raises(ValueError, match=r"language 'en': attributions must have shape \[query, layer, d_mlp\], "
                       r"got \(2, 4\)"):
        validate_fact_inputs({"en": torch.ones(2, 4)})
    with pytest.raises(ValueError, match=r"language 'fr': attributions shape \(3, 2, 5\) does not match "
                       r"\[query, 2, 4\] of language 'en'"):
        validate_fact_inputs({"en": torch.ones(3, 2, 4), "fr": torch.ones(3, 2, 5)})
    # query counts may differ between languages
    assert validate_fact_inputs({"en": torch.ones(3, 2, 4), "fr": torch.ones(1, 2, 4)}) == (2, 4)


def test_validation_confidence_values():
    attributions, confidence, entropy = two_language_fact()
    with pytest.raises(ValueError, match="confidence must be >= 0"):
        matrice(attributions, dict(confidence, en=torch.tensor([0.5, -0.1, 0.2])), entropy)
    with pytest.raises(ValueError, match="entropy has non-finite values"):
        matrice(attributions, confidence, dict(entropy, fr=torch.tensor([0.1, float("nan"), 0.1])))


# --------------------------------------------------------------------------- mean / kn / amig


def test_mean_method_averages_over_all_queries_and_ignores_matrice_knobs():
    en = torch.tensor([[[2.0, 1.0]], [[1.0, 1.0]]])  # normalised: [1, .5], [1, 1]
    fr = torch.tensor([[[0.0, 4.0]]])  # normalised: [0, 1]
    fs = mean_method({"en": en, "fr": fr}, beta=3.0, query_weighting="entropy")
    assert close(fs.laa, [[2 / 3, 2.5 / 3]])
    assert close(fs.per_language["en"], [[1.0, 0.75]])
    assert fs.lakn == [(0, 1), (0, 0)]
    assert fs.method == "mean"
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['treshold'\]"):
        mean_method({"en": en}, treshold=0.3)


def kn_fact():
    """1 layer x 5 neurons. en (3 queries) selects at t=0.2: {0,1}, {0,1,2}, {0,2,3};
    fr (2 queries): {0,1,3}, {0,3,4}."""
    en = torch.tensor(
        [
            [[1.0, 0.5, 0.1, 0.0, -1.0]],
            [[1.0, 0.3, 0.2, 0.1, 0.0]],  # 0.2 is exactly t * max: kept
            [[2.0, 0.2, 0.5, 0.4, 0.0]],  # 0.2 < 0.4: dropped
        ]
    )
    fr = torch.tensor(
        [
            [[1.0, 0.9, 0.0, 0.5, 0.1]],
            [[1.0, 0.0, 0.1, 0.6, 0.3]],
        ]
    )
    return {"en": en, "fr": fr}


def test_kn_method_intersection():
    attr = kn_fact()
    # share 0.6: en needs >= 1.8 -> 2 queries: {0,1,2}; fr needs >= 1.2 -> 2: {0,3}
    fs = kn_method(attr, threshold=0.2, share=0.6)
    assert fs.lakn == [(0, 0)]
    assert fs.language_specific == {"en": [(0, 1), (0, 2)], "fr": [(0, 3)]}
    # share 1/3 (boundary 1 of 3 inclusive): en {0,1,2,3}; fr (>= 0.67 -> 1) {0,1,3,4}
    fs = kn_method(attr, threshold=0.2, share=1 / 3)
    assert set(fs.lakn) == {(0, 0), (0, 1), (0, 3)}
    # ordered by the mean normalised score
    vals = [fs.laa[n].item() for n in fs.lakn]
    assert vals == sorted(vals, reverse=True)
    assert fs.lakn[0] == (0, 0)
    # share 2/3: exactly 2 of 3 en queries passes (float tolerance)
    assert set(kn_method(attr, share=2 / 3).language_specific["en"]) | set(kn_method(attr, share=2 / 3).lakn) \
        == {(0, 0), (0, 1), (0, 2)}
    assert kn_method(attr, share=1 / 3, top_k=1).lakn == [(0, 0)]
    assert close(fs.per_language["fr"], [[1.0, 0.45, 0.05, 0.55, 0.2]])


def test_kn_method_errors():
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        kn_method(kn_fact(), share=0.0)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        kn_method(kn_fact(), threshold=2.0)


def test_amig_method_one_query_per_language():
    attr = kn_fact()
    # query 0 at t=0.3: en {0,1}, fr {0,1,3} -> LAKN {0,1}
    fs = amig_method(attr, threshold=0.3)
    assert fs.lakn == [(0, 0), (0, 1)]
    assert fs.language_specific == {"en": [], "fr": [(0, 3)]}
    assert close(fs.per_language["en"], [[1.0, 0.5, 0.1, 0.0, -1.0]])
    # index 2 clamps to fr's last query (1): en q2 {0 (2.0), 2 (.5)... t*max=.6} -> {0}; fr q1 {0,3}
    fs = amig_method(attr, threshold=0.3, query_index=2)
    assert fs.params["query_used"] == {"en": 2, "fr": 1}
    assert fs.lakn == [(0, 0)]
    assert fs.language_specific == {"en": [], "fr": [(0, 3), (0, 4)]}
    assert close(fs.laa, (normalize_by_max(attr["en"][2:3])[0] + normalize_by_max(attr["fr"][1:2])[0]) / 2)
    with pytest.raises(ValueError, match="query_index must be an int >= 0"):
        amig_method(attr, query_index=-1)


# --------------------------------------------------------------------------- random


def test_random_neurons_matched_per_layer_reproducible_no_duplicates():
    reference = [(0, 1), (0, 2), (2, 3), (0, 7), (3, 0)]
    a = random_neurons(reference, d_mlp=10, generator=torch.Generator().manual_seed(123))
    b = random_neurons(reference, d_mlp=10, generator=torch.Generator().manual_seed(123))
    assert a == b
    assert len(a) == len(reference) == len(set(a))
    per_layer = {layer: sum(1 for l, _ in a if l == layer) for layer in (0, 1, 2, 3)}
    assert per_layer == {0: 3, 1: 0, 2: 1, 3: 1}
    assert all(0 <= i < 10 for _, i in a)
    draws = {tuple(random_neurons(reference, 10, torch.Generator().manual_seed(s))) for s in range(10)}
    assert len(draws) > 1
    # a full layer is drawn entirely, without replacement
    full = random_neurons([(1, i) for i in range(4)], d_mlp=4, generator=torch.Generator().manual_seed(0))
    assert full == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_random_neurons_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="duplicates"):
        random_neurons([(0, 1), (0, 1)], 4, g)
    with pytest.raises(ValueError, match=r"out of range for d_mlp=4"):
        random_neurons([(0, 4)], 4, g)
    assert random_neurons([], 4, g) == []


# --------------------------------------------------------------------------- score_fact


def test_score_fact_dispatch():
    attributions, confidence, entropy = random_fact()
    assert set(METHODS) == {"matrice", "mean", "kn", "amig"}
    assert SHARED_KWARGS == {"threshold", "top_k"}
    direct = matrice(attributions, confidence, entropy, beta=0.5, top_k=3)
    via = score_fact("matrice", attributions, confidence, entropy, beta=0.5, top_k=3)
    assert via.lakn == direct.lakn and close(via.laa, direct.laa)
    assert score_fact("kn", attributions, confidence, entropy, share=0.5).lakn == kn_method(attributions, share=0.5).lakn
    assert score_fact("amig", attributions, threshold=0.4).lakn == amig_method(attributions, threshold=0.4).lakn
    assert score_fact("mean", attributions, top_k=2).lakn == mean_method(attributions, top_k=2).lakn


def test_score_fact_random_replaces_lakn_matched_per_layer():
    attributions, confidence, entropy = random_fact(layers=4, d_mlp=8)
    base = matrice(attributions, confidence, entropy)
    r1 = score_fact("random", attributions, confidence, entropy, generator=torch.Generator().manual_seed(7))
    r2 = score_fact("random", attributions, confidence, entropy, generator=torch.Generator().manual_seed(7))
    assert r1.method == "random" and r1.lakn == r2.lakn
    assert close(r1.laa, base.laa)
    layer_counts = lambda ns: sorted(l for l, _ in ns)  # noqa: E731
    assert layer_counts(r1.lakn) == layer_counts(base.lakn)
    assert r1.params["generator_seed"] == 7
    with pytest.raises(TypeError, match="needs generator"):
        score_fact("random", attributions, confidence, entropy)


def test_score_fact_errors():
    attributions, confidence, entropy = random_fact()
    with pytest.raises(ValueError, match=r"unknown scoring method 'ig'; known: \['amig', 'kn', 'matrice', 'mean', 'random'\]"):
        score_fact("ig", attributions, confidence, entropy)
    with pytest.raises(TypeError, match=r"method 'kn' got unexpected keyword arguments \['beta'\]"):
        score_fact("kn", attributions, confidence, entropy, beta=1.0)
    with pytest.raises(TypeError, match=r"method 'matrice' got unexpected keyword arguments \['generator', 'share'\]"):
        score_fact("matrice", attributions, confidence, entropy, share=0.5, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"\['beta'\]"):
        score_fact("mean", attributions, beta=0.0)
    with pytest.raises(ValueError, match="needs confidence and entropy"):
        score_fact("matrice", attributions)
    with pytest.raises(ValueError, match="languages differ between attributions and confidence"):
        score_fact("kn", attributions, {"en": confidence["en"]}, entropy)


# --------------------------------------------------------------------------- fact specificity


def spec_facts():
    laa = {
        "a": torch.tensor([[1.0, 0.5, -1.0]]),
        "b": torch.tensor([[0.0, 0.5, 2.0]]),
        "c": torch.tensor([[0.5, -0.5, 1.0]]),
        "d": torch.tensor([[1.0, 1.0, 0.0]]),
        "e": torch.tensor([[2.0, 0.0, 0.0]]),
    }
    relation = {"a": "capital", "b": "capital", "c": "language", "d": "language", "e": "currency"}
    return laa, relation


def test_specific_scores_others():
    laa, relation = spec_facts()
    out = specific_scores(laa, relation, "others")
    # a: refs b, c, d, e; positive parts: [0,.5,2], [.5,0,1], [1,1,0], [2,0,0] -> mean [.875, .375, .75]
    assert close(out["a"], [[1.0 - 0.875, 0.5 - 0.375, -1.0 - 0.75]])
    # e: refs a..d positive: [1,.5,0],[0,.5,2],[.5,0,1],[1,1,0] -> mean [.625,.5,.75]
    assert close(out["e"], [[2.0 - 0.625, -0.5, -0.75]])


def test_specific_scores_relation_modes():
    laa, relation = spec_facts()
    other = specific_scores(laa, relation, "other_relations")
    # a (capital): refs c, d, e -> mean [(.5+1+2)/3, 1/3, 1/3]
    assert close(other["a"], [[1.0 - 3.5 / 3, 0.5 - 1 / 3, -1.0 - 1 / 3]])
    same = specific_scores(laa, relation, "same_relation")
    # a: ref b -> [1-0, .5-.5, -1-2]; c: ref d -> [.5-1, -.5-1, 1-0]
    assert close(same["a"], [[1.0, 0.0, -3.0]])
    assert close(same["c"], [[-0.5, -1.5, 1.0]])
    # e is alone in its relation: empty reference keeps the raw LAA
    assert close(same["e"], laa["e"])
    assert reference_sets(list(laa), relation, "same_relation")["e"] == []


def test_specific_scores_explicit_reference():
    laa, relation = spec_facts()
    refs = {"a": ["d", "e"], "b": [], "c": ["a"], "d": ["a", "b", "c"], "e": ["a"]}
    out = specific_scores(laa, {}, refs)
    assert close(out["a"], [[1.0 - 1.5, 0.5 - 0.5, -1.0]])
    assert close(out["b"], laa["b"])
    assert close(out["c"], [[-0.5, -1.0, 1.0]])  # a's negative -1 is clamped to 0


def test_specific_scores_errors():
    laa, relation = spec_facts()
    with pytest.raises(ValueError, match="unknown reference 'all'"):
        specific_scores(laa, relation, "all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs a relation for every fact; missing \['e'\]"):
        specific_scores(laa, {k: v for k, v in relation.items() if k != "e"}, "same_relation")
    with pytest.raises(ValueError, match=r"fact 'a': unknown reference facts \['z'\]"):
        specific_scores(laa, relation, {f: [] for f in laa} | {"a": ["z"]})
    with pytest.raises(ValueError, match=r"no entry for facts \['e'\]"):
        specific_scores(laa, relation, {f: [] for f in "abcd"})
    with pytest.raises(ValueError, match="lists itself"):
        specific_scores(laa, relation, {f: [] for f in laa} | {"b": ["b"]})
    with pytest.raises(ValueError, match="share one"):
        specific_scores({"a": torch.ones(1, 2), "b": torch.ones(1, 3)}, {})
    assert specific_scores({}, {}) == {}


def test_common_neuron_filter():
    neurons = {
        "a": [(0, 1), (0, 2), (1, 0)],
        "b": [(0, 1), (1, 0)],
        "c": [(0, 1), (2, 2)],
        "d": [(1, 0), (0, 1)],
    }
    # (0,1) in 4/4, (1,0) in 3/4 -> dropped at 0.5; (0,2), (2,2) in 1/4 kept
    assert common_neuron_filter(neurons, 0.5) == {"a": [(0, 2)], "b": [], "c": [(2, 2)], "d": []}
    # 0.75 boundary: 3/4 is not more than 0.75 -> (1,0) kept
    assert common_neuron_filter(neurons, 0.75) == {"a": [(0, 2), (1, 0)], "b": [(1, 0)], "c": [(2, 2)], "d": [(1, 0)]}
    assert common_neuron_filter(neurons, 1.0) == neurons
    with pytest.raises(ValueError, match=r"max_fraction must be in \[0, 1\]"):
        common_neuron_filter(neurons, 1.5)


def test_use_specific_rule():
    assert use_specific(4) is False
    assert use_specific(5) is True
    assert use_specific(3, min_reference=3) is True
    assert use_specific(0, min_reference=1) is False
    with pytest.raises(ValueError, match="must be >= 0"):
        use_specific(-1)
