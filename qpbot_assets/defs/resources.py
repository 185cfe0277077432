"""Resources for every domain, configured from the environment through QpbotSettings."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from qpbot_assets.resources import (
    AnswerGeneratorResource,
    BeirSetConfig,
    DocumentStoreResource,
    EmbeddingModelResource,
    EvaluationResource,
    FeedbackDatabaseResource,
    MlflowResource,
    RetrainingPolicyResource,
    S3SourceResource,
    SearchIndexResource,
    SqlSourcesResource,
)
from qpbot_serving.settings import QpbotSettings


@dg.definitions
def resources() -> dg.Definitions:
    settings = QpbotSettings()
    home = str(settings.home)
    return dg.Definitions(
        resources={
            "documents": DocumentStoreResource(
                home=home,
                pdf_passwords=settings.pdf_passwords,
                max_document_mb=settings.max_document_mb,
                max_unpacked_mb=settings.max_unpacked_mb,
                max_compression_ratio=settings.max_compression_ratio,
                max_chunks_per_document=settings.max_chunks_per_document,
            ),
            "index": SearchIndexResource(home=home),
            "embedding_model": EmbeddingModelResource.from_settings(settings),
            # Credentials come from the standard AWS environment variables.
            "s3": S3Resource(endpoint_url=settings.s3_endpoint_url),
            "s3_source": S3SourceResource(bucket=settings.s3_bucket, prefix=settings.s3_prefix),
            # Read by the sensor from the variable itself: its URLs may hold passwords.
            "sql_sources": SqlSourcesResource(
                sources_json=dg.EnvVar("QPBOT_SQL_SOURCES") if settings.sql_sources else "[]"
            ),
            "feedback_db": FeedbackDatabaseResource(
                database_url=settings.feedback_database_url,
                feedback_dir=str(settings.feedback_dir),
            ),
            "retraining": RetrainingPolicyResource(
                feedback_window=settings.feedback_window,
                feedback_min_up_rate=settings.feedback_min_up_rate,
                retrain_min_new_pairs=settings.retrain_min_new_pairs,
            ),
            "mlflow": MlflowResource(
                tracking_uri=settings.tracking_uri, artifacts_dir=str(settings.mlflow_artifacts_dir)
            ),
            "evaluation": EvaluationResource(
                reports_dir=str(settings.evaluation_dir),
                beir_sets=[
                    BeirSetConfig(name=s.name, queries=str(s.queries), qrels=str(s.qrels))
                    for s in settings.eval_beir_sets
                ],
                qa_sets=[str(path) for path in settings.eval_qa_sets],
            ),
            "answer_generator": AnswerGeneratorResource(
                home=home,
                kind=settings.generator,
                model=settings.generator_model,
                url=settings.generator_url,
                api_key=dg.EnvVar("QPBOT_GENERATOR_API_KEY")
                if settings.generator_api_key
                else None,
                timeout_s=settings.generator_timeout_s,
                answer_mode=settings.answer_mode,
                evidence_chunks=settings.answer_evidence_chunks,
                context_tokens=settings.answer_context_tokens,
                min_evidence_score=settings.answer_min_evidence_score,
                min_quote_score=settings.answer_min_quote_score,
                max_new_tokens=settings.answer_max_new_tokens,
                deadline_s=settings.answer_deadline_s,
            ),
        }
    )
