"""How an answer prompt is built from selected evidence: numbered sources, each with only
the units of it that matter, the rule to answer from them alone, briefly, citing by number,
and the fixed reply for when they do not hold the answer."""

from __future__ import annotations

from collections.abc import Sequence

from qpbot_serving.evidence import EvidenceUnit

# Bump when the wording or layout changes: every logged answer records the version it was
# made with. v2: evidence units (sentences, list items, table rows) instead of whole chunks.
PROMPT_VERSION = "answer-v2"

NO_ANSWER = "The documents I have do not answer this question."

SYSTEM_PROMPT = (
    "Answer the question using only the numbered sources. "
    "Reply in one short sentence and cite the source number like [1]. "
    f'If the sources do not contain the answer, reply exactly: "{NO_ANSWER}"'
)


def source_label(unit: EvidenceUnit) -> str:
    """ "Title, page N, Section": where a unit comes from, as the prompt and quotes say it."""
    parts = [unit.title or unit.document_id]
    if unit.page:
        parts.append(f"page {unit.page}")
    if unit.section and unit.section != unit.title:
        parts.append(unit.section)
    return ", ".join(parts)


def build_messages(question: str, evidence: Sequence[EvidenceUnit]) -> list[dict[str, str]]:
    """Chat messages for any generator: the rules, then the numbered sources (the units of
    each, in reading order, as `evidence.select_evidence` numbers them) and the question."""
    blocks: list[str] = []
    current = None
    for unit in evidence:
        if unit.number != current:
            current = unit.number
            blocks.append(f"[{unit.number}] {source_label(unit)}")
        blocks.append(unit.prompt_text)
    context = "\n".join(blocks) if blocks else "(no sources)"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n{context}\n\nQuestion: {question.strip()}"},
    ]
