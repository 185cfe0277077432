"""A LoRA adapter for the answer generator, trained on the answers users liked (no Dagster).

Each thumbs-up answer becomes one supervised example: the prompt the service built for it
(rebuilt with the serving code from the evidence units the answer log recorded for it) and
the answer as the target. The loss counts the answer's tokens only.
Queries are held out by `golden.split_of`, the same split the embedder's gate uses, so the
adapter is judged on questions it never trained on, against the base model and the adapter
that serves today.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from qpbot_assets.learning.golden import split_of
from qpbot_serving.evidence import evidence_unit
from qpbot_serving.prompting import PROMPT_VERSION, build_messages

# The attention projections of Llama-style models (SmolLM2 is one).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE = -100  # label of tokens that carry no loss (the prompt)


@dataclass(frozen=True)
class AnswerExample:
    """One thumbs-up answer: the chat prompt the service used and the answer it gave."""

    answer_id: str
    query: str
    split: str  # "train" | "validation"
    messages: list[dict[str, str]]
    answer: str


@dataclass(frozen=True)
class LoraParams:
    """Hyperparameters of one training run."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: int = 2
    max_steps: int = 200  # optimizer steps, over all epochs
    batch_size: int = 4  # examples per optimizer step (accumulated, no padding)
    max_length: int = 2048  # longer examples (prompt + answer tokens) are left out
    train_loss_sample: int = 64  # train examples the train loss is measured on (all held-out)
    seed: int = 0
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS


@dataclass
class LoraReport:
    """What training measured: mean loss per answer token, base model vs adapter."""

    train_examples: int
    validation_examples: int
    too_long: int
    steps: int
    trainable_parameters: int
    base_train_loss: float | None
    base_validation_loss: float | None
    adapter_train_loss: float | None
    adapter_validation_loss: float | None
    champion_validation_loss: float | None = None  # the promoted adapter, same examples
    seconds: float = 0.0
    step_losses: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """The numeric figures, for MLflow and asset metadata (None left out)."""
        return {
            key: float(value)
            for key, value in asdict(self).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }


# --- examples ------------------------------------------------------------------------------
def build_examples(rated: pd.DataFrame) -> tuple[list[AnswerExample], Counter]:
    """Supervised examples from rated answers (`feedback.rated_answers`); returns them with
    the count of answers left out, by reason.

    The prompt is rebuilt from the evidence the answer log recorded (`build_messages`, as
    the service built it). Answers made with an earlier prompt version, or without evidence
    (declined, or no generator call), are left out: their prompt cannot be rebuilt exactly.
    """
    examples: list[AnswerExample] = []
    left_out: Counter = Counter()
    for _, answer in rated.iterrows():
        text = answer.get("answer")
        evidence = answer.get("evidence")
        if answer.get("rating") != "up":
            left_out["not thumbs up"] += 1
        elif not isinstance(text, str) or not text.strip():
            left_out["no answer text"] += 1
        elif answer.get("prompt_version") != PROMPT_VERSION:
            left_out["made with another prompt version"] += 1
        elif not isinstance(evidence, list) or not evidence:
            left_out["no evidence in the prompt"] += 1
        else:
            units = [evidence_unit(row) for row in evidence]
            examples.append(
                AnswerExample(
                    answer_id=answer["answer_id"],
                    query=answer["query"],
                    split=split_of(answer["query"]),
                    messages=build_messages(answer["query"], units),
                    answer=text.strip(),
                )
            )
    return examples, left_out


# --- tokens --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    prompt_length: int  # tokens before the answer; only the rest carry loss

    @property
    def target_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_length


def encode_example(tokenizer, example: AnswerExample) -> EncodedExample:
    """The chat template applied to prompt + answer; the prompt part is the template with
    the generation prompt, exactly what the service feeds the model before it answers."""
    prompt = _token_ids(tokenizer.apply_chat_template(example.messages, add_generation_prompt=True))
    full = _token_ids(
        tokenizer.apply_chat_template(
            [*example.messages, {"role": "assistant", "content": example.answer}]
        )
    )
    if full[: len(prompt)] != prompt or len(full) <= len(prompt):
        raise ValueError("this chat template does not put the answer after the prompt")
    return EncodedExample(full, len(prompt))


