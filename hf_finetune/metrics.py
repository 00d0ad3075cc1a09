"""Metrics as ``evaluate`` modules that work offline.

``evaluate.load("accuracy")`` downloads a metric script from the Hub, which fails offline. The
modules here subclass ``evaluate.Metric`` so they keep its interface (``add_batch``, ``compute``,
distributed gathering) and ship inside the package; :func:`load_metric` returns them by name and
falls back to ``evaluate.load`` for any other (Hub) metric name. The numbers themselves are plain
functions (:func:`classification_scores`, :func:`seqeval_scores`) that training runs call directly:
the ``evaluate`` modules are built, and ``evaluate`` imported, only when one is asked for.
"""

from __future__ import annotations

import numpy as np

_CITATION = ""
_MODULE_NAMES = ("ClassificationMetric", "AccuracyMetric", "SeqevalMetric", "BUILTIN_METRICS")
_modules: dict | None = None


def classification_scores(predictions, references, num_labels=None, label_names=None) -> dict:
    """Accuracy, macro precision/recall/F1 and per-class F1 of class ids (what ``ClassificationMetric`` computes).

    Example:
        >>> classification_scores([0, 1, 1], [0, 1, 0], num_labels=2)["accuracy"]
        0.6666666666666666
    """
    pred = np.asarray(predictions, dtype=np.int64)
    ref = np.asarray(references, dtype=np.int64)
    n = num_labels or int(max(pred.max(initial=0), ref.max(initial=0)) + 1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (ref, pred), 1)
    tp = np.diag(confusion).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / confusion.sum(axis=0))
        recall = np.nan_to_num(tp / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    names = label_names or [str(i) for i in range(n)]
    result = {
        "accuracy": float(tp.sum() / max(len(ref), 1)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
    }
    result.update({f"f1_{name}": float(v) for name, v in zip(names, f1)})
    return result


def bio_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entity chunks ``(type, start, end_inclusive)`` of a BIO/IOB2 tag sequence, with conlleval rules.

    As in ``seqeval``'s default mode (and the CoNLL ``conlleval`` script): an ``I-X`` that follows
    ``O`` or a different type starts a new entity instead of being dropped.
    """
    entities = []
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = start is not None and (prefix in ("B", "O") or label != kind)
        if ends:
            entities.append((kind, start, i - 1))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, label
    return entities


def seqeval_scores(predictions, references) -> dict:
    """Entity-level P/R/F1 and token accuracy of BIO tag sequences (what ``SeqevalMetric`` computes)."""
    true, pred = set(), set()
    correct_tokens = total_tokens = 0
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise ValueError(f"Sequence {i}: {len(p)} predicted tags for {len(r)} reference tags.")
        true |= {(i, *e) for e in bio_entities(r)}
        pred |= {(i, *e) for e in bio_entities(p)}
        correct_tokens += sum(a == b for a, b in zip(p, r))
        total_tokens += len(r)

    def prf(t: set, q: set) -> tuple[float, float, float]:
        hit = len(t & q)
        precision = hit / len(q) if q else 0.0
        recall = hit / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    result = {}
    for kind in sorted({e[1] for e in true | pred}):
        t = {e for e in true if e[1] == kind}
        q = {e for e in pred if e[1] == kind}
        precision, recall, f1 = prf(t, q)
        result[kind] = {"precision": precision, "recall": recall, "f1": f1, "number": len(t)}
    precision, recall, f1 = prf(true, pred)
    result.update(
        overall_precision=precision,
        overall_recall=recall,
        overall_f1=f1,
        overall_accuracy=correct_tokens / total_tokens if total_tokens else 0.0,
    )
    return result


def _build_modules() -> dict:
    """The ``evaluate`` modules, defined on first use: ``import evaluate`` takes ~1 s (it imports
    ``transformers.pipelines`` and ``scipy.stats``), which runs that only need the numbers (the
    ``compute_metrics`` of :mod:`hf_finetune.supervised.tasks`) should not pay."""
    import datasets
    import evaluate

    class ClassificationMetric(evaluate.Metric):
        """Accuracy with precision, recall and F1 (macro and per class) for single-label classification.

        Example:
            >>> ClassificationMetric().compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)["accuracy"]
            0.6666666666666666
        """

        def _info(self):
            return evaluate.MetricInfo(
                description="Accuracy, macro precision/recall/F1 and per-class F1.",
                citation=_CITATION,
                inputs_description="predictions and references: class ids.",
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions, references, num_labels=None, label_names=None):
            return classification_scores(predictions, references, num_labels, label_names)


    class AccuracyMetric(ClassificationMetric):
        """Accuracy alone, under the name users know from ``evaluate.load("accuracy")``."""

        def _compute(self, predictions, references, **kwargs):
            return {"accuracy": super()._compute(predictions, references, **kwargs)["accuracy"]}


    class SeqevalMetric(evaluate.Metric):
        """Entity-level precision, recall and F1 (seqeval / conlleval semantics) for BIO tag sequences, offline.

        Returns the keys of the Hub's ``seqeval`` metric: ``overall_precision``, ``overall_recall``,
        ``overall_f1``, ``overall_accuracy`` (per token) and one ``{precision, recall, f1, number}`` dict
        per entity type.

        Example:
            >>> refs = [["B-PER", "I-PER", "O", "B-LOC"]]
            >>> SeqevalMetric().compute(predictions=[["B-PER", "I-PER", "O", "O"]], references=refs)["overall_f1"]
            0.6666666666666666
        """

        def _info(self):
            return evaluate.MetricInfo(
                description="Entity-level P/R/F1 with conlleval chunking (seqeval default mode).",
                citation=_CITATION,
                inputs_description="predictions and references: lists of BIO tag sequences (strings).",
                features=datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("string")),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            )

        def _compute(self, predictions, references):
            return seqeval_scores(predictions, references)

    built = {"ClassificationMetric": ClassificationMetric, "AccuracyMetric": AccuracyMetric,
             "SeqevalMetric": SeqevalMetric}
    for name, cls in built.items():  # importable and picklable as hf_finetune.metrics.<name>
        cls.__module__, cls.__qualname__ = __name__, name
    # The offline metric modules, by the names users pass to evaluate.load().
    built["BUILTIN_METRICS"] = {"accuracy": AccuracyMetric, "classification": ClassificationMetric,
                                "f1": ClassificationMetric, "seqeval": SeqevalMetric}
    return built


def __getattr__(name: str):
    global _modules
    if name in _MODULE_NAMES:
        if _modules is None:
            _modules = _build_modules()
            globals().update(_modules)
        return _modules[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_metric(name: str, **kwargs):
    """An offline ``evaluate`` module for the names in ``BUILTIN_METRICS``, else ``evaluate.load(name)``."""
    cls = __getattr__("BUILTIN_METRICS").get(name)
    if cls is not None:
        return cls(**kwargs)
    import evaluate

    return evaluate.load(name, **kwargs)


def confusion_matrix(predictions, references, num_labels: int) -> np.ndarray:
    """Counts of (true label, predicted label) pairs."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(references), np.asarray(predictions)), 1)
    return matrix

