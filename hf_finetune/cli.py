"""``hf-finetune train|eval|push``: argument parsing and printing only (also ``python -m hf_finetune``).

What the commands do lives in :mod:`hf_finetune.recipe` (train, eval) and :mod:`hf_finetune.hub` (push).
"""

from __future__ import annotations

import argparse
import difflib
import gc
import json
import logging
import os
import re
import sys

from .callbacks import NonFiniteLossError
from .hub import HubPushError, push_run
from .recipe import METHODS, evaluate_run, load_recipe, method_entry, predict_run, run_recipe
from .recipe_parsing import build_parser, read_recipe_yaml

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
    parser = _Parser(prog="hf-finetune eval", description="Re-evaluate a saved run.")
    parser.add_argument("run_dir", help="a run's output_dir (holds recipe.yaml and the model or adapter)")
    parser.add_argument("--data", help="evaluate on this file or folder instead of the run's validation split")
    return parser


def _predict_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-finetune predict", description="Predict new data with a saved run.")
    parser.add_argument("run_dir", help="a run's output_dir (holds recipe.yaml and the model or adapter)")
    parser.add_argument("--data", required=True, help="a file or folder with the recipe's text column")
    parser.add_argument("--output", help="write the predictions to this .jsonl or .csv file (default: stdout)")
    return parser


def _push_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hf-finetune push",
        description="Upload a run (model or adapter, tokenizer, recipe, metrics, curves) with a generated model "
        "card. The token comes from HF_TOKEN or `hf auth login`, never from a file.",
    )
    parser.add_argument("run_dir", help="a finished run's output_dir")
    parser.add_argument("--repo-id", required=True, help="'name' or 'org/name'; created when missing")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created when missing); default main")
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``ValueError`` (one line, with "did you mean") instead of printing usage and exiting.

    Prefixes of options are not accepted (``--dat`` is a typo, not ``--data``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):  # noqa: D102 - argparse hook
        unknown = message.split("unrecognized arguments: ", 1)
        if len(unknown) == 2:
            options = [o for a in self._actions for o in a.option_strings]
            flags = [w for w in unknown[1].split() if w.startswith("-")]
            hint = difflib.get_close_matches(flags[0].split("=")[0], options, n=1) if flags else []
            if hint:
                message += f" (did you mean {hint[0]}?)"
        raise ValueError(f"{self.prog}: {message}. See `{self.prog} --help`.")


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(err: BaseException) -> tuple[str, int]:
    """``(message, exit code)`` for an error of a run: what went wrong and how to fix it, on one line."""
    if isinstance(err, KeyboardInterrupt):
        return ("interrupted — a finished run in output_dir is untouched; this run's checkpoints are in "
                "<output_dir>.partial: add --resume_from_checkpoint last to continue it", 130)
    if isinstance(err, HubPushError):  # training (if any) finished; the upload did not
        return _one_line(err), 1
    if isinstance(err, (ValueError, NonFiniteLossError)):
        return _one_line(err), 2
    if isinstance(err, ImportError):
        name = getattr(err, "name", None) or "a package"
        return _one_line(f"{err} — install {name} (pip install 'hf-finetune[all]' installs every extra)"), 2
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return _one_line(f"out of memory ({err}) — lower per_device_train_batch_size or max_length, or use lora"), 2
    if isinstance(err, OSError) and "Repo id must" in str(err):
        # transformers tries a missing local folder as a Hub id and reports the id's syntax
        name = re.findall(r"'([^']+)'\.?(?: Use|$)", str(err)) or re.findall(r": '([^']+)'", str(err)) or ["the model"]
        return _one_line(f"{name[-1]}: no such local folder, and not a valid Hub id — check model.model_name_or_path "
                         "(and tokenizer_name_or_path): a local path must exist, a Hub id is 'name' or 'org/name'"), 2
    if isinstance(err, OSError):
        what = err.strerror or str(err)
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        fix = ("check the path, its permissions and free disk space; for a Hub id check the name, your network "
               "(HF_HUB_OFFLINE=1 allows only local and cached files) and `hf auth login` for gated repos")
        return _one_line(f"{type(err).__name__}: {what}{where} — {fix}"), 2
    if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3", "huggingface_hub"):
        return _one_line(f"network: {err} — check the connection, HF_ENDPOINT and the repo id"), 2
    return (_one_line(f"{type(err).__name__}: {err} — unexpected; rerun with HF_FINETUNE_DEBUG=1 for the traceback "
                      "and report it"), 1)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a user error, 130 for Ctrl-C)."""
    finished = False
    try:
        code = _main(argv)
        finished = code == 0
        return code
    except BrokenPipeError:
        # The reader of our output went away (`hf-finetune train --help | head`): not an error of
        # the run. Exit as a process killed by SIGPIPE does, without a message, and keep Python's
        # final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BaseException as err:
        if isinstance(err, SystemExit) or os.environ.get("HF_FINETUNE_DEBUG"):
            raise
        message, code = _describe(err)
        print(f"hf-finetune: error: {message}", file=sys.stderr)
        return code
    finally:
        _close_process_group(finished)


def _close_process_group(finished: bool = False) -> None:
    # A process that exits with its gloo group still open can abort in interpreter teardown
    # ("terminate called without an active exception", SIGABRT: pytorch/pytorch#190489), turning
    # a finished, saved `accelerate launch` run into a failed launch. Trainer never destroys it.
    # The DDP wrapper and reducer of the finished trainer still hold the group: collect them
    # first, so they are not freed in teardown, after the group is gone. After a finished run
    # every rank also waits for the others, so no rank closes its side of the group while another
    # is still in a collective; after a failure the others may never arrive, so it does not wait.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        gc.collect()
        if finished and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _main(argv: list[str] | None = None) -> int:
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
    hint = difflib.get_close_matches(command, ["train", "eval", "predict", "push"], n=1)
    raise ValueError(f"unknown command {command!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}: "
                     "use train, eval, predict or push (hf-finetune --help).")


def __getattr__(name: str):
    if name == "method_module":  # recipe plumbing lived here before 0.2
        import warnings

        warnings.warn("hf_finetune.cli.method_module is now hf_finetune.recipe.method_entry; the old name goes away "
                      "in 0.3.", DeprecationWarning, stacklevel=2)
        return method_entry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
