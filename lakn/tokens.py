"""Turn cloze queries into token ids, and read the model's probability of the answer.

A query's answer is scored as the continuation of its prompt (teacher forcing for multi-token
answers): P(y | q) = prod_t P(y_t | q, y_<t). lakn reports the geometric mean over answer tokens
so answers of different lengths compare.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .facts import FactsError, Query

__all__ = ["EncodedQuery", "encode_query", "answer_probabilities", "AnswerStats", "last_logits"]


@dataclass(frozen=True)
class EncodedQuery:
    """Token ids of a query's prompt (with BOS where the model uses one) and of its answer."""

    prompt: Int[Tensor, "prompt_pos"]
    answer: Int[Tensor, "answer_pos"]

    def prefix(self, t: int) -> Int[Tensor, "pos"]:
        """Prompt plus the first ``t`` answer tokens: the input that predicts answer token ``t``."""
        return torch.cat([self.prompt, self.answer[:t]])


def encode_query(model, query: Query) -> EncodedQuery:
    """Tokenise prompt and answer so that prompt + answer is how the model reads the full sentence.

    The answer's tokens are the tail of tokenise(prompt + separator + answer) after the prompt's
    tokens when the prompt's tokens are a prefix of it (the usual case); otherwise the answer is
    tokenised on its own, with the separator.
    """
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


@dataclass(frozen=True)
class AnswerStats:
    """The model's view of one query's answer, from one forward pass."""

    token_probs: Float[Tensor, "answer_pos"]
    probability: float  # geometric mean of token_probs
    entropy: float  # next-token entropy at the first answer position, / log |V|
    rank: int  # rank of the first answer token among all tokens (0 = top)


def answer_probabilities(model, encoded: EncodedQuery) -> AnswerStats:
    """P(y_t | prompt, y_<t) for every answer token, in a single teacher-forced forward pass."""
    tokens = torch.cat([encoded.prompt, encoded.answer[:-1]])[None].to(_device(model))
    n_prompt = len(encoded.prompt)
    with torch.no_grad():
        logits = model(tokens)[0, n_prompt - 1 :].float()
    log_probs = logits.log_softmax(-1)
    answer = encoded.answer.to(log_probs.device)
    token_lp = log_probs.gather(-1, answer[:, None])[:, 0]
    first = log_probs[0]
    entropy = float(-(first.exp() * first).sum() / torch.log(torch.tensor(float(first.shape[-1]))))
    rank = int((first > first[answer[0]]).sum())
    return AnswerStats(token_lp.exp().cpu(), float(token_lp.mean().exp()), entropy, rank)


def last_logits(model, tokens: Int[Tensor, "batch pos"], **kwargs) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only.

    Hugging Face causal LMs accept ``logits_to_keep=1`` and then skip the unembedding of every
    other position (a large saving with Gemma 3's 262k vocabulary); models that do not accept it
    fall back to the full forward.
    """
    if getattr(model, "_lakn_logits_to_keep", True):
        try:
            return model(tokens, logits_to_keep=1, **kwargs)[:, -1]
        except TypeError:
            model._lakn_logits_to_keep = False
    return model(tokens, **kwargs)[:, -1]


def _visible(text: str) -> bool:
    """True if ``text`` has a character that is neither whitespace nor an invisible format/control mark."""
    return any(unicodedata.category(ch)[0] not in "ZC" for ch in text)


def _device(model) -> torch.device:
    return next(model.parameters()).device
