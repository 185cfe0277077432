"""How an answer prompt is built from retrieved chunks: numbered sources, answer only from
them, cite by number, say so when they do not hold the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Bump when the wording changes: every logged answer records the version it was made with.
PROMPT_VERSION = "answer-v1"

NO_ANSWER = "The documents I have do not answer this question."

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. "
    "Cite the sources you use like [1] or [2]. Be brief. "
    f'If the sources do not contain the answer, reply exactly: "{NO_ANSWER}"'
)


@dataclass(frozen=True)
class PromptSource:
    number: int
    title: str
    page_start: int | None
    text: str


def number_sources(hits: Sequence, max_characters: int = 2500) -> list[PromptSource]:
    """Turns retrieved hits (anything with title, page_start and text) into numbered sources,
    keeping the best ones that fit in `max_characters`: on a CPU the prompt's length
    sets the time to the first token (about 400 prompt tokens/s for SmolLM2-135M here)."""
    sources: list[PromptSource] = []
    used = 0
    for hit in hits:
        if sources and used + len(hit.text) > max_characters:
            break
        sources.append(PromptSource(len(sources) + 1, hit.title, hit.page_start, hit.text))
        used += len(hit.text)
    return sources


def build_messages(question: str, sources: Sequence[PromptSource]) -> list[dict[str, str]]:
    """Chat messages for any generator: the rules, then the sources and the question."""
    blocks = []
    for source in sources:
        where = f", page {source.page_start}" if source.page_start else ""
        blocks.append(f"[{source.number}] {source.title}{where}\n{source.text}")
    context = "\n\n".join(blocks) if blocks else "(no sources)"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n\n{context}\n\nQuestion: {question.strip()}"},
    ]
