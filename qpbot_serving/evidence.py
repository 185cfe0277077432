"""Evidence selection: the stage between retrieval and the prompt.

The top retrieved chunks are cut into evidence units (sentences, list items, and table rows
that keep their header, so "E4 | Side brush stuck" still says what E4 is), each with its
chunk, page and character offsets. Units are scored for the question from three signals:
the words of the question they hold (weighted by how rare each word is among the
candidates), the cosine of the index's own embedder, and the rank of their chunk. The prompt
gets the best units, in the generator's own tokens, instead of whole chunks: on a CPU the
prompt's length sets the time to the first token, and a small model answers better from the
three lines that matter than from two pages of which one line matters. A sentence that two
retrieved chunks share (the overlap of two windows of a long block) is a candidate once
(`drop_repeated_units`).

No model is loaded here: the embedder and the token counter are passed in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from qpbot_serving.text import content_words, numbers, stem, words

# How the three signals add up (set by hand, then checked on the sample questions and ARAGOG
# dev: a lexical weight of 0.25 instead of 0.5 lowered how often ARAGOG's prompt holds the
# answer from 0.41 to 0.28): words of the question carry most, the embedder breaks ties and
# finds paraphrases, the chunk's rank says which part of the corpus the search trusted.
LEXICAL_WEIGHT = 0.5
DENSE_WEIGHT = 0.35
RETRIEVAL_WEIGHT = 0.15
# Only the best units by words and rank are embedded: embedding is the slow signal (8 units
# of ~25 words 0.14 s on two AVX2 cores, 32 0.54 s); the rest count the lowest cosine of those.
DENSE_CANDIDATES = 8
# Units scoring below this share of the best one are not worth their prompt tokens.
RELATIVE_CUTOFF = 0.6
# Flat scores (the 5th best unit scores nearly as well as the best) mean no unit stands out,
# as with questions that paraphrase a paper: the budget then grows, up to this many times
# `budget_tokens` when the 5th unit scores as well as the best; a question one table row
# answers (the 5th unit at half the best's score or less) keeps the budget as it is.
FLAT_BUDGET_MAX = 2.0
FLAT_RANK = 5
# A unit without the kind of answer the question asks for ("how long": a duration) keeps
# this share of its score: the scope sentence that names "Kestrel K2" must not outrank the
# table row that says "2 years".
MISSING_ANSWER_TYPE_SHARE = 0.5
# Question and unit words match when one is a prefix of the other this long or longer
# ("weigh" and "weight"), as well as when they are equal.
PREFIX_MATCH = 5

BULLET = re.compile(r"^\s*(?:[-*•‣▪◦–]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
# A sentence ends at . ! ? (and closing quotes or brackets) followed by space and a capital,
# a digit or an opening quote; not after common abbreviations or a single initial.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    "dr mr mrs ms prof st no nr fig figs eq eqs e.g i.e etc vs approx al ca cf resp dept inc".split()
)
# A unit that starts with one of these leans on the unit before it.
_LEANING_STARTS = frozenset(
    "it its this that these those they their them he she his her such however then there "
    "also otherwise instead both".split()
)


@dataclass(frozen=True)
class EvidenceUnit:
    """One sentence, list item or table row of a retrieved chunk.

    `start`/`end` are character offsets into the chunk's text; `text` is that span with its
    whitespace collapsed; a table row carries its table's header line.
    """

    chunk_id: str
    document_id: str
    title: str | None
    section: str | None
    page: int | None
    kind: str
    start: int
    end: int
    text: str
    position: int  # the unit's place in its chunk, 0 first
    header: str | None = None
    format: str | None = None  # its document's: pdf, docx, markdown, html, text
    chunk_rank: int = 0  # the chunk's place in the retrieved list, 0 best
    score: float = 0.0  # for the question: the weighted sum of the three signals
    lexical: float = 0.0  # the question's words it holds (0-1)
    dense: float = 0.0  # cosine to the question (0 when not embedded)
    number: int | None = None  # the citation number of its source in the prompt

    @property
    def prompt_text(self) -> str:
        """How the unit reads in a prompt or a quote: a table row as "header: value" pairs."""
        if self.kind != "table_row" or not self.header:
            return self.text
        names, values = split_cells(self.header), split_cells(self.text)
        if len(names) != len(values):
            return f"{' | '.join(names)}: {self.text}"
        return "; ".join(f"{n}: {v}" if n else v for n, v in zip(names, values, strict=True) if v)


@dataclass(frozen=True)
class EvidenceSelection:
    """The units a prompt shows (best first, numbered by source) and what was considered."""

    units: list[EvidenceUnit]
    candidates: int
    best_score: float
    prompt_tokens: int
    # The kind of answer the question asks for ("money", "duration", ...; None when it does
    # not say), and whether the prompt's units hold one: when they do not, the documents
    # most likely do not answer the question ("What is the price?" over a policy that
    # only states a restocking fee in percent).
    answer_type: str | None = None
    answer_type_found: bool = True


def evidence_unit(row: Mapping) -> EvidenceUnit:
    """A unit back from its logged form (`answering.FinishedAnswer.evidence_rows`)."""
    return EvidenceUnit(**{name: row[name] for name in _UNIT_FIELDS if name in row})


_UNIT_FIELDS = tuple(f.name for f in fields(EvidenceUnit))


# --- cutting chunks into units -----------------------------------------------------------
def split_cells(line: str) -> list[str]:
    """The cells of a table line: "a | b" or Markdown's "| a | b |"."""
    stripped = line.strip()
    if stripped.startswith("|"):
        stripped = stripped[1:]
    if stripped.endswith("|"):
        stripped = stripped[:-1]
    return [" ".join(cell.split()) for cell in stripped.split("|")]


