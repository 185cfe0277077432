"""Evaluation as a feature: how well the promoted index retrieves and answers, and what the
service's users said, day by day. Results land in asset metadata (with plots), under
`$QPBOT_HOME/evaluation/` (`<QPBOT_STORAGE_URL>/evaluation/` with a storage URL) and in
MLflow (experiment "qpbot-evaluation").

The retrieval and answer evaluations use the very retriever the service serves with
(`Retriever.open`), on the promoted index. `feedback_metrics` lives here, not in the
feedback group, because the retraining job selects that whole group and cannot run a
daily-partitioned asset.
"""

import json
import re
import tempfile
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from qpbot_assets.defs.resources import (
    AnswerGeneratorResource,
    EmbeddingModelResource,
    EvaluationResource,
    FeedbackDatabaseResource,
    MlflowResource,
)
from qpbot_assets.learning.feedback import rated_answers, read_table
from qpbot_assets.learning.feedback_metrics import daily_metrics, daily_series
from qpbot_assets.learning.golden import feedback_golden_set
from qpbot_assets.learning.plots import daily_answers_and_rating, grouped_bars, markdown_image
from qpbot_assets.learning.qa_eval import evaluate_qa, read_qa_set, result_rows
from qpbot_serving.evaluation import evaluate_queries, read_qrels, read_queries
from qpbot_serving.retrieval import MODES, IndexNotReady, Retriever
from qpbot_serving.state import FEEDBACK_DIR

EVALUATION = {"group_name": "evaluation"}
EXPERIMENT = "qpbot-evaluation"
FEEDBACK_SET = "feedback-golden"
RETRIEVAL_METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _open_promoted(embedding_model: EmbeddingModelResource) -> Retriever | None:
    try:
        return embedding_model.retriever()
    except IndexNotReady:
        return None


