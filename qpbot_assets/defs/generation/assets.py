"""The answer generator learns from feedback: a LoRA adapter trained on thumbs-up answers,
tracked and registered in MLflow, promoted only when the gate in asset_checks.py passes."""

import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from qpbot_assets.defs.feedback.assets import feedback_events
from qpbot_assets.defs.resources import (
    FeedbackDatabaseResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.learning.feedback import rated_answers
from qpbot_assets.learning.lora import LoraParams, build_examples, judge_adapter, train_lora
from qpbot_serving import state as st
from qpbot_serving.generation import adapter_key, read_promoted_adapter, resolve_local_model
from qpbot_serving.prompting import PROMPT_VERSION
from qpbot_serving.settings import DEFAULT_GENERATOR_MODEL

GENERATION = {"group_name": "generation"}
EXPERIMENT = "qpbot-llm-adapter"
REGISTERED_MODEL = "qpbot-llm-adapter"


class LlmAdapterConfig(dg.Config):
    """Which base model, which examples, and the LoRA hyperparameters."""

    base_model: str = DEFAULT_GENERATOR_MODEL  # the served local model: a hub id or a path
    min_examples: int = 8  # thumbs-up training answers below which nothing is trained
    min_validation_examples: int = 1  # held-out ones, without which the gate cannot judge
    max_examples: int = 2000  # newest rated answers read
    r: int = LoraParams.r
    alpha: int = LoraParams.alpha
    dropout: float = LoraParams.dropout
    learning_rate: float = LoraParams.learning_rate
    epochs: int = LoraParams.epochs
    max_steps: int = LoraParams.max_steps
    batch_size: int = LoraParams.batch_size
    max_length: int = LoraParams.max_length
    seed: int = LoraParams.seed

    def lora_params(self) -> LoraParams:
        return LoraParams(
            r=self.r,
            alpha=self.alpha,
            dropout=self.dropout,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
        )


@dg.asset(**GENERATION, deps=[feedback_events], kinds={"pytorch", "mlflow"})
def llm_adapter(
    context: dg.AssetExecutionContext,
    config: LlmAdapterConfig,
    feedback_db: FeedbackDatabaseResource,
    index: SearchIndexResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """A LoRA adapter of the local generator trained on thumbs-up answers, stored under
    `models/adapters/<version>/` of the state root (QPBOT_HOME, or QPBOT_STORAGE_URL),
    logged to MLflow (experiment "qpbot-llm-adapter") and registered as a version of
    "qpbot-llm-adapter" with the alias `challenger`. Held-out loss is measured for the base
    model, the adapter and the promoted adapter on the same questions; the blocking check
    judges it. With too few examples nothing is trained and the metadata says why."""
    rated = rated_answers(feedback_db.state).tail(config.max_examples)
    examples, left_out = build_examples(rated)
    counts = {
        split: sum(example.split == split for example in examples)
        for split in ("train", "validation")
    }
    found = {
        "rated_answers": len(rated),
        "train_examples": counts["train"],
        "validation_examples": counts["validation"],
        "left_out": dg.MetadataValue.json(dict(left_out)),
    }
    if counts["train"] < config.min_examples or (
        counts["validation"] < config.min_validation_examples
    ):
        reason = (
            f"not enough thumbs-up answers: {counts['train']} to train on (need "
            f"{config.min_examples}) and {counts['validation']} held out (need "
            f"{config.min_validation_examples})"
        )
        context.log.info(f"llm_adapter: skipped, {reason}")
        index.state.write(st.ADAPTER_CANDIDATE, st.AdapterCandidate(version=None, reason=reason))
        return dg.MaterializeResult(metadata={"skipped": reason, **found})

    base_path = resolve_local_model(config.base_model, index.models_dir)
    champion = read_promoted_adapter(index.state, config.base_model, index.cache_dir)
    params = config.lora_params()
    client = mlflow.client()
    version = f"lora-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    stored = index.state.uri(adapter_key(version))
    with mlflow.start_run(EXPERIMENT, run_name=version) as run:
        run_id = run.info.run_id
        # Stored once complete; on object storage this worker keeps its copy as a cache.
        with index.state.new_folder(adapter_key(version), index.cache_dir) as folder:
            report = train_lora(
                base_path,
                examples,
                params,
                folder,
                champion_dir=Path(champion["path"]) if champion else None,
                log=context.log.info,
            )
            trained = {**asdict(report), "step_losses": None}
            (folder / "training.json").write_text(
                json.dumps({"base_model": config.base_model, "params": asdict(params), **trained})
            )
            client.log_artifacts(run_id, str(folder), artifact_path="adapter")
        _log_run(client, run_id, config, params, report, champion)
        registered = mlflow.register_challenger(
            REGISTERED_MODEL,
            run_id,
            "adapter",
            "LoRA adapters of the local answer generator.",
            tags={"adapter_version": version},
        )

    index.state.write(
        st.ADAPTER_CANDIDATE,
        st.AdapterCandidate(
            version=version,
            base_model=config.base_model,
            registered_model=REGISTERED_MODEL,
            registered_version=str(registered),
            run_id=run_id,
            champion=champion["version"] if champion else None,
            report=trained,
        ),
    )
    context.log.info(f"llm_adapter: {version} ({REGISTERED_MODEL} v{registered}, challenger)")
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "adapter_dir": dg.MetadataValue.path(stored),
            "registered_version": registered,
            "mlflow_run_id": run_id,
            "base_model": config.base_model,
            **found,
            "steps": report.steps,
            "seconds": report.seconds,
            **{key: round(value, 4) for key, value in report.metrics().items() if "loss" in key},
            "losses": dg.MetadataValue.md(_loss_table(report, champion)),
        }
    )