def split_units(hit, chunk_rank: int = 0) -> list[EvidenceUnit]:
    """The evidence units of one retrieved chunk (anything with chunk_id, document_id, title,
    section, page_start and text), in reading order."""
    text = hit.text or ""
    spans: list[tuple[str, int, int, str | None]] = []
    for block_start, block_end in _blocks(text):
        spans += _block_units(text, block_start, block_end, hit.section)
    return [
        EvidenceUnit(
            chunk_id=hit.chunk_id,
            document_id=hit.document_id,
            title=hit.title,
            section=hit.section,
            page=hit.page_start,
            kind=kind,
            start=start,
            end=end,
            text=" ".join(text[start:end].split()),
            position=position,
            header=header,
            format=getattr(hit, "format", None),
            chunk_rank=chunk_rank,
        )
        for position, (kind, start, end, header) in enumerate(spans)
    ]


def _blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of the paragraphs of `text`, split at blank lines."""
    blocks = []
    for match in re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", text):
        if match.group().strip():
            blocks.append((match.start(), match.end()))
    return blocks


def _lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    lines, position = [], start
    for line in text[start:end].split("\n"):
        if line.strip():
            left = position + len(line) - len(line.lstrip())
            lines.append((left, position + len(line.rstrip())))
        position += len(line) + 1
    return lines


def is_table_line(line: str) -> bool:
    return " | " in line or line.lstrip().startswith("|")


def _block_units(text: str, start: int, end: int, section: str | None):
    lines = _lines(text, start, end)
    first = text[lines[0][0] : lines[0][1]]
    # The chunk's heading is shown with its source in the prompt, not as evidence.
    if section and " ".join(first.split()) == " ".join(section.split()):
        lines = lines[1:]
        if not lines:
            return []
    table = [line for line in lines if is_table_line(text[line[0] : line[1]])]
    if len(table) >= 2 and len(table) >= 0.6 * len(lines):
        return _table_units(text, lines)
    if any(BULLET.match(text[a:b]) for a, b in lines):
        return _list_units(text, lines)
    return sentence_spans(text, lines[0][0], lines[-1][1])


def _table_units(text: str, lines: list[tuple[int, int]]):
    """One unit per row below the header; lines before the table are sentences."""
    units: list[tuple[str, int, int, str | None]] = []
    header: str | None = None
    for line_start, line_end in lines:
        line = text[line_start:line_end]
        if not is_table_line(line):
            if header is None:
                units += sentence_spans(text, line_start, line_end)
            else:  # a wrapped last cell, or a note under the table
                units.append(("sentence", line_start, line_end, None))
            continue
        if TABLE_SEPARATOR.match(line):
            continue
        if header is None:
            header = " | ".join(split_cells(line))
            continue
        if any(split_cells(line)):
            units.append(("table_row", line_start, line_end, header))
    return units


def _list_units(text: str, lines: list[tuple[int, int]]):
    """One unit per list item (with its wrapped lines); text before the list as sentences."""
    units: list[tuple[str, int, int, str | None]] = []
    intro: list[tuple[int, int]] = []
    item: list[int] | None = None
    for line_start, line_end in lines:
        if BULLET.match(text[line_start:line_end]):
            if item:
                units.append(("list_item", item[0], item[1], None))
            item = [line_start, line_end]
        elif item is not None:
            item[1] = line_end
        else:
            intro.append((line_start, line_end))
    if intro:
        units = sentence_spans(text, intro[0][0], intro[-1][1]) + units
    if item:
        units.append(("list_item", item[0], item[1], None))
    return units


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (abbreviations and initials do not end one)."""
    return [
        text[a:b].strip() for _, a, b, _ in sentence_spans(text, 0, len(text)) if text[a:b].strip()
    ]