def _token_ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def answer_loss(model, example: EncodedExample):
    """Summed cross-entropy of the answer tokens (a tensor, differentiable) and their count.
    Only the answer's logits are computed: on a 135M model the vocabulary projection of a
    long prompt would cost more than the rest."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    input_ids = torch.tensor([example.input_ids])
    keep = example.target_tokens + 1
    logits = model(input_ids=input_ids, logits_to_keep=keep).logits[0, :-1]
    targets = input_ids[0, example.prompt_length :]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss, int(targets.numel())


def mean_answer_loss(model, examples: Sequence[EncodedExample]) -> float | None:
    """Mean loss per answer token over `examples` (None for none), in eval mode."""
    import torch

    if not examples:
        return None
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            loss, count = answer_loss(model, example)
            total += float(loss)
            tokens += count
    return total / tokens


# --- training ------------------------------------------------------------------------------
def train_lora(
    base_model: str,
    examples: Iterable[AnswerExample],
    params: LoraParams,
    output_dir: Path,
    champion_dir: Path | None = None,
    log=None,
) -> LoraReport:
    """Trains a LoRA adapter of `base_model` (a path or hub id) on the train examples, on
    CPU, and saves it to `output_dir` (`save_pretrained`: adapter_config.json and weights).

    Measures the loss per answer token on the validation examples (and a sample of the
    train examples) for the base model and the adapter, and for `champion_dir` (the promoted adapter, when given) on the
    validation examples, so the gate compares all three on the same questions.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)

    encoded = {"train": [], "validation": []}
    too_long = 0
    for example in examples:
        item = encode_example(tokenizer, example)
        if len(item.input_ids) > params.max_length:
            too_long += 1
            continue
        encoded[example.split].append(item)
    train, validation = encoded["train"], encoded["validation"]

    # The train loss is a progress figure, measured on a sample to bound the cost on CPU;
    # the held-out loss (what the gate judges) uses every validation example.
    train_sample = train[: params.train_loss_sample]
    base_train = mean_answer_loss(model, train_sample)
    base_validation = mean_answer_loss(model, validation)

    config = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=list(params.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate)
    order = random.Random(params.seed)
    steps, step_losses = 0, []
    for _epoch in range(params.epochs):
        if steps >= params.max_steps or not train:
            break
        shuffled = order.sample(train, len(train))
        for start in range(0, len(shuffled), params.batch_size):
            batch = shuffled[start : start + params.batch_size]
            tokens = sum(item.target_tokens for item in batch)
            peft_model.train()
            optimizer.zero_grad()
            batch_loss = 0.0
            for item in batch:  # accumulated one by one: no padding, one example in memory
                loss, _count = answer_loss(peft_model, item)
                (loss / tokens).backward()
                batch_loss += float(loss.detach())
            optimizer.step()
            steps += 1
            step_losses.append(batch_loss / tokens)
            if log and (steps == 1 or steps % 10 == 0):
                log(f"step {steps}: loss {step_losses[-1]:.4f}")
            if steps >= params.max_steps:
                break

    adapter_train = mean_answer_loss(peft_model, train_sample)
    adapter_validation = mean_answer_loss(peft_model, validation)
    champion_validation = None
    if champion_dir is not None and validation:
        peft_model.load_adapter(str(champion_dir), adapter_name="champion", is_trainable=False)
        peft_model.set_adapter("champion")
        champion_validation = mean_answer_loss(peft_model, validation)
        peft_model.set_adapter("default")
        peft_model.delete_adapter("champion")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(output_dir)
    return LoraReport(
        train_examples=len(train),
        validation_examples=len(validation),
        too_long=too_long,
        steps=steps,
        trainable_parameters=sum(p.numel() for p in trainable),
        base_train_loss=base_train,
        base_validation_loss=base_validation,
        adapter_train_loss=adapter_train,
        adapter_validation_loss=adapter_validation,
        champion_validation_loss=champion_validation,
        seconds=round(time.perf_counter() - started, 2),
        step_losses=step_losses,
    )


# --- the gate ------------------------------------------------------------------------------
def judge_adapter(report: Mapping) -> tuple[bool, str]:
    """Whether an adapter may serve: on the held-out thumbs-up answers its loss is no worse
    than the base model's and than the promoted adapter's (when there is one). `report` is
    `LoraReport` as a dict. Returns (passed, why)."""
    adapter = report.get("adapter_validation_loss")
    if not report.get("validation_examples") or adapter is None:
        return False, "no held-out thumbs-up answers to judge the adapter on"
    if not math.isfinite(adapter):
        return False, f"held-out loss is {adapter}: training diverged"
    serving = {"base model": report.get("base_validation_loss")}
    if report.get("champion_validation_loss") is not None:
        serving["promoted adapter"] = report["champion_validation_loss"]
    worse = [f"{name} {loss:.4f}" for name, loss in serving.items() if adapter > loss]
    if worse:
        return False, f"held-out loss {adapter:.4f} is worse than the {', '.join(worse)}"
    beaten = ", ".join(f"{name} {loss:.4f}" for name, loss in serving.items())
    return True, f"held-out loss {adapter:.4f} is no worse than the {beaten}"
