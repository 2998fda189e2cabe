"""logits_at: the logits_to_keep fast path, and the fallback only for models that lack the keyword."""

from __future__ import annotations

import pytest
import torch

from lakn.tokens import logits_at


class _Model:
    """Stands in for a model: logits = token id repeated over a 3-token vocabulary."""

    def __init__(self, accepts_keep: bool = True, fail: str | None = None):
        self.accepts_keep, self.fail, self.calls = accepts_keep, fail, []

    def __call__(self, tokens, **kwargs):
        self.calls.append(sorted(kwargs))
        if self.fail is not None:
            raise TypeError(self.fail)
        if "logits_to_keep" in kwargs and not self.accepts_keep:
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        logits = tokens[..., None].float().expand(*tokens.shape, 3)
        keep = kwargs.get("logits_to_keep")
        return logits if keep is None else (logits[:, -keep:] if isinstance(keep, int) else logits[:, keep])


def test_logits_to_keep_is_used_and_the_fallback_is_remembered_per_model():
    tokens = torch.tensor([[1, 2, 3, 4]])
    fast = _Model()
    assert logits_at(fast, tokens, 2)[0, :, 0].tolist() == [3.0, 4.0]
    assert fast.calls == [["logits_to_keep"]]
    old = _Model(accepts_keep=False)
    for _ in range(2):
        assert logits_at(old, tokens, torch.tensor([0, 2]))[0, :, 0].tolist() == [1.0, 3.0]
    # the keyword is tried once; afterwards the model is called without it
    assert old.calls == [["logits_to_keep"], [], []]
    assert logits_at(_Model(), tokens, 1)[0, :, 0].tolist() == [4.0]  # another model is asked afresh


def test_other_type_errors_are_not_swallowed():
    broken = _Model(fail="unsupported operand type(s) for +: 'Tensor' and 'str'")
    with pytest.raises(TypeError, match="unsupported operand"):
        logits_at(broken, torch.tensor([[1, 2]]), 1)
    assert getattr(broken, "_lakn_logits_to_keep", True) is True  # not marked as lacking the keyword