def sentence_spans(text: str, start: int, end: int):
    """Sentence spans of text[start:end]; abbreviations and initials do not end one."""
    units = []
    begin = start
    for match in _SENTENCE_END.finditer(text, start, end):
        before = text[begin : match.start()].rstrip("\"'”’)]")
        last_word = before.rsplit(None, 1)[-1].lower().rstrip(".") if before.split() else ""
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            continue
        units.append(("sentence", begin, match.start() + len(match.group().rstrip()), None))
        begin = match.end()
    if text[begin:end].strip():
        units.append(("sentence", begin, end, None))
    return units


# --- scoring and selection ---------------------------------------------------------------
def select_evidence(
    question: str,
    hits: Sequence,
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    query_vector: np.ndarray | None = None,
) -> EvidenceSelection:
    """The best evidence units of `hits` (retrieved chunks, best first) for `question`,
    filling at most `budget_tokens` (counted by `count_tokens`, the generator's tokenizer).

    `embed` (texts -> unit vectors, the index's embedder) and `query_vector` add the dense
    signal; without them units are scored by words and rank only. A unit that leans on the
    one before it ("It costs 49 EUR.") brings that one along. The result is numbered by
    source in order of each source's best unit; within a source, units keep reading order.
    """
    candidates = drop_repeated_units(
        [unit for rank, hit in enumerate(hits) for unit in split_units(hit, rank)]
    )
    scored = score_units(question, candidates, embed, query_vector)
    if not scored:
        return EvidenceSelection([], 0, 0.0, 0)
    by_place = {(u.chunk_id, u.position): u for u in scored}
    best = scored[0].score
    budget_tokens = adapted_budget(budget_tokens, scored)
    chosen: dict[tuple[str, int], EvidenceUnit] = {}
    used = 0
    for unit in scored:
        if unit.score < RELATIVE_CUTOFF * best:
            break
        needed = [unit]
        previous = by_place.get((unit.chunk_id, unit.position - 1))
        if previous is not None and _leans_on_previous(unit):
            needed.insert(0, previous)
        needed = [u for u in needed if (u.chunk_id, u.position) not in chosen]
        cost = sum(count_tokens(u.prompt_text) + 2 for u in needed)
        if chosen and used + cost > budget_tokens:
            continue  # a shorter unit further down may still fit
        for u in needed:
            chosen[(u.chunk_id, u.position)] = u
        used += cost
    numbered = _number_by_source(list(chosen.values()))
    wanted = answer_type(question)
    # The answer must also be about what the question names: "It costs 49 EUR" (of the
    # Care+ plan) does not answer what a replacement HEPA filter costs. Words that only
    # say which kind of answer is wanted are not the subject, and only for that kind:
    # "charge" asks for money in "how much do you charge", but names the subject in "how
    # long does charging take".
    kind_words = _terms(_ANSWER_TYPE_WORDS.get(wanted[0], "")) if wanted else set()
    subject = asked_terms(question) - kind_words
    if wanted and wanted[0] in _KEY_TERM_KINDS:
        # Nearly every unit names someone or something with a version, so the one that
        # answers must hold the question's rarest word: "Who is the CEO?" is not answered
        # by "Owner: Finance", nor "Which version added 5 GHz?" by "Firmware 2.3: no-go
        # zones".
        subject = key_terms(subject, candidates)
    found = wanted is None or any(
        carries_answer_type(u, wanted) and _mentions(u, subject) for u in numbered
    )
    return EvidenceSelection(
        numbered, len(candidates), best, used, wanted[0] if wanted else None, found
    )


