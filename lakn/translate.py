"""The model's own translation of a short answer: the new answer in other languages, from the edit language's.

An edit given only an English answer finds an English-specific target, and that target bounds
how far the edit reaches (docs/results.md run 6: placed by hand, a target found on seven
languages' answers moves all seven, one found on English answers moves a quarter to a half of the
others). :func:`translate_answer` asks the model itself for the answer in other languages, with a
few-shot prompt of words written for lakn (:data:`EXAMPLES`), greedy decoding up to the line's
end, and a round trip: a translation is kept only when the model translates it back to the
source text. Nothing outside the model is consulted::

    lakn.translate_answer(model, "Vienna", ["fr", "de", "zh"])   # e.g. {"fr": "Vienne", "de": "Wien"}
    lakn.edit_fact(model, fact, {"en": "Vienna"}, neurons, translate=True)   # the same, inside an edit
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .facts import LANGUAGES, FactsError
from .models import is_masked_lm
from .tokens import model_device

__all__ = ["EXAMPLES", "translate_answer"]

EXAMPLES: dict[str, tuple[str, ...]] = {
    # a country, a city, an occupation, a company, a sport, a language: the kinds of answer facts have
    "en": ("Japan", "London", "painter", "Sony", "football", "Italian"),
    "fr": ("Japon", "Londres", "peintre", "Sony", "football", "italien"),
    "es": ("Japón", "Londres", "pintor", "Sony", "fútbol", "italiano"),
    "de": ("Japan", "London", "Maler", "Sony", "Fußball", "Italienisch"),
    "ru": ("Япония", "Лондон", "художник", "Sony", "футбол", "итальянский"),
    "zh": ("日本", "伦敦", "画家", "索尼", "足球", "意大利语"),
    "ja": ("日本", "ロンドン", "画家", "ソニー", "サッカー", "イタリア語"),
    "ko": ("일본", "런던", "화가", "소니", "축구", "이탈리아어"),
    "ar": ("اليابان", "لندن", "رسام", "سوني", "كرة القدم", "الإيطالية"),
    "fa": ("ژاپن", "لندن", "نقاش", "سونی", "فوتبال", "ایتالیایی"),
    "tr": ("Japonya", "Londra", "ressam", "Sony", "futbol", "İtalyanca"),
    "vi": ("Nhật Bản", "Luân Đôn", "họa sĩ", "Sony", "bóng đá", "tiếng Ý"),
}
"""Aligned words per language code (written for lakn), the few-shot examples of :func:`translate_answer`."""

MAX_TOKENS = 12
"""Tokens decoded per translation at most (an answer is a name or a short phrase)."""


def _examples(code: str, examples: Mapping[str, Sequence[str]]) -> Sequence[str]:
    if code not in LANGUAGES:
        raise FactsError(f"unknown language code {code!r}")
    if code not in examples:
        raise FactsError(f"no translation examples for language {code!r}; lakn has them for {sorted(examples)} "
                         "(pass examples={code: words aligned with the others'})")
    return examples[code]


def _greedy(model, prompt: str, max_tokens: int) -> str:
    """The model's greedy continuation of ``prompt`` up to the end of the line (at most ``max_tokens``)."""
    device = model_device(model)
    tokens = model.to_tokens(prompt).to(device)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            nxt = int(model(tokens)[0, -1].argmax())
            if "\n" in model.tokenizer.decode(out + [nxt]):
                break
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]], device=device)], dim=1)
    return model.tokenizer.decode(out).strip()


def _translate(model, text: str, source: str, target: str, examples: Mapping[str, Sequence[str]],
               max_tokens: int) -> str:
    s, t = LANGUAGES[source][0], LANGUAGES[target][0]
    shots = "".join(f"{s}: {a}\n{t}: {b}\n\n" for a, b in zip(examples[source], examples[target]))
    return _greedy(model, f"{shots}{s}: {' '.join(text.split())}\n{t}:", max_tokens)


def translate_answer(
    model,
    text: str,
    languages: Sequence[str],
    *,
    source: str = "en",
    round_trip: bool = True,
    examples: Mapping[str, Sequence[str]] | None = None,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, str]:
    """``text`` (an answer in ``source``) in each of ``languages``, as the model translates it.

    Few-shot prompt of :data:`EXAMPLES` (or ``examples``: more languages, aligned word lists),
    greedy decoding to the end of the line. With ``round_trip`` (default) a translation is kept
    only when the model translates it back to ``text`` (case and spacing aside): on Gemma 3 270M
    about three in four kept translations start with the reference answer's first token, against
    about three in five of all (docs/results.md run 16). Languages whose translation is empty or
    fails the round trip are left out of the result; ``source`` itself is never in it.
    """
    if not isinstance(text, str) or not text.strip():
        raise FactsError(f"nothing to translate: the answer is {text!r}")
    if isinstance(languages, str):
        languages = [languages]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    table = {**EXAMPLES, **(examples or {})}
    src = _examples(source, table)
    for code in languages:  # every language checked before the model runs
        if len(_examples(code, table)) != len(src):
            raise FactsError(f"translation examples of {source!r} and {code!r} differ in length "
                             f"({len(src)} and {len(table[code])}): they must be aligned")
    want = " ".join(text.split()).casefold()
    out = {}
    for code in dict.fromkeys(languages):
        if code == source:
            continue
        word = _translate(model, text, source, code, table, max_tokens)
        if not word:
            continue
        if round_trip and " ".join(_translate(model, word, code, source, table, max_tokens).split()).casefold() != want:
            continue
        out[code] = word
    return out


def use_translation(translate, model, method: str, language: str, target_languages, n_facts: int = 1) -> bool:
    """``translate`` as True or False. ``"auto"`` (the default): the closed form translates a single
    edit (``n_facts`` 1) when no target languages are named and lakn has translation examples for the
    edit language (it met the fr / es / de generality targets at the same locality, docs/results.md
    runs 17 and 19); a batch of several facts keeps the edit language's answer (translated, fifty
    edits in chunks kept .65 / .67 of unrelated answers against .77 / .82, run 20); the gradient and
    embedding edits keep their published forms, the peers it is measured against."""
    if isinstance(translate, str) and translate == "auto":
        return (method == "closed_form" and target_languages is None and language in EXAMPLES
                and n_facts == 1 and not is_masked_lm(model))
    if not isinstance(translate, bool):
        raise TypeError(f"translate must be True, False or 'auto', got {translate!r}")
    return translate
