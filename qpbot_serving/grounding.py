"""Checked citations and the extractive answer.

A generated answer is cut into sentences and each is matched to the evidence it rests on:
the words it adds to the question must be found in one evidence unit (or in the units of
one source together), and every number it states must be written there. A sentence that no
evidence supports is dropped; a citation marker that points at no source is removed, one
that points at the wrong source is corrected, and a supported sentence without one gets
its source's. What is left is `grounded` when at least one sentence stands.

The extractive answer quotes the best evidence unit(s) with their citations, no model needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from qpbot_serving.evidence import EvidenceUnit, asked_terms, held_terms, split_sentences
from qpbot_serving.prompting import NO_ANSWER, source_label
from qpbot_serving.text import content_words, normalize_answer, numbers

# Share of a sentence's new words (those not in the question) that its evidence must hold.
SUPPORT_THRESHOLD = 0.6
# A second unit is quoted too when it scores within this share of the best one.
SECOND_QUOTE_SHARE = 0.9
# A sentence must rest on evidence that answers the question nearly as well as the best
# unit does: a small generator often copies a true fact from the wrong row ("4 hours" of
# charging for the runtime, the New York hotel limit for Paris).
RELEVANCE_SHARE = 0.8

_MARKER = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class CheckedSentence:
    text: str  # as the checked answer has it, markers corrected
    supported: bool
    support: float  # share of its new words found in its best evidence
    evidence: tuple[int, ...] = ()  # indexes of the evidence units it rests on


@dataclass(frozen=True)
class CheckedAnswer:
    text: str  # the supported sentences, or "" when none is
    grounded: bool
    declined: bool  # the generator gave the fixed no-answer reply
    sentences: list[CheckedSentence] = field(default_factory=list)
    markers_removed: int = 0
    markers_corrected: int = 0

    @property
    def dropped(self) -> list[str]:
        return [s.text for s in self.sentences if not s.supported]

    @property
    def evidence(self) -> list[int]:
        """Indexes of the evidence units the kept sentences rest on, in order."""
        return list(dict.fromkeys(i for s in self.sentences for i in s.evidence))


def is_no_answer(text: str) -> bool:
    """Whether `text` is (or starts with) the fixed no-answer reply."""
    normalized = normalize_answer(text)
    reply = normalize_answer(NO_ANSWER)
    return bool(normalized) and (normalized.startswith(reply) or reply.startswith(normalized))


def check_answer(answer: str, question: str, evidence: Sequence[EvidenceUnit]) -> CheckedAnswer:
    """Checks a generated `answer` against the prompt's `evidence` (numbered units)."""
    if is_no_answer(answer):
        return CheckedAnswer(NO_ANSWER, grounded=False, declined=True)
    best = max((unit.score for unit in evidence), default=0.0)
    relevant = [i for i, unit in enumerate(evidence) if unit.score >= RELEVANCE_SHARE * best]
    groups = _evidence_groups(evidence, relevant)
    asked, asked_numbers = content_words(question), numbers(question)
    sources = {unit.number for unit in evidence}
    checked: list[CheckedSentence] = []
    removed = corrected = 0
    for line in answer.splitlines():
        for sentence in split_sentences(line):
            cited = [int(n) for group in _MARKER.findall(sentence) for n in group.split(",")]
            claim = _MARKER.sub("", sentence).strip()
            if not content_words(claim):
                continue  # a stray marker or punctuation
            removed += sum(n not in sources for n in cited)
            support, members = _best_support(claim, asked, asked_numbers, groups)
            if members and support >= SUPPORT_THRESHOLD:
                number = evidence[members[0]].number
                corrected += bool(cited) and number not in cited
                checked.append(CheckedSentence(_with_marker(claim, number), True, support, members))
            else:
                checked.append(CheckedSentence(claim, False, support))
    kept = [s.text for s in checked if s.supported]
    return CheckedAnswer(" ".join(kept), bool(kept), False, checked, removed, corrected)