def drop_repeated_units(units: Sequence[EvidenceUnit]) -> list[EvidenceUnit]:
    """`units` (of chunks in retrieved order) without those that repeat a unit of another
    chunk of their document listed before them: the sentences that two windows of a long
    block share (the chunker's overlap) count once, in the better-ranked chunk. The chunker
    cuts tables only between rows and repeats the header in each chunk that continues one,
    so rows need no mending here."""
    first_chunk: dict[tuple[str, str], str] = {}
    for unit in units:
        first_chunk.setdefault((unit.document_id, unit.prompt_text), unit.chunk_id)
    return [u for u in units if first_chunk[u.document_id, u.prompt_text] == u.chunk_id]


def adapted_budget(budget_tokens: int, scored: Sequence[EvidenceUnit]) -> int:
    """`budget_tokens` grown by how flat the scores of `scored` (best first) are: 1x while
    the FLAT_RANK-th unit scores at most half the best's score, FLAT_BUDGET_MAX x when it
    scores as well, linear between."""
    if len(scored) < FLAT_RANK or scored[0].score <= 0:
        return budget_tokens
    flatness = min(1.0, max(0.0, 2 * scored[FLAT_RANK - 1].score / scored[0].score - 1))
    return round(budget_tokens * (1 + (FLAT_BUDGET_MAX - 1) * flatness))


def score_units(
    question: str,
    units: Sequence[EvidenceUnit],
    embed: Callable[[list[str]], np.ndarray] | None = None,
    query_vector: np.ndarray | None = None,
) -> list[EvidenceUnit]:
    """`units` with their scores for `question`, best first (ties in retrieval order).

    lexical: the share of the question's terms (weighted by squared inverse document
    frequency over the candidates' chunks; a word found nowhere as the rarest found one) that the unit
    or its section hold, or its title at half weight; 0 for a unit that adds nothing to the
    question's words. retrieval: 1 for the
    first chunk, falling with rank. dense: cosine of unit and question, for the
    DENSE_CANDIDATES best units by the other two.
    """
    if not units:
        return []
    asked = asked_terms(question)
    unit_words = [_terms(u.prompt_text) for u in units]
    sections = [_section_terms(u) for u in units]
    titles = [_terms(u.title or "") for u in units]
    matching, weight = _term_weights(asked, units, unit_words, sections, titles)
    total = sum(weight.values()) or 1.0

    def held(w, own, section, title) -> float:
        # A section heading ("Firmware 2.2") is as much the unit's subject as its own words.
        near = matching[w]
        return 1.0 if near & own or near & section else 0.5 if near & title else 0.0

    lexical = np.array(
        [
            sum(weight[w] * held(w, *where) for w in asked)
            / total
            # A unit that says nothing beyond the question's words cannot answer it.
            * bool(where[0] - asked)
            for where in zip(unit_words, sections, titles, strict=True)
        ]
    )
    retrieval = np.array([1.0 / (1.0 + 0.25 * u.chunk_rank) for u in units])
    wanted = answer_type(question)
    typed = np.array(
        [
            1.0 if wanted is None or carries_answer_type(u, wanted) else MISSING_ANSWER_TYPE_SHARE
            for u in units
        ]
    )
    cheap = (LEXICAL_WEIGHT * lexical + RETRIEVAL_WEIGHT * retrieval) * typed
    order = np.argsort(-cheap, kind="stable")
    dense = np.zeros(len(units))
    dense_weight = 0.0  # words and rank only: scaled below so scores keep the same range
    if embed is not None and query_vector is not None:
        top = order[:DENSE_CANDIDATES]
        vectors = embed([_dense_text(units[i]) for i in top])
        dense[top] = np.clip(vectors @ query_vector, 0.0, 1.0)
        dense[order[DENSE_CANDIDATES:]] = dense[top].min()
        dense_weight = DENSE_WEIGHT
    scores = (cheap + dense_weight * dense * typed) / (
        LEXICAL_WEIGHT + RETRIEVAL_WEIGHT + dense_weight
    )
    ranked = sorted(range(len(units)), key=lambda i: (-scores[i], units[i].chunk_rank, i))
    return [
        replace(
            units[i],
            score=round(float(scores[i]), 4),
            lexical=round(float(lexical[i]), 4),
            dense=round(float(dense[i]), 4),
        )
        for i in ranked
    ]


