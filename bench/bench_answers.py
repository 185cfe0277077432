"""Answer benchmark: what a user of the chatbot sees, per answer mode and generator.

    .venv/bin/python bench/bench_answers.py [--modes extractive,generative,auto]
        [--generator local | --generator-model PATH_OR_ID] [--no-aragog] [--json OUT]

Question sets: the sample questions (`examples/sample_questions.jsonl` and
`examples/more_sample_questions.jsonl`: table, list and sentence lookups about the sample
documents, and 10 questions they do not answer) over an index of the sample documents, and
ARAGOG dev (`../shared/data/aragog/qa-dev.jsonl`) over its 15 papers. Both homes are built
under `--work` on the first run (`qpbot ingest`) and reused afterwards.

Each question goes through the answer pipeline the service runs (`qpbot_serving.answering`):
hybrid retrieval, evidence selection, guarded generation, the citation check, the fallback.
Per mode: answer contains the reference (SQuAD-normalized), token F1, loop rate (generation
ended by the repetition guard), grounded rate, unanswerable questions declined (and
answerable ones wrongly declined), prompt tokens (the whole chat prompt in the generator's
tokens), time to first token and total time (from the question, retrieval included), and for
ARAGOG whether the prompt holds the answer (half of the reference's content words, as
`qpbot eval qa` counts it). The evidence scores of answerable and unanswerable sample
questions are reported too: `answer_min_evidence_score` is calibrated from them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qpbot_assets.learning.qa_eval import answer_coverage  # noqa: E402
from qpbot_serving.answering import Answerer, AnswerPolicy  # noqa: E402
from qpbot_serving.generation import GeneratorUnavailable, LocalGenerator, repeat_start  # noqa: E402
from qpbot_serving.prompting import NO_ANSWER  # noqa: E402
from qpbot_serving.retrieval import Retriever  # noqa: E402
from qpbot_serving.settings import QpbotSettings  # noqa: E402
from qpbot_serving.text import contains_answer, token_f1  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SAMPLE_SETS = [REPO / "examples" / "sample_questions.jsonl"]
SAMPLE_SETS.append(REPO / "examples" / "more_sample_questions.jsonl")


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in wanted if flag in present]
    return []


def ingested_home(home: Path, sources: list[Path]) -> Path:
    """`home` with `sources` ingested (once; an existing promoted index is reused)."""
    if not (home / "index" / "PROMOTED.json").exists():
        environment = {**os.environ, "QPBOT_HOME": str(home)}
        environment.pop("DAGSTER_HOME", None)
        command = [str(REPO / ".venv" / "bin" / "qpbot"), "ingest", *map(str, sources)]
        subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return home


def read_questions(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


def run_question(retriever, answerer: Answerer, question: str) -> dict:
    """One answer as the service makes it, timed from the question."""
    started = time.monotonic()
    hits = retriever.search(question, k=answerer.policy.evidence_chunks, mode="hybrid")
    prepared = answerer.prepare(question, hits, started=started)
    first_token = None
    if answerer.needs_generation(prepared):
        pieces, guard = answerer.stream(prepared)
        error = None
        try:
            for _ in pieces:
                if first_token is None:
                    first_token = time.monotonic() - started
        except GeneratorUnavailable as problem:
            error = problem
        finished = answerer.finish(prepared, guard.text.strip(), error, guard.stop_reason)
    else:
        finished = answerer.finish(prepared)
    total = time.monotonic() - started
    prompt_tokens = None
    if answerer.generates and isinstance(answerer.generator, LocalGenerator):
        _, tokenizer = answerer.generator._model_and_tokenizer
        prompt_tokens = len(
            tokenizer.apply_chat_template(
                prepared.messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return {
        "question": question,
        "answer": finished.text,
        "answer_mode": finished.mode,
        "grounded": finished.grounded,
        "generated": finished.generated,
        "fallback": finished.fallback,
        "stop_reason": finished.stop_reason,
        "best_evidence_score": prepared.selection.best_score,
        "evidence_units": len(prepared.evidence),
        "prompt_text": "\n".join(unit.prompt_text for unit in prepared.evidence),
        "prompt_tokens": prompt_tokens,
        "first_token_s": round(first_token if first_token is not None else total, 3),
        "total_s": round(total, 3),
    }


def summarize(rows: list[dict], items: list[dict]) -> dict:
    answerable = [(r, i) for r, i in zip(rows, items, strict=True) if i.get("answer")]
    unanswerable = [r for r, i in zip(rows, items, strict=True) if not i.get("answer")]
    summary = {
        "questions": len(rows),
        "answerable": len(answerable),
        "contains_answer": round(
            statistics.mean(contains_answer(r["answer"], i["answer"]) for r, i in answerable), 3
        )
        if answerable
        else None,
        "correct": sum(contains_answer(r["answer"], i["answer"]) for r, i in answerable),
        "token_f1": round(
            statistics.mean(token_f1(r["answer"], i["answer"]) for r, i in answerable), 3
        )
        if answerable
        else None,
        "answerable_declined": sum(r["answer"] == NO_ANSWER for r, _ in answerable),
        "unanswerable": len(unanswerable),
        "unanswerable_declined": sum(r["answer"] == NO_ANSWER for r in unanswerable),
        # Answers that repeat themselves; and drafts the guard cut at their first repeat.
        "loops": sum(
            r["answer_mode"] == "generative" and repeat_start(r["answer"]) is not None for r in rows
        ),
        "repetitions_cut": sum(r["stop_reason"] == "repetition" for r in rows),
        "grounded_rate": round(statistics.mean(r["grounded"] for r in rows), 3),
        "fallbacks": sum(r["fallback"] is not None for r in rows),
        "answer_modes": {
            m: sum(r["answer_mode"] == m for r in rows)
            for m in ("generative", "extractive", "declined")
        },
        "prompt_tokens_p50": percentile(
            [r["prompt_tokens"] for r in rows if r["prompt_tokens"]], 0.5
        ),
        "first_token_p50_s": percentile([r["first_token_s"] for r in rows], 0.5),
        "total_p50_s": percentile([r["total_s"] for r in rows], 0.5),
        "total_p90_s": percentile([r["total_s"] for r in rows], 0.9),
    }
    if answerable and "papers" in answerable[0][1]:  # ARAGOG: does the prompt hold it?
        summary["prompt_holds_answer"] = round(
            statistics.mean(
                answer_coverage(i["answer"], r["prompt_text"]) >= 0.5 for r, i in answerable
            ),
            3,
        )
    scores_answerable = [r["best_evidence_score"] for r, _ in answerable]
    scores_unanswerable = [r["best_evidence_score"] for r in unanswerable]
    if scores_unanswerable:
        summary["evidence_score"] = {
            "answerable_min": min(scores_answerable),
            "answerable_p10": percentile(scores_answerable, 0.1),
            "unanswerable_max": max(scores_unanswerable),
            "unanswerable_p90": percentile(scores_unanswerable, 0.9),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qpbot_bench_answers"))
    parser.add_argument("--modes", default="extractive,generative,auto")
    parser.add_argument("--generator-model", default=QpbotSettings().generator_model)
    parser.add_argument("--no-aragog", action="store_true")
    parser.add_argument("--aragog-limit", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--details", type=Path, help="write every answer here (JSONL)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override an AnswerPolicy field, e.g. --set context_tokens=200",
    )  # fmt: skip
    args = parser.parse_args()

    overrides = {}
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        overrides[name] = type(getattr(AnswerPolicy(), name))(value)
    settings = QpbotSettings(home=args.work / "samples")
    sets = {
        "sample": (
            ingested_home(args.work / "samples", [REPO / "examples" / "sample_documents"]),
            read_questions(SAMPLE_SETS),
        )
    }
    if not args.no_aragog and (SHARED / "aragog").is_dir():
        items = read_questions([SHARED / "aragog" / "qa-dev.jsonl"])[: args.aragog_limit]
        sets["aragog"] = (
            ingested_home(args.work / "aragog", [SHARED / "aragog" / "papers"]),
            items,
        )

    generator = LocalGenerator(args.generator_model, args.work / "models", settings.generator_dtype)
    generator.load()
    report = {
        "command": " ".join(sys.argv),
        "cpu_flags": cpu_flags(),
        "generator": generator.model_name,
        "policy": {},
        "results": {},
    }
    details = []
    for set_name, (home, items) in sets.items():
        retriever = Retriever.open(home)
        retriever.search("warm up", 1)
        for mode in args.modes.split(","):
            policy = replace(AnswerPolicy.from_settings(settings), mode=mode, **overrides)
            report["policy"] = {k: v for k, v in policy.__dict__.items() if k != "mode"}
            answerer = Answerer.for_retriever(retriever, generator, policy)
            rows = [run_question(retriever, answerer, item["question"]) for item in items]
            report["results"][f"{set_name}/{mode}"] = summary = summarize(rows, items)
            print(f"{set_name}/{mode}: {json.dumps(summary)}", flush=True)
            details += [
                {"set": set_name, "mode": mode, "reference": item.get("answer"), **row}
                for row, item in zip(rows, items, strict=True)
            ]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.details:
        args.details.write_text("".join(json.dumps(row) + "\n" for row in details))


if __name__ == "__main__":
    main()
