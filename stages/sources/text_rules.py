"""Metadata text rules of the discover stage: hashtags, stop words, title words, a language guess.

VIDAL keeps a video when its title and hashtags can describe it: a title of at least two words, or
some hashtags. Platform noise ("shorts", "fyp", "viral") says nothing about the content, so words
and tags on the stop list count for nothing. The language guess is deliberately small (Unicode
scripts plus common function words) and says ``None`` when unsure; a caller decides what unknown means.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from contracts import shipped

HASHTAG = re.compile(r"#([^\s#.,;:!?()\[\]{}\"'<>/\\|]+)")
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
UNSPACED = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")  # Thai, kana, CJK


def parse_hashtags(value: Any) -> list[str]:
    """Hashtags from a list, a JSON list, or a string like ``"#cat #funny"`` / ``"cat,funny"``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = re.split(r"[\s,]+", text.strip("[]"))
        else:
            value = re.split(r"[\s,]+", text)
    tags = [str(t).strip().lstrip("#").strip() for t in value]
    return [t for t in dict.fromkeys(tags) if t]


def hashtags_in(*texts: str | None) -> list[str]:
    """``#tags`` written inside titles or descriptions, in order of appearance, without repeats."""
    found = [m.group(1) for t in texts if t for m in HASHTAG.finditer(t)]
    return list(dict.fromkeys(found))


def strip_hashtags(text: str) -> str:
    """The text without its ``#tags``, whitespace collapsed."""
    return " ".join(HASHTAG.sub(" ", text).split())


def resolve_manifest_path(name: str) -> Path:
    """A manifest file given absolute, relative to the working directory, or shipped with vidal
    (``manifests/…`` of the checkout or of the installed wheel: ``contracts.shipped``)."""
    return shipped.resolve(name)


@lru_cache(maxsize=8)
def load_stopwords(name: str) -> frozenset[str]:
    """Stop words from a one-per-line list (``#`` starts a comment), lower-cased."""
    words = []
    for line in resolve_manifest_path(name).read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip().lower()
        if word:
            words.append(word)
    return frozenset(words)


def clean_tags(tags: Iterable[str], stopwords: frozenset[str]) -> list[str]:
    """Tags without the stop-listed ones (case-insensitive), order kept."""
    return [t for t in tags if t.lower() not in stopwords]


def title_words(title: str | None, stopwords: frozenset[str]) -> list[str]:
    """The words of a title that say something: hashtags and stop words removed.

    Scripts written without spaces (Chinese, Japanese, Thai) count one word per two characters, so
    that the two-word rule means about the same in every language.
    """
    if not title:
        return []
    words = []
    for w in WORD.findall(strip_hashtags(title)):
        if w.lower() in stopwords:
            continue
        if len(w) > 2 and UNSPACED.search(w):
            words += [w[i : i + 2] for i in range(0, len(w), 2)]
        else:
            words.append(w)
    return words


# -- language ------------------------------------------------------------------------------------
# Scripts that name one language well enough for filtering; Latin needs the word lists below.
SCRIPT_LANGUAGE = {
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
    "CJK": "zh",
    "CYRILLIC": "ru",
    "ARABIC": "ar",
    "DEVANAGARI": "hi",
    "THAI": "th",
    "GREEK": "el",
    "HEBREW": "he",
    "BENGALI": "bn",
    "TAMIL": "ta",
}
# Frequent short function words per language, chosen to overlap little between the languages.
FUNCTION_WORDS = {
    "en": "the and of to in is with on for this that my how what you your are at from it was".split(),
    "es": "el la los las y de del en con por para una que es mi como se al su muy".split(),
    "pt": "o os as e de do da dos das em com por para uma que é meu minha não ao na no".split(),
    "fr": "le la les et de du des en avec pour une que est mon ma comment sur au aux ce dans".split(),
    "de": "der die das und von mit für ein eine ist mein wie auf dem den zu im nicht".split(),
    "it": "il lo la gli le e di del della con per una che è mio come su al nel non".split(),
    "id": "dan yang di ke dari ini itu untuk dengan saya cara tidak ada".split(),
    "tr": "ve bir bu için ile çok nasıl ne değil gibi da de".split(),
}
# Letters that only one of the languages above uses.
LETTER_LANGUAGE = {
    "ñ": "es",
    "¿": "es",
    "¡": "es",
    "ã": "pt",
    "õ": "pt",
    "ß": "de",
    "œ": "fr",
    "ğ": "tr",
    "ş": "tr",
    "ı": "tr",
}
WORD_LANGUAGES: dict[str, list[str]] = {}
for _lang, _words in FUNCTION_WORDS.items():
    for _w in _words:
        WORD_LANGUAGES.setdefault(_w, []).append(_lang)


def _script(ch: str) -> str | None:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    if name.startswith("CJK"):
        return "CJK"
    head = name.split(" ", 1)[0]
    return head if head in SCRIPT_LANGUAGE or head == "LATIN" else None


def guess_language(text: str | None) -> str | None:
    """An ISO 639-1 guess for short text (titles), or None when the evidence is too thin."""
    if not text:
        return None
    text = strip_hashtags(text)
    scripts = Counter(s for ch in text if ch.isalpha() and (s := _script(ch)))
    if not scripts:
        return None
    if scripts.get("HIRAGANA") or scripts.get("KATAKANA"):
        return "ja"  # Japanese mixes kana with kanji; any kana decides it
    script, n = scripts.most_common(1)[0]
    if script != "LATIN":
        return SCRIPT_LANGUAGE[script] if n >= 2 else None
    votes: Counter[str] = Counter(LETTER_LANGUAGE[ch] for ch in text.lower() if ch in LETTER_LANGUAGE)
    for w in WORD.findall(text.lower()):
        for lang in WORD_LANGUAGES.get(w, ()):
            votes[lang] += 1
    if not votes:
        return None
    ranked = votes.most_common(2)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]