def _section_terms(unit: EvidenceUnit) -> set[str]:
    # A section named like its document (a Markdown or DOCX title) says no more than the title.
    return _terms(unit.section if unit.section and unit.section != unit.title else "")


def _term_weights(
    asked: set[str],
    units: Sequence[EvidenceUnit],
    unit_words: Sequence[set[str]],
    sections: Sequence[set[str]],
    titles: Sequence[set[str]],
) -> tuple[dict[str, set[str]], dict[str, float]]:
    """For each asked term: the candidates' terms it matches, and its weight (the squared
    inverse document frequency over the candidates' chunks)."""
    # Document frequency over the retrieved chunks (with their titles and sections), squared:
    # the product name that most chunks repeat weighs little beside the rare word that only
    # the answer holds.
    chunk_terms: dict[str, set[str]] = {}
    for unit, own, section, title in zip(units, unit_words, sections, titles, strict=True):
        chunk_terms.setdefault(unit.chunk_id, set()).update(own, section, title)
    vocabulary = set().union(*chunk_terms.values())
    # The candidates' words each question word matches: itself, and the words it is a
    # prefix of or that are a prefix of it ("weigh": "weight", "reimburs": "reimbursement").
    matching = {w: {v for v in vocabulary if _term_matches(w, v)} | {w} for w in asked}
    frequency = {w: sum(bool(matching[w] & found) for found in chunk_terms.values()) for w in asked}
    # A word found nowhere counts as much as the rarest found one: often it is a paraphrase
    # ("weigh" for "Weight"), not proof that the answer is missing.
    weight = {w: math.log(1 + len(chunk_terms) / (frequency[w] or 1)) ** 2 for w in asked}
    return matching, weight


def key_terms(asked: set[str], units: Sequence[EvidenceUnit]) -> set[str]:
    """The rarest of the `asked` terms among the chunks of `units` (all those of the
    highest weight, as `score_units` weighs them; a term no unit holds is among them)."""
    if not asked or not units:
        return set(asked)
    _, weight = _term_weights(
        asked,
        units,
        [_terms(u.prompt_text) for u in units],
        [_section_terms(u) for u in units],
        [_terms(u.title or "") for u in units],
    )
    rarest = max(weight.values())
    return {w for w, value in weight.items() if value >= rarest * (1 - 1e-9)}


def held_terms(asked: set[str], unit: EvidenceUnit) -> set[str]:
    """The `asked` terms that `unit`'s own words (a row with its header) or its section hold,
    equal or by prefix ("weigh": "weight")."""
    held = _terms(unit.prompt_text) | _section_terms(unit)
    return {w for w in asked if any(_term_matches(w, v) for v in held)}


