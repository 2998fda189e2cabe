"""Turn cloze queries into token ids, and read the model's probability of the answer.

A query's answer is scored as the continuation of its prompt (teacher forcing for multi-token
answers): P(y | q) = prod_t P(y_t | q, y_<t). lakn reports the geometric mean over answer tokens
so answers of different lengths compare.

Masked LMs (BERT style) read the whole sentence with one mask token per answer token; answer
token t is predicted at mask t with the masks before it filled in (the same teacher forcing).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .facts import FactsError, Query

__all__ = ["EncodedQuery", "encode_query", "encode_masked_query", "answer_probabilities", "AnswerStats",
           "logits_at", "last_logits"]


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
        tokens = self.prompt.clone()
        tokens[self.mask_positions[:t]] = self.answer[:t]
        return tokens, int(self.mask_positions[t])


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


@dataclass(frozen=True)
class AnswerStats:
    """The model's view of one query's answer, from one forward pass."""

    token_probs: Float[Tensor, "answer_pos"]
    probability: float  # geometric mean of token_probs
    entropy: float  # next-token entropy at the first answer position, / log |V|
    rank: int  # rank of the first answer token among all tokens (0 = top)

    @classmethod
    def from_log_probs(cls, token_log_probs: Float[Tensor, "answer_pos"], entropy_nats, rank: int,
                       d_vocab: int) -> "AnswerStats":
        """From log P of each answer token and the first answer position's entropy (nats) and rank."""
        token_lp = torch.as_tensor(token_log_probs, dtype=torch.float32).detach().cpu()
        entropy = float(torch.as_tensor(entropy_nats, dtype=torch.float32) / torch.log(torch.tensor(float(d_vocab))))
        return cls(token_lp.exp(), float(token_lp.mean().exp()), entropy, int(rank))


def answer_probabilities(model, encoded: EncodedQuery) -> AnswerStats:
    """P(y_t | prompt, y_<t) for every answer token, in a single teacher-forced forward pass
    (one pass per answer token for a masked LM)."""
    device = _device(model)
    with torch.no_grad():
        if encoded.masked:
            steps = [encoded.step(t) for t in range(len(encoded.answer))]
            logits = torch.stack([model(tokens[None].to(device))[0, pos] for tokens, pos in steps]).float()
        else:
            tokens = torch.cat([encoded.prompt, encoded.answer[:-1]])[None].to(device)
            logits = logits_at(model, tokens, len(encoded.answer))[0].float()
    return stats_from_logits(logits, encoded.answer)


def stats_from_logits(logits: Float[Tensor, "answer_pos d_vocab"], answer: Int[Tensor, "answer_pos"]) -> AnswerStats:
    """:class:`AnswerStats` from the logits at the positions that predict each answer token."""
    log_probs = logits.detach().float().log_softmax(-1)
    answer = answer.to(log_probs.device)
    token_lp = log_probs.gather(-1, answer[:, None])[:, 0]
    first = log_probs[0]
    return AnswerStats.from_log_probs(token_lp, -(first.exp() * first).sum(), int((first > first[answer[0]]).sum()),
                                      first.shape[-1])


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
        except TypeError:
            model._lakn_logits_to_keep = False
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


def _device(model) -> torch.device:
    return next(model.parameters()).device
