"""Resources for every domain, configured from the environment through QpbotSettings."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from qpbot_assets.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    FeedbackDatabaseResource,
    MlflowResource,
    S3SourceResource,
    SearchIndexResource,
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
            ),
            "index": SearchIndexResource(home=home),
            "embedding_model": EmbeddingModelResource(model_name=settings.embedding_model),
            # Credentials come from the standard AWS environment variables.
            "s3": S3Resource(endpoint_url=settings.s3_endpoint_url),
            "s3_source": S3SourceResource(bucket=settings.s3_bucket, prefix=settings.s3_prefix),
            "feedback_db": FeedbackDatabaseResource(
                database_url=settings.feedback_database_url,
                feedback_dir=str(settings.feedback_dir),
            ),
            "mlflow": MlflowResource(
                tracking_uri=settings.tracking_uri, artifacts_dir=str(settings.home / "mlartifacts")
            ),
        }
    )
