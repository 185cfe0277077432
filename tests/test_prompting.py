from qpbot_serving.evidence import EvidenceUnit
from qpbot_serving.prompting import NO_ANSWER, build_messages


def unit(number, text, title="Handbook", page=None, section=None, position=0, **fields):
    return EvidenceUnit(
        chunk_id=f"c{number}", document_id="doc", title=title, section=section, page=page,
        kind=fields.pop("kind", "sentence"), start=0, end=len(text), text=text,
        position=position, number=number, **fields,
    )  # fmt: skip


def test_sources_are_numbered_with_only_their_units():
    evidence = [
        unit(1, "The battery lasts 150 minutes.", page=3, section="2.1 Runtime"),
        unit(1, "Carpet Boost shortens it.", page=3, section="2.1 Runtime", position=1),
        unit(2, "E4 | Side brush stuck", page=6, kind="table_row", header="Code | Meaning"),
    ]
    system, user = build_messages("  How long?  ", evidence)
    assert NO_ANSWER in system["content"] and "[1]" in system["content"]
    assert (
        "[1] Handbook, page 3, 2.1 Runtime\nThe battery lasts 150 minutes.\n"
        "Carpet Boost shortens it.\n[2] Handbook, page 6\nCode: E4; Meaning: Side brush stuck"
    ) in user["content"]
    assert user["content"].endswith("Question: How long?")


def test_no_evidence_is_said_so():
    assert "(no sources)" in build_messages("Q?", [])[1]["content"]