def _log_artifact(name: str, data: bytes) -> None:
    """Logs `data` as the file `name` among the active MLflow run's artifacts."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="qpbot-") as folder:
        (Path(folder) / name).write_bytes(data)
        mlflow.log_artifact(str(Path(folder) / name))


def _metric_name(*parts: str) -> str:
    """An MLflow metric name: letters, digits and _ - . / only."""
    return ".".join(re.sub(r"[^\w\-/]", "_", part.replace("@", "_at_")) for part in parts)


def _skipped(reason: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"skipped": reason})


@dg.asset(
    **EVALUATION,
    deps=["promoted_index", "feedback_events"],
    kinds={"lancedb", "mlflow"},
    # Scores every newly promoted index. New feedback alone does not re-run it: the golden
    # set from feedback is read as it stands when the index changes or on a manual run.
    automation_condition=dg.AutomationCondition.eager().ignore(
        dg.AssetSelection.assets("feedback_events")
    ),
)
def retrieval_evaluation(
    context: dg.AssetExecutionContext,
    embedding_model: EmbeddingModelResource,
    evaluation: EvaluationResource,
    feedback_db: FeedbackDatabaseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """nDCG@10, recall@100 and MRR@10 of the promoted index in each retrieval mode (dense,
    keyword, hybrid), on every configured BEIR set (QPBOT_EVAL_BEIR_SETS) and on the golden
    set of judged queries from feedback. A bar plot of nDCG@10 goes into the metadata and
    the evaluation reports (`EvaluationResource.save`); every figure is logged to MLflow,
    tagged with the index version."""
    retriever = _open_promoted(embedding_model)
    if retriever is None:
        return _skipped("no promoted index yet: nothing to evaluate")
    sets = {
        beir.name: (read_queries(Path(beir.queries)), read_qrels(Path(beir.qrels)))
        for beir in evaluation.beir_sets
    }
    golden = feedback_golden_set(rated_answers(feedback_db.state), split=None)
    if golden[0]:
        sets[FEEDBACK_SET] = golden
    if not sets:
        return _skipped(
            "no evaluation set: configure QPBOT_EVAL_BEIR_SETS or collect judged feedback"
        )

    label = retriever.promoted.label
    results: dict[str, dict[str, dict]] = {}
    problems: dict[str, str] = {}
    for name, (queries, qrels) in sets.items():
        try:
            results[name] = {
                mode: evaluate_queries(retriever, queries, qrels, mode) for mode in MODES
            }
        except ValueError as problem:  # no query with a relevant document: nothing to score
            problems[name] = str(problem)
        else:
            context.log.info(f"{name}: {results[name]}")
    if not results:
        return _skipped(f"no set could be scored: {problems}")

    png = grouped_bars(
        {
            name: {mode: scores["ndcg@10"] for mode, scores in by_mode.items()}
            for name, by_mode in results.items()
        },
        title=f"nDCG@10 of {label}",
        ylabel="nDCG@10",
    )
    plot_name = f"retrieval-{label.replace('@', '-')}.png"
    plot_path = evaluation.save(plot_name, png)

    with mlflow.start_run(EXPERIMENT, run_name=f"retrieval {label}") as run:
        import mlflow as tracking

        tracking.set_tags(
            {
                "evaluation": "retrieval",
                "index_version": label,
                "embedding_model": retriever.info.embedding_model,
                "dagster_run_id": context.run_id,
            }
        )
        tracking.log_metrics(
            {
                _metric_name(name, mode, metric): float(scores[metric])
                for name, by_mode in results.items()
                for mode, scores in by_mode.items()
                for metric in RETRIEVAL_METRICS
            }
        )
        tracking.log_params(
            {_metric_name(name, "queries"): r["hybrid"]["queries"] for name, r in results.items()}
        )
        _log_artifact(plot_name, png)

    table = "\n".join(
        f"| {name} | {mode} | {scores['queries']} | "
        + " | ".join(f"{scores[metric]:.4f}" for metric in RETRIEVAL_METRICS)
        + " |"
        for name, by_mode in results.items()
        for mode, scores in by_mode.items()
    )
    return dg.MaterializeResult(
        metadata={
            "index_version": label,
            "sets": len(results),
            "results": dg.MetadataValue.md(
                "| set | mode | queries | nDCG@10 | recall@100 | MRR@10 |\n"
                "|---|---|---|---|---|---|\n" + table
            ),
            "plot": dg.MetadataValue.md(markdown_image(png, "nDCG@10 by set and mode")),
            "plot_path": dg.MetadataValue.path(plot_path),
            "mlflow_run_id": run.info.run_id,
            **({"not_scored": dg.MetadataValue.json(problems)} if problems else {}),
            # One number per set that the UI can chart across materializations.
            **{
                f"{name}/hybrid/ndcg@10": float(by_mode["hybrid"]["ndcg@10"])
                for name, by_mode in results.items()
            },
        }
    )


class AnswerEvaluationConfig(dg.Config):
    max_questions: int | None = Field(
        default=25,
        description="Questions scored per set (None: all). The local model "
        "writes about 10 tokens/s, so generated answers cost seconds each.",
    )
    generate: bool = Field(
        default=True, description="Generate answers and score them against the references."
    )
    k: int = Field(default=5, description="Chunks retrieved per question, as the service does.")
    mode: str = Field(default="hybrid", description="dense, keyword or hybrid.")
    threshold: float = Field(
        default=0.5,
        description="Share of the reference answer's content words the context must hold.",
    )


@dg.asset(**EVALUATION, deps=["promoted_index"], kinds={"lancedb", "mlflow"})
def answer_evaluation(
    context: dg.AssetExecutionContext,
    config: AnswerEvaluationConfig,
    embedding_model: EmbeddingModelResource,
    evaluation: EvaluationResource,
    answer_generator: AnswerGeneratorResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """On each question/reference-answer set (QPBOT_EVAL_QA_SETS): whether the retrieved
    context holds the reference answer, and how close the generated answer comes to it
    (cosine of their embeddings, token F1); see `qpbot_assets.learning.qa_eval`. Per-question
    results go to the evaluation reports, figures to the metadata (with a plot) and MLflow.
    Not automated: generation is slow on a CPU, so run it from the UI or `qpbot eval qa`."""
    retriever = _open_promoted(embedding_model)
    if retriever is None:
        return _skipped("no promoted index yet: nothing to evaluate")
    if not evaluation.qa_sets:
        return _skipped("no question/answer set: configure QPBOT_EVAL_QA_SETS")
    generator = answer_generator.build() if config.generate else None
    label = retriever.promoted.label
    summaries: dict[str, dict] = {}
    samples: list[str] = []
    for path in map(Path, evaluation.qa_sets):
        # Questions the documents do not answer (for `qpbot gate`) have no reference to score.
        answerable = [i for i in read_qa_set(path, allow_unanswerable=True) if i["answer"]]
        items = answerable[: config.max_questions]
        summary, results = evaluate_qa(
            retriever,
            items,
            k=config.k,
            mode=config.mode,
            generator=generator,
            policy=answer_generator.policy(),
            threshold=config.threshold,
        )
        name = path.stem if path.stem not in summaries else f"{path.stem}-{len(summaries)}"
        summaries[name] = summary
        context.log.info(f"{name}: {summary}")
        evaluation.save(
            f"answers-{name}-{label.replace('@', '-')}.jsonl",
            "".join(json.dumps(row) + "\n" for row in result_rows(results)).encode(),
        )
        for result in results[:5]:
            answer = (result.generated or "-").replace("|", " ").replace("\n", " ")[:120]
            samples.append(
                f"| {name} | {result.question[:80]} | {result.context_coverage:.2f} | "
                f"{result.answer_similarity if result.answer_similarity is not None else '-'} "
                f"| {answer} |"
            )

    shown = {
        "context holds answer": "context_holds_answer",
        "top-k holds answer": "retrieved_holds_answer",
        "answer similarity": "answer_similarity",
        "answer contains reference": "contains_reference",
        "grounded": "grounded",
    }
    png = grouped_bars(
        {name: {title: s[key] for title, key in shown.items()} for name, s in summaries.items()},
        title=f"Answers on {label}",
        ylabel="share / cosine",
    )
    plot_name = f"answers-{label.replace('@', '-')}.png"
    plot_path = evaluation.save(plot_name, png)

    numeric = (
        "context_holds_answer",
        "retrieved_holds_answer",
        "answer_coverage",
        "reference_chunk_cosine",
        "answer_similarity",
        "answer_token_f1",
        "contains_reference",
        "grounded",
    )
    with mlflow.start_run(EXPERIMENT, run_name=f"answers {label}") as run:
        import mlflow as tracking

        tracking.set_tags(
            {
                "evaluation": "answers",
                "index_version": label,
                "generator": generator.model_name if generator else "none",
                "dagster_run_id": context.run_id,
            }
        )
        tracking.log_params({"k": config.k, "mode": config.mode, "threshold": config.threshold})
        tracking.log_metrics(
            {
                _metric_name(name, key): float(summary[key])
                for name, summary in summaries.items()
                for key in (*numeric, "questions")
                if summary[key] is not None
            }
        )
        _log_artifact(plot_name, png)

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    table = "\n".join(
        f"| {name} | {s['questions']} | " + " | ".join(cell(s[key]) for key in numeric) + " |"
        for name, s in summaries.items()
    )
    return dg.MaterializeResult(
        metadata={
            "index_version": label,
            "generator": generator.model_name if generator else "off",
            "results": dg.MetadataValue.md(
                "| set | questions | context holds answer | top-k holds answer | coverage | "
                "best chunk cosine | answer similarity | token F1 | contains reference | "
                "grounded |\n|---|---|---|---|---|---|---|---|---|---|\n" + table
            ),
            "plot": dg.MetadataValue.md(markdown_image(png, "answer evaluation")),
            "sample": dg.MetadataValue.md(
                "| set | question | coverage | similarity | generated |\n|---|---|---|---|---|\n"
                + "\n".join(samples)
            ),
            "plot_path": dg.MetadataValue.path(plot_path),
            "mlflow_run_id": run.info.run_id,
            **{
                f"{name}/context_holds_answer": float(s["context_holds_answer"])
                for name, s in summaries.items()
                if s["context_holds_answer"] is not None
            },
        }
    )


feedback_days = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)

# eager() alone only considers the latest time partition (today, given end_offset=1), so
# feedback copied just after midnight would never reach yesterday's figures. Looking back
# two days refreshes today and yesterday after every feedback_events sync (a few
# milliseconds each); older days change only through a backfill.
TODAY_AND_YESTERDAY = dg.AutomationCondition.eager().replace(
    "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(timedelta(days=2))
)


@dg.asset(
    **EVALUATION,
    deps=["feedback_events"],
    partitions_def=feedback_days,
    kinds={"pandas", "json"},
    # A backfill over many days reads the events once, in one run.
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=TODAY_AND_YESTERDAY,
)
def feedback_metrics(
    context: dg.AssetExecutionContext, feedback_db: FeedbackDatabaseResource
) -> dg.MaterializeResult:
    """Per UTC day, from the copied feedback events: answers, errors, thumbs-up rate, latency
    percentiles per stage, and the documents and chunks most cited in good and bad answers
    (see `qpbot_assets.learning.feedback_metrics`). Each day is written to
    `feedback/metrics/DAY.json` of the state store; the metadata shows the last day's figures
    and a plot of the 30 days up to it."""
    state = feedback_db.state
    answers = read_table(state, "answers")
    feedback = read_table(state, "feedback")
    days = [date.fromisoformat(key) for key in context.partition_keys]
    figures = [daily_metrics(answers, feedback, day) for day in days]
    for metrics in figures:
        state.put_file(
            f"{FEEDBACK_DIR}/metrics/{metrics['day']}.json", json.dumps(metrics, indent=2).encode()
        )
    last = figures[-1]
    series = daily_series(answers, feedback, days[-1], days=30)
    png = daily_answers_and_rating(series, f"Answers and thumbs-up rate, 30 days to {days[-1]}")

    def rate(value) -> str:
        return "-" if value is None else f"{value:.0%}"

    def top(pairs: list) -> str:
        return ", ".join(f"{name} ({count})" for name, count in pairs) or "-"

    daily = "\n".join(
        f"| {m['day']} | {m['answers']} | {m['errors']} | {m['up']} | {m['down']} | "
        f"{rate(m['thumbs_up_rate'])} |"
        for m in figures
    )
    latency = "\n".join(
        f"| {stage} | {p['p50']} | {p['p90']} | {p['p99']} |"
        for stage, p in last["latency_ms"].items()
    )
    return dg.MaterializeResult(
        metadata={
            "answers": last["answers"],
            "errors": last["errors"],
            "ratings": last["ratings"],
            **({"thumbs_up_rate": last["thumbs_up_rate"]} if last["ratings"] else {}),
            "days": dg.MetadataValue.md(
                "| day | answers | errors | up | down | thumbs-up |\n|---|---|---|---|---|---|\n"
                + daily
            ),
            "latency_ms": dg.MetadataValue.md(
                "| stage | p50 | p90 | p99 |\n|---|---|---|---|\n" + latency
            ),
            "most_cited": dg.MetadataValue.md(
                f"- documents in good answers: {top(last['top_documents']['good'])}\n"
                f"- documents in bad answers: {top(last['top_documents']['bad'])}\n"
                f"- chunks in good answers: {top(last['top_chunks']['good'])}\n"
                f"- chunks in bad answers: {top(last['top_chunks']['bad'])}"
            ),
            "plot": dg.MetadataValue.md(markdown_image(png, "answers per day, thumbs-up rate")),
        }
    )
