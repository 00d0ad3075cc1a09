"""Recipes as a library: which module runs each ``method``, and loading, running and evaluating recipes.

A recipe (a YAML file under ``recipes/``) names its ``method``; :data:`METHODS` maps that word to
the :class:`~hf_finetune.config.MethodEntry` of the method's entry module. The CLI (``cli.py``) only
parses arguments and prints; everything it does goes through the functions here, so Python users
and notebooks get the same behaviour.

Example:
    >>> from hf_finetune.recipe import load_recipe, run_recipe  # doctest: +SKIP
    >>> metrics = run_recipe(load_recipe("recipes/quickstart.yaml", ["--max_steps", "10"]))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

from .config import MethodEntry, Recipe
from .recipe_parsing import parse_recipe, read_recipe_yaml

# Recipe `method` -> "module:ENTRY" of its MethodEntry. A literal dict on purpose: the methods are
# known, adding one is one line here, and the modules are imported only when a recipe uses them.
METHODS: dict[str, str] = {
    "supervised": "hf_finetune.supervised.train:ENTRY",
    "sft": "hf_finetune.supervised.sft_train:ENTRY",
    "self_supervised": "hf_finetune.self_supervised.train:ENTRY",
    "ppo": "hf_finetune.rl.train:PPO_ENTRY",
    "grpo": "hf_finetune.rl.train:GRPO_ENTRY",
    "rloo": "hf_finetune.rl.train:RLOO_ENTRY",
    "rl_env": "hf_finetune.rl_env.train:ENTRY",
}


def method_entry(method: Any) -> MethodEntry:
    """The :class:`MethodEntry` of a recipe ``method``; ``ValueError`` naming the methods otherwise."""
    if not isinstance(method, str) or method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Unknown method {method!r}:{hint} use one of {sorted(METHODS)}.")
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML and apply ``--key value`` overrides; returns a :class:`~hf_finetune.config.Recipe`.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["--num_train_epochs", "1"])  # doctest: +SKIP
    """
    data = read_recipe_yaml(path)
    entry = method_entry(data["method"])
    return parse_recipe(data, entry.blocks(), overrides, source=str(path))


def run_recipe(recipe: Recipe, callbacks: list | None = None) -> dict:
    """Run a loaded recipe with its method and return the final metrics.

    Args:
        recipe: from :func:`load_recipe` (or :func:`~hf_finetune.recipe_parsing.parse_recipe`).
        callbacks: extra ``TrainerCallback`` instances (SB3 ``BaseCallback`` for ``rl_env``) added to the
            method's own.
    """
    return method_entry(recipe.method).run(recipe, callbacks=callbacks)


def evaluate_run(run_dir: str | Path, data: str | None = None) -> dict:
    """Re-evaluate a saved run (full model, LoRA adapter or SB3 agent) as its training run did.

    The run's ``recipe.yaml`` says how the data was built (same seeded split, same label order, same
    held-out env seed); ``data`` replaces the evaluation set with another file or folder. The run's
    method does the evaluation (its :attr:`MethodEntry.evaluate`).

    Args:
        run_dir: the run's ``output_dir``.
        data: optional evaluation file or folder (``data.eval_dataset``).

    Returns:
        The metrics under the same ``eval_*`` names as the run's ``metrics.json``.
    """
    recipe_path, entry = _saved_run(run_dir, "evaluate", "eval")
    if data and entry.args_block != "training":
        raise ValueError(f"--data does not apply to {entry.name!r} runs: they are scored on held-out episodes of their env.")
    with tempfile.TemporaryDirectory() as scratch:
        overrides = _scratch_overrides(entry, scratch) + (["--eval_dataset", data] if data else [])
        return entry.evaluate(load_recipe(str(recipe_path), overrides), str(run_dir))


def _saved_run(run_dir: str | Path, capability: str, command: str) -> tuple[Path, MethodEntry]:
    """A run directory's ``recipe.yaml`` and the entry of its method, which must have ``capability``."""
    recipe_path = Path(run_dir) / "recipe.yaml"
    if not recipe_path.is_file():
        raise ValueError(f"{run_dir} has no recipe.yaml: give the output_dir of a run trained with hf-finetune.")
    entry = method_entry(read_recipe_yaml(recipe_path)["method"])
    if getattr(entry, capability) is None:
        supported = sorted(m for m in METHODS if getattr(method_entry(m), capability) is not None)
        raise ValueError(f"hf-finetune {command} supports {supported} runs; {run_dir} is a {entry.name!r} run.")
    return recipe_path, entry


def _scratch_overrides(entry: MethodEntry, scratch: str) -> list[str]:
    # Re-loading a run's recipe must neither write into the run nor log or push anywhere.
    overrides = ["--output_dir", scratch]
    if entry.args_block == "training":
        overrides += ["--report_to", "none", "--push_to_hub", "false"]
    return overrides


def predict_run(run_dir: str | Path, data: str, output: str | Path | None = None) -> list[dict]:
    """Predict every row of ``data`` with a saved run; write them to ``output`` (``.jsonl`` or ``.csv``) when given.

    The run's ``recipe.yaml`` says which columns hold the text and how long inputs are; its method
    does the predicting (:attr:`MethodEntry.predict`).

    Example:
        >>> rows = predict_run("outputs/quickstart", "new.csv", "predictions.csv")  # doctest: +SKIP
        >>> rows[0]["label"], rows[0]["score"]  # doctest: +SKIP
        ('sport', 0.98)
    """
    recipe_path, entry = _saved_run(run_dir, "predict", "predict")
    if output is not None and Path(output).suffix not in (".jsonl", ".csv"):
        raise ValueError(f"--output {output}: name a .jsonl or .csv file.")
    with tempfile.TemporaryDirectory() as scratch:
        rows = entry.predict(load_recipe(str(recipe_path), _scratch_overrides(entry, scratch)), str(run_dir), data)
    if output is not None:
        write_rows(rows, output)
    return rows


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Rows as JSON lines (``.jsonl``) or CSV (``.csv``; lists and dicts become JSON text in their cell)."""
    import csv
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    else:
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return path
