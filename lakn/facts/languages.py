"""The language codes lakn validates against (ISO 639-1, with name and main script)."""

from __future__ import annotations

from typing import Iterable

from .errors import FactsError, _quote_list

__all__ = ["LANGUAGES", "check_languages"]

# Supported language codes (ISO 639-1) with their name and main script. The list is what lakn
# validates against; add a code here to use a new language.
LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("Afrikaans", "Latin"), "ar": ("Arabic", "Arabic"), "az": ("Azerbaijani", "Latin"),
    "be": ("Belarusian", "Cyrillic"), "bg": ("Bulgarian", "Cyrillic"), "bn": ("Bengali", "Bengali"),
    "ca": ("Catalan", "Latin"), "cs": ("Czech", "Latin"), "cy": ("Welsh", "Latin"),
    "da": ("Danish", "Latin"), "de": ("German", "Latin"), "el": ("Greek", "Greek"),
    "en": ("English", "Latin"), "es": ("Spanish", "Latin"), "et": ("Estonian", "Latin"),
    "eu": ("Basque", "Latin"), "fa": ("Persian", "Arabic"), "fi": ("Finnish", "Latin"),
    "fr": ("French", "Latin"), "ga": ("Irish", "Latin"), "gl": ("Galician", "Latin"),
    "he": ("Hebrew", "Hebrew"), "hi": ("Hindi", "Devanagari"), "hr": ("Croatian", "Latin"),
    "hu": ("Hungarian", "Latin"), "hy": ("Armenian", "Armenian"), "id": ("Indonesian", "Latin"),
    "it": ("Italian", "Latin"), "ja": ("Japanese", "Kana/Han"), "ka": ("Georgian", "Georgian"),
    "kk": ("Kazakh", "Cyrillic"), "ko": ("Korean", "Hangul"), "lt": ("Lithuanian", "Latin"),
    "lv": ("Latvian", "Latin"), "ms": ("Malay", "Latin"), "nl": ("Dutch", "Latin"),
    "no": ("Norwegian", "Latin"), "pl": ("Polish", "Latin"), "pt": ("Portuguese", "Latin"),
    "ro": ("Romanian", "Latin"), "ru": ("Russian", "Cyrillic"), "sk": ("Slovak", "Latin"),
    "sl": ("Slovenian", "Latin"), "sq": ("Albanian", "Latin"), "sr": ("Serbian", "Cyrillic"),
    "sv": ("Swedish", "Latin"), "sw": ("Swahili", "Latin"), "ta": ("Tamil", "Tamil"),
    "th": ("Thai", "Thai"), "tr": ("Turkish", "Latin"), "uk": ("Ukrainian", "Cyrillic"),
    "ur": ("Urdu", "Arabic"), "vi": ("Vietnamese", "Latin"), "zh": ("Chinese", "Han"),
}


def check_languages(languages: Iterable[str]) -> list[str]:
    """Validate language codes against :data:`LANGUAGES`; returns them as a list."""
    languages = [str(lang).strip() for lang in languages]
    if not languages:
        raise FactsError("no languages requested")
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise FactsError(
            f"unknown or unsupported language code(s): {_quote_list(unknown)}; supported: {', '.join(sorted(LANGUAGES))}"
        )
    return languages

