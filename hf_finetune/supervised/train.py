"""Entry point of the ``supervised`` recipe method."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from ..config import DataArguments, LoraArguments, MethodEntry, ModelArguments, Recipe
from ..data import load_splits
from ..metrics import confusion_matrix
from ..models import (
    apply_lora,
    check_model_fits,
    export_model,
    load_model,
    load_tokenizer,
    load_trained,
    task_config_dir,
)
from ..runs import TrainingRun
from .config import SupervisedConfig
from .tasks import (
    enable_prefix_space,
    load_token_splits,
    prepare_classification,
    prepare_multi_label,
    prepare_regression,
    prepare_token_classification,
    word_predictions,
)
from .trainer import SupervisedTrainer

logger = logging.getLogger(__name__)

BLOCKS = {"model": ModelArguments, "data": DataArguments, "lora": LoraArguments, "training": SupervisedConfig}


def prepare_task_data(recipe: Recipe, tokenizer):
    """Raw splits, tokenized splits, label names, the ``AutoModelFor*`` class and head settings of the task."""
    data = recipe.data
    task = getattr(recipe.training, "task", "classification")
    head: dict = {}
    if task == "token_classification":
        if enable_prefix_space(tokenizer):
            logger.info("Byte-level BPE tokenizer: add_prefix_space enabled for pre-split words.")
        splits = load_token_splits(data)
        tokenized, names, splits = prepare_token_classification(
            splits, tokenizer, data, getattr(recipe.training, "label_all_tokens", False)
        )
        return splits, tokenized, names, AutoModelForTokenClassification, head
    splits = load_splits(data, label_column=data.label_column)
    if task == "multi_label":
        tokenized, names = prepare_multi_label(splits, tokenizer, data)
        head["problem_type"] = "multi_label_classification"
    elif task == "regression":
        tokenized, names = prepare_regression(splits, tokenizer, data)
        head["problem_type"] = "regression"
    else:
        tokenized, names = prepare_classification(splits, tokenizer, data)
    return splits, tokenized, names, AutoModelForSequenceClassification, head


def _label_config(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def build_classifier(recipe: Recipe):
    """Tokenizer, raw splits, tokenized splits, label names and model (LoRA-wrapped when asked), all validated.

    ``training.task`` picks the head: sequence classification (single-label, multi-label or
    regression) or token classification. Decoder models (GPT-2, Llama, SmolLM2) work as classifiers:
    their EOS becomes the pad token (an error when they have neither) and the score head reads the
    last non-pad token, whichever side is padded.
    """
    model_args, data, lora = recipe.model, recipe.data, recipe.lora
    task = getattr(recipe.training, "task", "classification")
    tokenizer = load_tokenizer(model_args)
    splits, tokenized, names, auto_class, head = prepare_task_data(recipe, tokenizer)
    model = load_model(model_args, auto_class, **_label_config(names), **head)
    model.config.pad_token_id = tokenizer.pad_token_id
    check_model_fits(model, tokenizer, data.max_length)
    if lora.use_lora:
        model = apply_lora(model, lora, task_type="TOKEN_CLS" if task == "token_classification" else "SEQ_CLS")
    return tokenizer, splits, tokenized, names, model


def evaluate(recipe: Recipe, run_dir: str) -> dict:
    """Re-evaluate the model (or adapter) saved in ``run_dir`` on the data of ``recipe``, as training did.

    The recipe is the run's own ``recipe.yaml`` (same seeded split and label order), possibly with
    ``data.eval_dataset`` replaced; the metrics come back under the same ``eval_*`` names.
    """
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    _, tokenized, names, auto_class, head = prepare_task_data(recipe, tokenizer)
    # An adapter saved without its task config needs the label layout to rebuild its head.
    labels = {} if task_config_dir(run_dir) is not None else {**_label_config(names), **head}
    model = load_trained(run_dir, auto_class, **labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = SupervisedTrainer(
        model=model,
        args=recipe.training,
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
    )
    return trainer.evaluate(metric_key_prefix="eval")


def write_predictions(path: Path, recipe: Recipe, raw, output, names: list[str], tokenizer) -> None:
    """One JSON line per evaluation example with the reference and the prediction, in the task's terms."""
    args, data = recipe.training, recipe.data
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    rows = []
    if args.task == "token_classification":
        words = [list(w) for w in raw[data.text_column]]
        predicted = word_predictions(logits, words, tokenizer, data.max_length, names)
        rows = [{"tokens": w, "tags": t, "predicted": p} for w, t, p in zip(words, raw[data.label_column], predicted)]
    else:
        texts = [t[:200] for t in raw[data.text_column]]
        if args.task == "multi_label":
            hits = 1 / (1 + np.exp(-logits)) >= args.multi_label_threshold
            for text, label, hit in zip(texts, output.label_ids, hits):
                gold = [names[i] for i in np.flatnonzero(label)]
                rows.append({"text": text, "labels": gold, "predicted": [names[i] for i in np.flatnonzero(hit)]})
        elif args.task == "regression":
            for text, label, pred in zip(texts, output.label_ids, logits.reshape(-1)):
                rows.append({"text": text, "label": float(label), "prediction": float(pred)})
        else:
            for text, label, pred in zip(texts, output.label_ids, np.argmax(logits, axis=-1)):
                rows.append({"text": text, "label": names[int(label)], "prediction": names[int(pred)]})
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


HEADLINES = {
    "classification": ("eval_accuracy", "eval_f1_macro"),
    "multi_label": ("eval_f1_micro", "eval_f1_macro"),
    "regression": ("eval_mse", "eval_spearman"),
    "token_classification": ("eval_f1", "eval_precision", "eval_recall"),
}


def run(recipe: Recipe, callbacks: list | None = None) -> dict:
    """Fine-tune as the recipe says (the task, stages and LoRA in it); returns the final evaluation metrics.

    ``callbacks`` are extra ``TrainerCallback`` instances, added after the run's own.
    """
    args: SupervisedConfig = recipe.training
    with TrainingRun(recipe, callbacks) as run_:
        tokenizer, raw, tokenized, names, model = build_classifier(recipe)
        run_.log_trainable(model)
        trainer = SupervisedTrainer(
            model=model,
            args=args,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            callbacks=run_.callbacks(),
        )
        train_output = run_.train(trainer)
        output = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
        metrics = {"train_loss": train_output.training_loss, **output.metrics}
        run_dir = Path(args.output_dir)
        export_model(trainer.model, tokenizer, run_dir, merge_lora=recipe.lora.lora_merge_on_export)
        if trainer.is_world_process_zero():
            if args.task == "classification":
                logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
                matrix = confusion_matrix(np.argmax(logits, axis=-1), output.label_ids, len(names))
                plot_confusion(matrix, names, run_dir / "confusion_matrix.png")
            if args.predictions_file:
                write_predictions(run_dir / "predictions.jsonl", recipe, raw["validation"], output, names, tokenizer)
        trainer.log_metrics("eval", metrics)
        return run_.finish(metrics, HEADLINES[args.task], trainer=trainer)


def plot_confusion(matrix, label_names: list[str], path: str | Path) -> Path:
    """Save a confusion matrix (rows: true label, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def card_details(recipe: dict, metrics: dict) -> dict:
    """Model-card fields of a supervised run: the Hub task of its ``training.task``."""
    task = (recipe.get("training") or {}).get("task") or "classification"
    kind = "token-classification" if task == "token_classification" else "text-classification"
    return {"task_type": kind, "task": task}


ENTRY = MethodEntry("supervised", blocks=lambda: BLOCKS, run=run, evaluate=evaluate, card_details=card_details)
