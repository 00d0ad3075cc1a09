"""Run-directory conventions shared by every method: safe saving, resolved recipe, metrics, curves.

A run directory holds the model (or adapter) and tokenizer as safetensors, ``recipe.yaml`` (the
resolved recipe), ``metrics.json``, ``training_args.json`` and ``curves.png``; checkpoints live in
``checkpoint-N`` sub-folders as ``Trainer`` writes them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed
from transformers.trainer import TRAINING_ARGS_NAME

from .callbacks import plot_curves
from .config import Recipe

logger = logging.getLogger(__name__)


class SafeSaveMixin:
    """Mix into a ``Trainer`` subclass: write ``training_args.json`` instead of the pickled ``.bin``.

    ``Trainer._save`` stores ``torch.save(self.args)``, a pickle that loading would have to trust;
    JSON is readable and ``TrainingArguments.to_dict`` already redacts ``*_token`` fields.

    Example:
        >>> class MyTrainer(SafeSaveMixin, Trainer): ...  # doctest: +SKIP
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        write_args_json(self.args, Path(output_dir or self.args.output_dir))


def write_args_json(args: Any, output_dir: Path) -> None:
    """Replace ``training_args.bin`` in ``output_dir`` with ``training_args.json``."""
    if not getattr(args, "should_save", True):
        return
    (output_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "training_args.json").write_text(args.to_json_string())


def start_run(recipe: Recipe) -> float:
    """Seed everything and write the resolved recipe before training, so a crashed run is reproducible."""
    training = recipe.training
    set_seed(training.seed, deterministic=getattr(training, "full_determinism", False))
    run_dir = Path(training.output_dir)
    if getattr(training, "should_save", True):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return time.time()


def finish_run(trainer, metrics: dict[str, float], started: float, headline: tuple[str, ...] = ()) -> dict:
    """Write ``metrics.json`` and ``curves.png`` and print the one-line summary of the run."""
    run_dir = Path(trainer.args.output_dir)
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    metrics["train_runtime_s"] = round(time.time() - started, 1)
    if trainer.is_world_process_zero():
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        plot_curves(trainer.state.log_history, run_dir / "curves.png")
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), float))
        print(f"[hf-finetune] done in {metrics['train_runtime_s']:.0f}s: {shown or 'no metrics'} | run saved to {run_dir}")
    return metrics
