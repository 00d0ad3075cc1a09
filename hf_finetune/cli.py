"""``hf-finetune train|eval|push``: the command line (also ``python -m hf_finetune``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .callbacks import NonFiniteLossError
from .config import build_parser, parse_recipe, read_recipe_yaml

# Recipe `method` -> module with `blocks(method) -> {block name: dataclass}` and `run(recipe)`.
# A literal dict on purpose: the methods are known, and adding one is one line here.
METHODS = {
    "supervised": "hf_finetune.supervised.train",
    "self_supervised": "hf_finetune.self_supervised.train",
    "rl_env": "hf_finetune.rl.agents.train",
    "ppo": "hf_finetune.rl.train",
    "grpo": "hf_finetune.rl.train",
    "rloo": "hf_finetune.rl.train",
}

USAGE = """hf-finetune train RECIPE.yaml [--key value ...]   train as the recipe says (CLI values override YAML)
hf-finetune train [RECIPE.yaml] --help            every recipe field with its help text

Methods: {methods}. Recipes live in recipes/; every field of a block is also a --key option."""


def method_module(method: str):
    """Import the module that implements a recipe ``method``."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {sorted(METHODS)}.")
    return importlib.import_module(METHODS[method])


def load_recipe(path: str, overrides: list[str] | None = None):
    """Read a recipe YAML and apply ``--key value`` overrides; returns a :class:`~hf_finetune.config.Recipe`.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["--num_train_epochs", "1"])  # doctest: +SKIP
    """
    data = read_recipe_yaml(path)
    module = method_module(data["method"])
    return parse_recipe(data, module.blocks(data["method"]), overrides, source=str(path))


def run_recipe(recipe) -> dict:
    """Run a loaded recipe with its method and return the final metrics."""
    return method_module(recipe.method).run(recipe)


def _train_help(argv: list[str]) -> None:
    paths = [a for a in argv if a.endswith((".yaml", ".yml"))]
    method = read_recipe_yaml(paths[0])["method"] if paths else "supervised"
    parser = build_parser(method_module(method).blocks(method))
    parser.prog = f"hf-finetune train RECIPE.yaml  (method: {method})"
    parser.print_help()
    if not paths:
        print(f"\nShown: the fields of method 'supervised'. Other methods: {sorted(METHODS)}; "
              "`hf-finetune train RECIPE.yaml --help` shows the fields of that recipe's method.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune pretrained language models: supervised, self-supervised and RL.",
        usage=USAGE.format(methods=", ".join(sorted(METHODS))),
    )
    top.add_argument("command", choices=["train"], help="what to do")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_finetune").setLevel(logging.INFO)
    try:
        if command == "train":
            if "-h" in rest or "--help" in rest:
                _train_help(rest)
                return 0
            if not rest or rest[0].startswith("-"):
                raise ValueError("train needs a recipe: hf-finetune train RECIPE.yaml [--key value ...]")
            run_recipe(load_recipe(rest[0], rest[1:]))
            return 0
        top.error(f"unknown command {command!r}")
    except (ValueError, NonFiniteLossError) as err:
        if os.environ.get("HF_FINETUNE_DEBUG"):
            raise
        print(f"hf-finetune: error: {err}", file=sys.stderr)
        return 2
    return 0