# --- the kind of answer a question asks for ----------------------------------------------
# Only question forms that name the kind of their answer unambiguously: "how long" wants a
# duration, "how much does it cost" an amount of money, "how many employees" a number of
# employees, "in km/h" a number in km/h, "who" a person, a role or an organization, "which
# version" a version. Questions that do not ("what", "why") get None, and no unit is
# preferred or found wanting for them.
_TIME_UNIT = r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?|h|days?|weeks?|months?|years?)"
_CURRENCY = r"(?:eur|euros?|usd|dollars?|gbp|pounds?|chf|cny|jpy|yen|€|\$|£)"
_MEASURE_UNIT = (
    r"(?:km/h|mph|m/s|kg|g|mg|lbs?|mm|cm|m|km|ml|l|°c|°f|pa|db|v|w|kw|kwh|mah|wh|hz|khz|mhz"
    r"|ghz|gb|mb|tb)"
)
_NUMBER_WORD = (
    r"(?:\d[\d.,]*|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozen|"
    r"hundred|thousand|million|billion|several|many)"
)
_ASKS_DURATION = re.compile(
    rf"\bhow (?:long|soon)\b|\bhow many (?:(?:business|working|calendar) )?{_TIME_UNIT}\b"
)
_ASKS_MONEY = re.compile(
    r"\bhow much\b.*\b(?:cost|costs|price|pay|paid|charge|charged)\b"
    r"|\b(?:price|prices|priced|allowances?|per[- ]diems?)\b"
)
_ASKS_COUNT = re.compile(r"\bhow many ([a-z][\w-]*)")
_ASKS_QUANTITY = re.compile(
    r"\bhow (?:much|big|large|heavy|high|far|fast|wide|tall|old|loud|hot|cold|warm|strong)\b"
)
_ASKS_IN_UNIT = re.compile(rf"\bin ({_MEASURE_UNIT}|{_CURRENCY})(?![\w/])")
_ASKS_PERSON = re.compile(r"^\W*(?:(?:to|from|by|for|with) )?(?:who|whom|whose)\b")
_ASKS_VERSION = re.compile(
    r"\b(?:which|what) (?:[\w-]+ ){0,3}?(?:version|release)s?\b|\bwhich firmware\b"
)
_HAS_DURATION = re.compile(rf"\d\s*(?:business |working |calendar )?{_TIME_UNIT}\b")
_HAS_MONEY = re.compile(rf"\d\s*{_CURRENCY}(?!\w)|(?<!\w)[€$£]\s*\d")
_HAS_QUANTITY = re.compile(rf"\d\s*(?:{_MEASURE_UNIT}|{_CURRENCY}|%|percent|x|times)(?![\w/])")
# Someone named: a title and a name ("Dr. Lena Hartmann"), two capitalized words of which
# the first is no function word ("Maria Okafor", "Northwind Robotics"), a role, or where to
# reach someone ("Questions go to travel@northwind-robotics.example").
_HAS_PERSON = re.compile(
    r"\b(?:Dr|Mr|Mrs|Ms|Prof)\.?\s+[A-Z]"
    r"|[\w.+-]+@[\w-]+\.[\w.-]+|\+\d[\d ()/-]{6,}\d"
    r"|\b(?!(?:The|A|An|In|On|At|To|For|If|When|Our|Your|This|That|It|We|You|Each|All|No)\s)"
    r"[A-Z][\w'-]+\s+[A-Z][\w'-]+"
    r"|(?i:\b(?:head|manager|officer|director|president|chair(?:man|woman|person)?|owner|"
    r"team|department|board|committee|controller|lead|supervisor|staff|administrator|"
    r"representative|authority|agent|ceo|cfo|cto|coo)s?\b)"
)
_HAS_VERSION = re.compile(
    r"\b(?:version|firmware|release|software|app|v)\s*\d+(?:\.\d+)+\b|\b\d+\.\d+\.\d+\b",
    re.IGNORECASE,
)


def answer_type(question: str) -> tuple[str, str | None] | None:
    """(kind, detail) of the answer `question` asks for, or None when its form does not say:
    ("duration", None), ("money", None), ("count", the counted word's term), ("unit", the
    unit), ("quantity", None: a number with a unit of measure, a currency or percent),
    ("person", None: someone named, a role or an organization), ("version", None)."""
    text = question.lower()
    if _ASKS_PERSON.search(text):
        return ("person", None)
    if _ASKS_VERSION.search(text):
        return ("version", None)
    if _ASKS_DURATION.search(text):
        return ("duration", None)
    if _ASKS_MONEY.search(text):
        return ("money", None)
    if match := _ASKS_COUNT.search(text):
        return ("count", _stem_term(match.group(1)))
    if match := _ASKS_IN_UNIT.search(text):
        return ("unit", match.group(1))
    if _ASKS_QUANTITY.search(text):
        return ("quantity", None)
    return None


def carries_answer_type(unit: EvidenceUnit, wanted: tuple[str, str | None]) -> bool:
    """Whether `unit` states an answer of the kind `wanted` (from `answer_type`)."""
    kind, detail = wanted
    if kind == "person":
        # "Approved by: Your department head": the header's "by" says the row names someone.
        return bool(_HAS_PERSON.search(unit.prompt_text))
    if kind == "version":
        # Release notes say the version in their heading ("Firmware 2.3"), not in each line.
        return bool(_HAS_VERSION.search(f"{unit.section or ''} {unit.prompt_text}"))
    text = unit.prompt_text.lower()
    if kind == "duration":
        return bool(_HAS_DURATION.search(text))
    if kind == "money":
        return bool(_HAS_MONEY.search(text))
    if kind == "unit":
        return bool(re.search(rf"\d\s*{re.escape(detail)}(?![\w/])", text))
    if kind == "count":
        # "up to 7 cleaning schedules", "3 floors", "Floors: 3": a number next to the word
        # counted, not a number anywhere ("employees only · Version 4.2" is no head count).
        tokens = re.findall(r"\d[\d.,]*|[^\W\d_][\w-]*", text)
        counted = [i for i, token in enumerate(tokens) if _term_matches(detail, _stem_term(token))]
        counts = [i for i, token in enumerate(tokens) if re.fullmatch(_NUMBER_WORD, token)]
        return any(abs(n - c) <= 3 for n in counted for c in counts)
    return bool(_HAS_QUANTITY.search(text))


