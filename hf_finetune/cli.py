"""``hf-finetune train|eval|push``: the command line (also ``python -m hf_finetune``)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from .callbacks import NonFiniteLossError
from .config import build_parser, parse_recipe, read_recipe_yaml
from .hub import HubPushError, push_run

# Recipe `method` -> module with `blocks(method) -> {block name: dataclass}` and `run(recipe)`.
# A literal dict on purpose: the methods are known, and adding one is one line here.
METHODS = {
    "supervised": "hf_finetune.supervised.train",
    "sft": "hf_finetune.supervised.sft_trainer",
    "self_supervised": "hf_finetune.self_supervised.train",
    "rl_env": "hf_finetune.rl_env.train",
    "ppo": "hf_finetune.rl.train",
    "grpo": "hf_finetune.rl.train",
    "rloo": "hf_finetune.rl.train",
}

USAGE = """hf-finetune train RECIPE.yaml [--key value ...]   train as the recipe says (CLI values override YAML)
hf-finetune train [RECIPE.yaml] --help            every recipe field with its help text
hf-finetune eval RUN_DIR [--data PATH]             re-evaluate a saved run (on other data with --data)
hf-finetune push RUN_DIR --repo-id ORG/NAME [--private] [--revision BRANCH]
                                                  upload a run with a generated model card (token: HF_TOKEN or `hf auth login`)

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


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-finetune eval", description="Re-evaluate a saved run.")
    parser.add_argument("run_dir", help="a run's output_dir (holds recipe.yaml and the model or adapter)")
    parser.add_argument("--data", help="evaluate on this file or folder instead of the run's validation split")
    return parser


def _push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-finetune push",
        description="Upload a run (model or adapter, tokenizer, recipe, metrics, curves) with a generated model "
        "card. The token comes from HF_TOKEN or `hf auth login`, never from a file.",
    )
    parser.add_argument("run_dir", help="a finished run's output_dir")
    parser.add_argument("--repo-id", required=True, help="'name' or 'org/name'; created when missing")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created when missing); default main")
    return parser


def evaluate_run(run_dir: str, data: str | None = None) -> dict:
    """Re-evaluate a saved run (full model or LoRA adapter) as its training run did.

    The run's ``recipe.yaml`` says how the data was built (same seeded split, same label order);
    ``data`` replaces the evaluation set with another file or folder. The run's method does the
    evaluation (its module's ``evaluate(recipe, run_dir)``).

    Args:
        run_dir: the run's ``output_dir``.
        data: optional evaluation file or folder (``data.eval_dataset``).

    Returns:
        The metrics under the same ``eval_*`` names as the run's ``metrics.json``.
    """
    import tempfile
    from pathlib import Path

    recipe_path = Path(run_dir) / "recipe.yaml"
    if not recipe_path.is_file():
        raise ValueError(f"{run_dir} has no recipe.yaml: give the output_dir of a run trained with hf-finetune.")
    method = read_recipe_yaml(recipe_path)["method"]
    module = method_module(method)
    if not hasattr(module, "evaluate"):
        supported = sorted(m for m in METHODS if hasattr(method_module(m), "evaluate"))
        raise ValueError(f"hf-finetune eval supports {supported} runs; {run_dir} is a {method!r} run.")
    with tempfile.TemporaryDirectory() as scratch:
        overrides = ["--output_dir", scratch, "--report_to", "none", "--push_to_hub", "false"]
        if data:
            overrides += ["--eval_dataset", data]
        return module.evaluate(load_recipe(str(recipe_path), overrides), run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune pretrained language models: supervised, self-supervised and RL.",
        usage=USAGE.format(methods=", ".join(sorted(METHODS))),
    )
    top.add_argument("command", choices=["train", "eval", "push"], help="what to do")
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
        if command == "eval":
            opts = _eval_parser().parse_args(rest)
            metrics = evaluate_run(opts.run_dir, data=opts.data)
            print(json.dumps(metrics, indent=2, sort_keys=True))
            return 0
        if command == "push":
            opts = _push_parser().parse_args(rest)
            url = push_run(opts.run_dir, opts.repo_id, private=opts.private or None, revision=opts.revision)
            print(f"[hf-finetune] pushed {opts.run_dir} to {url}")
            return 0
        top.error(f"unknown command {command!r}")
    except HubPushError as err:  # training (if any) finished; the upload did not
        print(f"hf-finetune: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, NonFiniteLossError) as err:
        if os.environ.get("HF_FINETUNE_DEBUG"):
            raise
        print(f"hf-finetune: error: {err}", file=sys.stderr)
        return 2
    return 0
