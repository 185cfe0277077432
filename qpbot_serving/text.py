"""Word-level text helpers shared by evidence selection, the citation check and answer
evaluation: which words carry meaning, and how answers are compared (as SQuAD does)."""

from __future__ import annotations

import re
import string
from collections import Counter

# Function words that say nothing about whether a text holds an answer.
STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just me more
    most my no nor not of off on once only or other our ours out over own same she should so
    some such than that the their theirs them then there these they this those through to too
    under until up use used uses using very was we were what when where which while who whom
    why will with would you your yours""".split()
)

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation + "–—‘’“”…·", " "))


def stem(word: str) -> str:
    """A plural "s" dropped from words longer than three letters ("filters" -> "filter")."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lowercased word tokens, stemmed, in order, stopwords kept."""
    return [stem(token) for token in _WORD.findall(text.lower())]


def content_words(text: str) -> set[str]:
    """Lowercased, stemmed word tokens of `text` without stopwords."""
    return {word for word in words(text) if word not in STOPWORDS}


def numbers(text: str) -> set[str]:
    """The numbers written in `text` ("5,000", "2.4", "14"), thousands separators dropped."""
    return {number.replace(",", "") for number in _NUMBER.findall(text)}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(prediction: str | None, reference: str) -> bool:
    """Whether the normalized prediction contains the normalized reference."""
    return bool(prediction) and normalize_answer(reference) in normalize_answer(prediction)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 over normalized answers."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
