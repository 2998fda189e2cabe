"""Turn cloze queries into token ids, and run the model for the logits of a few positions.

A query's answer is the continuation of its prompt: :class:`EncodedQuery` holds the prompt's and
the answer's token ids and says which input predicts answer token t (teacher forcing). Masked LMs
(BERT style) read the whole sentence with one mask token per answer token; answer token t is
predicted at mask t with the masks before it filled in. :func:`logits_at` unembeds only the
positions asked for. The probability of the answer is read in :mod:`lakn.probability`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .facts import FactsError, Query

from ._deprecation import deprecated_names

__all__ = ["EncodedQuery", "encode_query", "encode_masked_query", "logits_at", "last_logits", "model_device"]

__getattr__ = deprecated_names(__name__, {
    "answer_probabilities": "lakn.probability:answer_stats",
    "AnswerStats": "lakn.probability:AnswerStats",
    "stats_from_logits": "lakn.probability:stats_from_logits",
})


@dataclass(frozen=True)
class EncodedQuery:
    """Token ids of a query's prompt (with BOS where the model uses one) and of its answer.

    For a masked LM ``prompt`` is the whole sentence with one mask per answer token and
    ``mask_positions`` says where they are; for a causal LM ``mask_positions`` is None.
    """

    prompt: Int[Tensor, "prompt_pos"]
    answer: Int[Tensor, "answer_pos"]
    mask_positions: Int[Tensor, "answer_pos"] | None = None

    @property
    def masked(self) -> bool:
        return self.mask_positions is not None

    def prefix(self, t: int) -> Int[Tensor, "pos"]:
        """Prompt plus the first ``t`` answer tokens: the input that predicts answer token ``t``."""
        if self.masked:
            return self.step(t)[0]
        return torch.cat([self.prompt, self.answer[:t]])

    def step(self, t: int) -> tuple[Int[Tensor, "pos"], int]:
        """The input that predicts answer token ``t`` and the position that predicts it."""
        if not self.masked:
            tokens = self.prefix(t)
            return tokens, len(tokens) - 1
        positions = self.mask_positions
        assert positions is not None  # masked
        tokens = self.prompt.clone()
        tokens[positions[:t]] = self.answer[:t]
        return tokens, int(positions[t])


def encode_query(model, query: Query) -> EncodedQuery:
    """Tokenise prompt and answer so that prompt + answer is how the model reads the full sentence.

    The answer's tokens are the tail of tokenise(prompt + separator + answer) after the prompt's
    tokens when the prompt's tokens are a prefix of it (the usual case); otherwise the answer is
    tokenised on its own, with the separator. Masked LMs: see :func:`encode_masked_query`.
    """
    from .models import is_masked_lm

    if is_masked_lm(model):
        return encode_masked_query(model, query)
    if not query.prompt.strip():
        raise FactsError(f"query {query.template!r} ({query.language}) has no text before the answer slot")
    prompt = model.to_tokens(query.prompt)[0].cpu()
    full = model.to_tokens(query.prompt + query.continuation)[0].cpu()
    if len(full) > len(prompt) and torch.equal(full[: len(prompt)], prompt):
        answer = full[len(prompt) :]
    else:
        ids = model.tokenizer(query.continuation, add_special_tokens=False)["input_ids"]
        answer = torch.tensor(ids, dtype=torch.long)
    if answer.numel() == 0 or not _visible(model.tokenizer.decode(answer)):
        raise FactsError(
            f"answer {query.answer!r} ({query.language}) tokenises to nothing with this model's tokenizer"
        )
    return EncodedQuery(prompt, answer)


def encode_masked_query(model, query: Query) -> EncodedQuery:
    """A masked LM's input: the template with ``[Y]`` replaced by one mask token per answer token."""
    tokenizer = model.tokenizer
    if tokenizer.mask_token is None:
        raise FactsError(f"the model's tokenizer has no mask token, so query {query.template!r} cannot be masked")
    answer = torch.tensor(tokenizer(query.continuation, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if answer.numel() == 0 or not _visible(tokenizer.decode(answer)):
        raise FactsError(
            f"answer {query.answer!r} ({query.language}) tokenises to nothing with this model's tokenizer"
        )
    before, after = query.template.split("[Y]")
    text = before.rstrip() + query.separator + tokenizer.mask_token * len(answer) + after
    prompt = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    positions = (prompt == tokenizer.mask_token_id).nonzero()[:, 0]
    if len(positions) != len(answer):
        raise FactsError(f"query {query.template!r}: expected {len(answer)} mask tokens, found {len(positions)}")
    return EncodedQuery(prompt, answer, positions)


def logits_at(
    model, tokens: Int[Tensor, "batch pos"], keep: int | Int[Tensor, "n"], **kwargs
) -> Float[Tensor, "batch n d_vocab"]:
    """Logits at some positions only: the last ``keep`` positions (an int) or the given ones.

    Hugging Face causal LMs accept ``logits_to_keep`` and then skip the unembedding of every
    other position (a large saving with Gemma 3's 262k vocabulary); models that do not accept it
    fall back to the full forward, sliced.
    """
    if getattr(model, "_lakn_logits_to_keep", True):
        try:
            return model(tokens, logits_to_keep=keep, **kwargs)
        except TypeError as err:
            if "logits_to_keep" not in str(err):  # a TypeError of the model's own: not ours to hide
                raise
            model._lakn_logits_to_keep = False  # this model does not take the keyword: ask once
    logits = model(tokens, **kwargs)
    return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


def last_logits(model, tokens: Int[Tensor, "batch pos"], **kwargs) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only (see :func:`logits_at`)."""
    logits = logits_at(model, tokens, 1, **kwargs)
    # squeeze, not [:, -1]: its backward is a view, not a zero-filled [batch, 1, d_vocab] copy
    return logits.squeeze(1) if logits.shape[1] == 1 else logits[:, -1]


def _visible(text: str) -> bool:
    """True if ``text`` has a character that is neither whitespace nor an invisible format/control mark."""
    return any(unicodedata.category(ch)[0] not in "ZC" for ch in text)


def model_device(model) -> torch.device:
    """The device of the model's parameters (where its inputs go)."""
    return next(model.parameters()).device