def _evidence_groups(
    evidence: Sequence[EvidenceUnit], relevant: Sequence[int]
) -> list[tuple[tuple[int, ...], str]]:
    """(unit indexes, their text with title and section) for each relevant unit and, where
    a source has several, for all of that source's relevant units together."""
    by_number: dict[int | None, list[int]] = {}
    for i in relevant:
        by_number.setdefault(evidence[i].number, []).append(i)

    def text(indexes):
        units = [evidence[i] for i in indexes]
        return " ".join(f"{u.title or ''} {u.section or ''} {u.prompt_text}" for u in units)

    groups = [((i,), text([i])) for i in relevant]
    groups += [(tuple(ix), text(ix)) for ix in by_number.values() if len(ix) > 1]
    return groups


def _best_support(claim, asked, asked_numbers, groups) -> tuple[float, tuple[int, ...]]:
    """(share of the claim's new words held, unit indexes) of its best evidence group; the
    group must also hold every number the claim states beyond the question's."""
    new = content_words(claim) - asked
    stated = numbers(claim) - asked_numbers
    best: tuple[float, tuple[int, ...]] = (0.0, ())
    if not new:  # it only restates the question: nothing for evidence to support
        return best
    for members, text in groups:
        if not stated <= numbers(text):
            continue
        share = len(new & content_words(text)) / len(new)
        if share > best[0] or not best[1]:
            best = (round(share, 3), members)
    return best


def _with_marker(claim: str, number: int | None) -> str:
    end = len(claim.rstrip(".!?"))
    return f"{claim[:end]} [{number}]{claim[end:]}"


def extractive_answer(
    evidence: Sequence[EvidenceUnit], question: str
) -> tuple[str, list[EvidenceUnit]]:
    """The best unit for `question` quoted with its citation (and the second best when it
    answers the same question nearly as well); returns the answer and the quoted units."""
    ranked = sorted(evidence, key=lambda unit: -unit.score)
    if not ranked:
        return NO_ANSWER, []
    quoted = [ranked[0]]
    if len(ranked) > 1 and _quoted_beside(ranked[1], ranked[0], question):
        quoted.append(ranked[1])
    by_source: dict[tuple[str, int | None], list[str]] = {}
    # Two units of one source under one label, in reading order: "return within 30 days"
    # before "we refund within 14 days", as the document says them.
    for unit in sorted(quoted, key=lambda u: (u.number or 0, u.position)):
        by_source.setdefault((source_label(unit), unit.number), []).append(unit.prompt_text)
    lines = [
        f"{label}: " + " … ".join(f"“{text}”" for text in texts) + f" [{number}]"
        for (label, number), texts in by_source.items()
    ]
    return "\n".join(lines), quoted


def _quoted_beside(second: EvidenceUnit, best: EvidenceUnit, question: str) -> bool:
    """Whether `second` is quoted beside `best`: it scores nearly as well and holds every
    word of the question that `best` holds, so it answers the same question (the row
    "E6 | Cliff sensor error" scores close to "E4 | Side brush stuck" for "What does error
    code E4 mean?", but lacks the "E4"). A row of `best`'s own table must also hold a word
    of the question that `best` lacks: the rows of a table answer one question each."""
    if second.score < SECOND_QUOTE_SHARE * best.score:
        return False
    asked = asked_terms(question)
    best_holds, second_holds = held_terms(asked, best), held_terms(asked, second)
    if not best_holds <= second_holds:
        return False
    same_table = (
        best.kind == second.kind == "table_row"
        and best.chunk_id == second.chunk_id
        and best.header == second.header
    )
    return not same_table or bool(second_holds - best_holds)


def highlights(quote: str, answer: str, asked: Set[str] = frozenset()) -> list[tuple[int, int]]:
    """(start, end) spans of the words of `quote` that the answer repeats (not those of the
    question, `asked`), for display."""
    wanted = (content_words(answer) | numbers(answer)) - set(asked)
    spans = []
    for match in re.finditer(r"\d+(?:[.,]\d+)*|\w+", quote):
        token = match.group()
        if token.replace(",", "") in wanted or content_words(token) & wanted:
            spans.append((match.start(), match.end()))
    return spans
