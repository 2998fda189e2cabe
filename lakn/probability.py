"""The model's probability of the answer: one family of functions, from one query to many.

A query's answer is scored as the continuation of its prompt (teacher forcing for multi-token
answers): P(y | q) = prod_t P(y_t | q, y_<t). lakn reports the geometric mean over answer tokens
so answers of different lengths compare. Every function runs under whatever hooks are active, so
the same calls measure the model before and inside ``lakn.suppress(...)`` / ``lakn.edit_fact(...)``.

- :func:`answer_stats`: one encoded query -> :class:`AnswerStats` (token probabilities, P, entropy, rank);
- :func:`batch_answer_probability`: many encoded queries -> P and rank, in few right-padded passes;
- :func:`top1_tokens`: many encoded queries -> the top predicted first token;
- :func:`top1_margins`: the same, with each top token's lead over the runner-up (near-ties);
- :func:`answer_probability`: a :class:`~lakn.facts.Query` or a whole fact -> floats (user-facing);
- :func:`change_rate`: (P_after - P_before) / P_before, the quantity every experiment reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .facts import Fact, Query
from .models import is_masked_lm
from .tokens import EncodedQuery, encode_query, logits_at, model_device

__all__ = ["AnswerStats", "answer_stats", "stats_from_logits", "batch_answer_probability", "top1_tokens",
           "top1_margins", "answer_probability", "change_rate"]


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


def answer_stats(model, encoded: EncodedQuery) -> AnswerStats:
    """P(y_t | prompt, y_<t) for every answer token, in a single teacher-forced forward pass
    (one pass per answer token for a masked LM), with the first position's entropy and rank."""
    device = model_device(model)
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


def _span_logits(model, seqs: Sequence[Tensor], spans: Sequence[range],
                 batch_size: int) -> Iterator[tuple[int, Float[Tensor, "n d_vocab"]]]:
    """``(i, logits of sequence i at the positions spans[i])`` for every sequence, computed in
    right-padded batches of similar lengths. In a causal model padding after a sequence cannot
    change its logits, so no attention mask is needed; only the positions asked for are unembedded."""
    device = model_device(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        tokens = torch.full((len(chunk), max(len(seqs[i]) for i in chunk)), pad, dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens[row, : len(seqs[i])] = seqs[i]
        positions = sorted({p for i in chunk for p in spans[i]})
        with torch.no_grad():
            logits = logits_at(model, tokens.to(device), torch.tensor(positions, dtype=torch.long, device=device))
        column = {p: j for j, p in enumerate(positions)}
        for row, i in enumerate(chunk):
            yield i, logits[row, [column[p] for p in spans[i]]]


def batch_answer_probability(
    model, encoded: Sequence[EncodedQuery], *, batch_size: int = 16, first_token_only: bool = False
) -> tuple[Float[Tensor, "query"], Int[Tensor, "query"]]:
    """P(answer) (geometric mean over answer tokens, teacher forced) and the rank of the first
    answer token, for many causal-LM queries in few forward passes (:func:`answer_stats` per query,
    batched; a test checks they agree). ``first_token_only``: P of the answer's first token (as
    localised with ``first_token_only``); runs the prompts alone and unembeds far fewer positions.
    """
    if first_token_only:
        encoded = [e if len(e.answer) == 1 or e.masked else dataclasses.replace(e, answer=e.answer[:1]) for e in encoded]
    seqs = [torch.cat([e.prompt, e.answer[:-1]]) for e in encoded]
    spans = [range(len(e.prompt) - 1, len(e.prompt) - 1 + len(e.answer)) for e in encoded]
    probs = torch.zeros(len(encoded))
    ranks = torch.zeros(len(encoded), dtype=torch.long)
    for i, logits in _span_logits(model, seqs, spans, batch_size):
        log_probs = logits.float().log_softmax(-1)
        answer = encoded[i].answer.to(log_probs.device)
        probs[i] = float(log_probs.gather(-1, answer[:, None])[:, 0].mean().exp())
        ranks[i] = int((log_probs[0] > log_probs[0, answer[0]]).sum())
    return probs, ranks


def top1_tokens(model, encoded: Sequence[EncodedQuery], batch_size: int = 16) -> list[int]:
    """The top predicted token at each query's answer position (batched like :func:`batch_answer_probability`)."""
    return top1_margins(model, encoded, batch_size)[0]


def top1_margins(model, encoded: Sequence[EncodedQuery], batch_size: int = 16) -> tuple[list[int], list[float]]:
    """The top predicted token at each query's answer position and its lead over the runner-up
    (logit top-1 minus top-2, in nats; 0 for a tie). Top-1 retention is a hard count: a query
    that leads by 0.1 nat flips under a change that leaves confident answers alone, so the
    margin tells near-ties from answers an edit really moved (results.md run 14)."""
    tops, margins = [0] * len(encoded), [0.0] * len(encoded)
    spans = [range(len(e.prompt) - 1, len(e.prompt)) for e in encoded]
    for i, logits in _span_logits(model, [e.prompt for e in encoded], spans, batch_size):
        tops[i] = int(logits[0].argmax())
        best = logits[0].float().topk(min(2, logits.shape[-1])).values
        margins[i] = float(best[0] - best[-1])
    return tops, margins


def answer_probability(
    model, fact_or_query: Fact | Query, languages: Sequence[str] | None = None
) -> float | dict[str, list[float]]:
    """P(answer) of one query (a float), or of every usable query of a fact per language.

    Multi-token answers score the geometric mean of the teacher-forced token probabilities
    (:func:`answer_stats`). Runs under whatever hooks are active.

    Example: ``lakn.answer_probability(model, fact, ["en", "fr"])`` -> ``{"en": [0.41, 0.22], "fr": [...]}``.
    """
    if isinstance(fact_or_query, Query):
        return answer_stats(model, encode_query(model, fact_or_query)).probability
    fact = fact_or_query
    causal = not is_masked_lm(model)
    languages = list(languages) if languages is not None else fact.languages
    return {
        lang: [answer_stats(model, encode_query(model, q)).probability for q in fact.queries(lang, causal=causal)]
        for lang in languages
    }


def change_rate(before: float, after: float) -> float:
    """The probability change rate (P_after - P_before) / P_before; 0 when P_before is 0."""
    return (after - before) / before if before > 0 else 0.0
