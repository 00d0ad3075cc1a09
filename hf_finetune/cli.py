"""``hf-finetune train|eval|push``: argument parsing and printing only (also ``python -m hf_finetune``).

What the commands do lives in :mod:`hf_finetune.recipe` (train, eval) and :mod:`hf_finetune.hub` (push).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .callbacks import NonFiniteLossError
from .config import build_parser, read_recipe_yaml
from .hub import HubPushError, push_run
from .recipe import METHODS, evaluate_run, load_recipe, method_entry, predict_run, run_recipe

USAGE = """hf-finetune train RECIPE.yaml [--key value ...]   train as the recipe says (CLI values override YAML)
hf-finetune train [RECIPE.yaml] --help            every recipe field with its help text
hf-finetune eval RUN_DIR [--data PATH]             re-evaluate a saved run (on other data with --data)
hf-finetune predict RUN_DIR --data PATH [--output FILE.jsonl|.csv]
                                                  predict new data with a saved run (stdout: JSON lines)
hf-finetune push RUN_DIR --repo-id ORG/NAME [--private] [--revision BRANCH]
                                                  upload a run with a generated model card (token: HF_TOKEN or `hf auth login`)

Methods: {methods}. Recipes live in recipes/; every field of a block is also a --key option."""


def _train_help(argv: list[str]) -> None:
    paths = [a for a in argv if a.endswith((".yaml", ".yml"))]
    method = read_recipe_yaml(paths[0])["method"] if paths else "supervised"
    parser = build_parser(method_entry(method).blocks())
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


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-finetune predict", description="Predict new data with a saved run.")
    parser.add_argument("run_dir", help="a run's output_dir (holds recipe.yaml and the model or adapter)")
    parser.add_argument("--data", required=True, help="a file or folder with the recipe's text column")
    parser.add_argument("--output", help="write the predictions to this .jsonl or .csv file (default: stdout)")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune pretrained language models: supervised, self-supervised and RL.",
        usage=USAGE.format(methods=", ".join(sorted(METHODS))),
    )
    top.add_argument("command", choices=["train", "eval", "predict", "push"], help="what to do")
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
        if command == "predict":
            opts = _predict_parser().parse_args(rest)
            rows = predict_run(opts.run_dir, opts.data, opts.output)
            if opts.output:
                print(f"[hf-finetune] {len(rows)} predictions written to {opts.output}")
            else:
                for row in rows:
                    print(json.dumps(row))
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


def __getattr__(name: str):
    if name == "method_module":  # recipe plumbing lived here before 0.2
        import warnings

        warnings.warn("hf_finetune.cli.method_module is now hf_finetune.recipe.method_entry; the old name goes away "
                      "in 0.3.", DeprecationWarning, stacklevel=2)
        return method_entry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