# Question words that only say which kind of answer it wants.
_MONEY_WORDS = "cost costs price prices priced pay paid charge charged km h"
_ANSWER_TYPE_WORDS = {
    "money": _MONEY_WORDS,
    "unit": _MONEY_WORDS,
    "version": "version versions release releases firmware software",
}
# The kinds that nearly every unit could carry: the unit must hold the question's rarest word.
_KEY_TERM_KINDS = ("person", "version")


def _mentions(unit: EvidenceUnit, subject: set[str]) -> bool:
    """Whether `unit` (with its section) holds one of the `subject` terms, or the question
    names nothing else."""
    return not subject or bool(held_terms(subject, unit))


def _stem_term(word: str) -> str:
    return _ENDING.sub("", stem(word.lower()))


def _term_matches(asked: str, found: str) -> bool:
    """Equal, or one a prefix of the other of at least PREFIX_MATCH letters."""
    if asked == found:
        return True
    shorter, longer = sorted((asked, found), key=len)
    return len(shorter) >= PREFIX_MATCH and longer.startswith(shorter)


def asked_terms(question: str) -> set[str]:
    """The terms of a question that evidence should hold: its content words and numbers,
    without the word that makes "how long", "how many", "how often" a question."""
    asked = _terms(question)
    for match in _HOW_WORD.finditer(question.lower()):
        asked.discard(match.group(1))
    return asked


_HOW_WORD = re.compile(
    r"\bhow\s+(long|many|much|often|soon|far|old|big|large|high|fast|loud|hot|cold|warm|strong)\b"
)


def _terms(text: str) -> set[str]:
    """Content words (their endings cut: "meaning" and "mean", "replaced" and "replace"
    match), whole numbers ("2.2" is not "2.3", though both hold a "2") and bounds (">2500"
    for "more than 2,500" and "over 2,500", "<500" for "up to 500")."""
    bounds = {
        ("<" if below else ">") + number.replace(",", "")
        for below, _, number in _BOUND.findall(text.lower())
    }
    # Digits only as whole numbers: content_words cuts "2,500" into "2" and "500".
    content = {_ENDING.sub("", word) for word in content_words(text) if not word.isdigit()}
    return content | numbers(text) | bounds


_ENDING = re.compile(r"(?<=\w{3})(ing|ed|es|e)$")
# "more than" and "over" are stopwords, but they say which row of a table of amounts
# answers: "more than 2,500 EUR" is the row "Over 2,500 EUR", not "500 to 2,500 EUR".
_BOUND = re.compile(
    r"\b(?:(no more than|not more than|less than|fewer than|under|below|up to|at most)"
    r"|(more than|over|above|exceeding|greater than|beyond))\s+(\d[\d,]*(?:\.\d+)?)"
)


def _dense_text(unit: EvidenceUnit) -> str:
    """What the embedder reads of a unit: its section gives it context."""
    return f"{unit.section}: {unit.prompt_text}" if unit.section else unit.prompt_text


def _leans_on_previous(unit: EvidenceUnit) -> bool:
    if unit.position == 0 or unit.kind == "table_row":
        return False
    first = words(unit.text[:40])[:1]
    return bool(first) and first[0] in _LEANING_STARTS


def _number_by_source(units: list[EvidenceUnit]) -> list[EvidenceUnit]:
    """Units numbered by chunk (1 for the chunk of the best unit), grouped by chunk, in
    reading order within a chunk."""
    best_of: dict[str, float] = {}
    for unit in units:
        best_of[unit.chunk_id] = max(best_of.get(unit.chunk_id, 0.0), unit.score)
    order = sorted(best_of, key=lambda chunk_id: -best_of[chunk_id])
    number = {chunk_id: i for i, chunk_id in enumerate(order, 1)}
    grouped = sorted(units, key=lambda u: (number[u.chunk_id], u.position))
    return [replace(u, number=number[u.chunk_id]) for u in grouped]