def _log_run(client, run_id, config: LlmAdapterConfig, params, report, champion) -> None:
    from mlflow.entities import Metric, Param

    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    logged = {
        **{key: value for key, value in asdict(params).items() if key != "target_modules"},
        "target_modules": ",".join(params.target_modules),
        "base_model": config.base_model,
        "prompt_version": PROMPT_VERSION,
        "champion": champion["version"] if champion else "none",
    }
    metrics = [Metric(key, value, now_ms, 0) for key, value in report.metrics().items()]
    metrics += [
        Metric("step_loss", loss, now_ms, step)
        for step, loss in enumerate(report.step_losses, start=1)
    ]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(key, str(value)) for key, value in logged.items()],
    )


def _loss_table(report, champion) -> str:
    def cell(value) -> str:
        return "–" if value is None else f"{value:.4f}"

    rows = [
        ("base model", report.base_train_loss, report.base_validation_loss),
        ("adapter", report.adapter_train_loss, report.adapter_validation_loss),
    ]
    if champion:
        rows.append((f"promoted {champion['version']}", None, report.champion_validation_loss))
    lines = ["| loss per answer token | train | held out |", "|---|---|---|"]
    lines += [f"| {name} | {cell(train)} | {cell(held_out)} |" for name, train, held_out in rows]
    return "\n".join(lines)


@dg.asset(
    **GENERATION,
    deps=[llm_adapter],
    kinds={"mlflow"},
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def promoted_adapter(index: SearchIndexResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The pointer the local generator reads (`state.PROMOTED_ADAPTER`)
    and the MLflow alias `champion`: the last adapter whose blocking check passed."""
    candidate = index.state.read(st.ADAPTER_CANDIDATE)
    current = index.state.read(st.PROMOTED_ADAPTER)
    serving = current.version if current else "base model"
    if candidate is None or candidate.version is None:
        reason = candidate.reason if candidate else "no adapter has been trained"
        return dg.MaterializeResult(
            metadata={"promoted": False, "reason": reason, "serving": serving}
        )
    # The gate again, so that materializing this asset by hand cannot promote a refused one.
    passed, why = judge_adapter(candidate.report)
    if not passed:
        return dg.MaterializeResult(metadata={"promoted": False, "reason": why, "serving": serving})
    promoted = index.state.write(
        st.PROMOTED_ADAPTER,
        st.PromotedAdapter(
            version=candidate.version,
            base_model=candidate.base_model,
            registered_model=candidate.registered_model,
            registered_version=candidate.registered_version,
            run_id=candidate.run_id,
            validation_loss=candidate.report["adapter_validation_loss"],
            promoted_at=st.now_iso(),
        ),
    )
    mlflow.client().set_registered_model_alias(
        candidate.registered_model, "champion", candidate.registered_version
    )
    return dg.MaterializeResult(
        metadata={
            "promoted": True,
            "version": promoted.version,
            "registered_version": promoted.registered_version,
            "previous": serving,
            "why": why,
        }
    )
