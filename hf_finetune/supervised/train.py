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
    if getattr(recipe.training, "do_predict", False) and not (data.test_dataset or data.test_split):
        raise ValueError("training.do_predict scores a test set at the end: give data.test_dataset (a file or "
                         "folder) or data.test_split (a split of data.dataset).")
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


def predict(recipe: Recipe, run_dir: str, data: str) -> list[dict]:
    """Predictions of the model (or adapter) in ``run_dir`` for every row of ``data``, in the task's terms.

    ``data`` is a file or folder as ``data.dataset`` takes; it needs the recipe's text column (a label
    column, when there, is copied as ``reference``). Rows come back in file order: ``label`` and
    ``score`` (classification, as ``pipeline("text-classification")`` gives them), ``labels``
    (multi-label, at ``multi_label_threshold``), ``prediction`` (regression) or ``tags`` per word
    (token classification; a text cell is split on whitespace).
    """
    import torch

    from ..data import load_source, require_columns

    args, data_args = recipe.training, recipe.data
    task = args.task
    auto_class = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = load_trained(run_dir, auto_class).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    rows_in = load_source(data)["train"]
    require_columns(rows_in, [data_args.text_column, data_args.text_pair_column], f"{data}")
    has_reference = data_args.label_column in rows_in.column_names
    out: list[dict] = []
    batch_size = args.per_device_eval_batch_size
    for start in range(0, len(rows_in), batch_size):
        batch = rows_in[start:start + batch_size]
        texts = batch[data_args.text_column]
        if task == "token_classification":
            words = [t.split() if isinstance(t, str) else list(t) for t in texts]
            encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=data_args.max_length,
                                padding=True, return_tensors="pt")
        else:
            pairs = batch[data_args.text_pair_column] if data_args.text_pair_column else None
            encoded = tokenizer([t or "" for t in texts], pairs, truncation=True, max_length=data_args.max_length,
                                padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits.float()
        for i, text in enumerate(texts):
            row: dict = {"text": text}
            if task == "token_classification":
                row = {"tokens": words[i], "tags": word_predictions(logits[i:i + 1].numpy(), [words[i]], tokenizer,
                                                                     data_args.max_length, names)[0]}
            elif task == "multi_label":
                probs = torch.sigmoid(logits[i])
                row["labels"] = [names[j] for j in range(len(names)) if probs[j] >= args.multi_label_threshold]
                row["scores"] = {names[j]: round(float(probs[j]), 6) for j in range(len(names))}
            elif task == "regression":
                row["prediction"] = float(logits[i].reshape(-1)[0])
            else:
                probs = torch.softmax(logits[i], dim=-1)
                row["label"], row["score"] = names[int(probs.argmax())], round(float(probs.max()), 6)
            if has_reference:
                row["reference"] = batch[data_args.label_column][i]
            out.append(row)
    return out


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
        test = None
        if "test" in tokenized:  # data.test_dataset / test_split: scored once, at the end
            test = trainer.predict(tokenized["test"], metric_key_prefix="test")
            metrics.update(test.metrics)
        run_dir = Path(args.output_dir)
        if args.task == "classification":  # on the run's writer thread, while the model is saved
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            run_.in_background("confusion_matrix.png", plot_confusion_of, np.argmax(logits, axis=-1),
                               output.label_ids, names, run_dir / "confusion_matrix.png")
        export_model(trainer.model, tokenizer, run_dir, merge_lora=recipe.lora.lora_merge_on_export)
        if trainer.is_world_process_zero():
            if args.predictions_file:
                write_predictions(run_dir / "predictions.jsonl", recipe, raw["validation"], output, names, tokenizer)
                if test is not None:
                    write_predictions(run_dir / "test_predictions.jsonl", recipe, raw["test"], test, names, tokenizer)
        trainer.log_metrics("eval", metrics)
        return run_.finish(metrics, HEADLINES[args.task], trainer=trainer)


MAX_CONFUSION_CLASSES = 20  # a bigger matrix is unreadable, and its n^2 cell labels took > 5 GB at 600 classes


def plot_confusion_of(predictions, references, names: list[str], path: str | Path) -> Path | None:
    """The confusion-matrix PNG of a run; beyond :data:`MAX_CONFUSION_CLASSES` classes, the most confused ones.

    An optional artefact: the full matrix is never built for many classes (10,000 classes would be
    800 MB), and a failure only logs a warning, so the run still ends with its metrics.
    """
    try:
        predictions, references = np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1)
        n = len(names)
        if n <= MAX_CONFUSION_CLASSES:
            return plot_confusion(confusion_matrix(predictions, references, n), names, path)
        wrong = predictions != references
        errors = np.bincount(references[wrong], minlength=n) + np.bincount(predictions[wrong], minlength=n)
        keep = np.argsort(-errors, kind="stable")[:MAX_CONFUSION_CLASSES]
        index = np.full(n, -1, dtype=np.int64)
        index[keep] = np.arange(len(keep))
        both = (index[references] >= 0) & (index[predictions] >= 0)
        matrix = confusion_matrix(index[predictions[both]], index[references[both]], len(keep))
        title = f"the {len(keep)} most confused of {n} classes"
        return plot_confusion(matrix, [names[i] for i in keep], path, title=title)
    except Exception as err:  # noqa: BLE001 - optional artefact
        logging.getLogger(__name__).warning("confusion_matrix.png not written: %s", err)
        return None


def plot_confusion(matrix, label_names: list[str], path: str | Path, title: str | None = None) -> Path:
    """Save a confusion matrix (rows: true label, columns: prediction) as a PNG.

    matplotlib's ``Figure`` without ``pyplot``: safe on the run's writer thread, and a notebook keeps
    its own backend.
    """
    from matplotlib.figure import Figure

    n = len(label_names)
    fig = Figure(figsize=(min(1.2 * n + 2, 14), min(1.2 * n + 1.5, 14)))
    ax = fig.subplots()
    if title:
        ax.set_title(title)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=10 if n <= 10 else 7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def card_details(recipe: dict, metrics: dict) -> dict:
    """Model-card fields of a supervised run: the Hub task of its ``training.task``."""
    task = (recipe.get("training") or {}).get("task") or "classification"
    kind = "token-classification" if task == "token_classification" else "text-classification"
    return {"task_type": kind, "task": task}


ENTRY = MethodEntry("supervised", blocks=lambda: BLOCKS, run=run, evaluate=evaluate, predict=predict,
                    card_details=card_details)
