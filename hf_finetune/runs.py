"""Run-directory conventions shared by every method: safe saving, resolved recipe, metrics, curves.

A run directory holds the model (or adapter) and tokenizer as safetensors, ``recipe.yaml`` (the
resolved recipe), ``metrics.json``, ``training_args.json`` and ``curves.png``; checkpoints live in
``checkpoint-N`` sub-folders as ``Trainer`` writes them.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer import TRAINING_ARGS_NAME

from .callbacks import plot_curves
from .config import REPORT_TO_HELP, Recipe, default_report_to  # noqa: F401 - re-exported for old imports
from .models import save_task_config

logger = logging.getLogger(__name__)


class RunTrainerMixin:
    """What every trainer of ours adds to ``Trainer``: JSON arguments, a correct multi-process loss, log dirs.

    ``Trainer._save`` stores ``torch.save(self.args)``, a pickle that loading would have to trust;
    JSON is readable and ``TrainingArguments.to_dict`` already redacts ``*_token`` fields.

    It also corrects ``model_accepts_loss_kwargs`` for models whose loss ignores
    ``num_items_in_batch`` (see :func:`loss_uses_num_items`): without that, the loss of e.g.
    ``BertForMaskedLM`` or ``BertForSequenceClassification`` is multiplied by the number of
    processes under DDP (and not divided by the gradient-accumulation steps).

    Example:
        >>> class MyTrainer(RunTrainerMixin, Trainer): ...  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "model_accepts_loss_kwargs", False) and not loss_uses_num_items(self.model):
            # Trainer takes any `**kwargs` in forward() as "the model normalises its loss by
            # num_items_in_batch"; with average_tokens_across_devices it then multiplies the loss by
            # the world size, and skips the division by gradient_accumulation_steps. A model that
            # averages its own loss must go through the plain per-batch-mean path instead.
            self.model_accepts_loss_kwargs = False
        for callback in self.callback_handler.callbacks:
            # TensorBoardCallback only picks <output_dir>/runs/... in on_train_begin; an evaluate() or
            # log() before train() (RL runs evaluate the untrained policy) would write to ./runs.
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = Path(output_dir or self.args.output_dir)
        write_args_json(self.args, output_dir)
        if self.args.should_save:
            save_task_config(self.accelerator.unwrap_model(self.model), output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer's mid-run push pickles the arguments into output_dir/training_args.bin and uploads
        # that pickle. With push_to_hub, runs.finish_run pushes the finished run (model, card,
        # metrics) in one commit instead, so checkpoints are not pushed mid-run.
        return None


def loss_uses_num_items(model: Any) -> bool:
    """Whether ``model``'s forward really normalises its loss by the ``num_items_in_batch`` kwarg.

    ``Trainer`` assumes it does whenever forward takes ``**kwargs``; transformers 5 gives nearly every
    model ``**kwargs``, but only those that pass them to a loss taking ``num_items_in_batch`` (the
    causal/masked LM losses of ``transformers.loss``) use it. ``BertForMaskedLM`` builds its own
    ``CrossEntropyLoss()`` and ignores it. Written by hand because transformers has no such check.

    Args:
        model: a ``PreTrainedModel``, optionally wrapped by PEFT.

    Returns:
        True when the loss honours ``num_items_in_batch`` (or when this cannot be told).
    """
    from transformers.loss.loss_utils import LOSS_MAPPING
    from transformers.trainer_utils import unwrap_peft_model

    base = unwrap_peft_model(model)
    if hasattr(base, "accepts_loss_kwargs"):  # the model says so itself: Trainer trusts it, so do we
        return bool(base.accepts_loss_kwargs)
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return True
    if "num_items_in_batch" in source:
        return True
    if "self.loss_function" in source:
        # Mirrors PreTrainedModel.loss_function: an unknown loss_type falls back to ForCausalLMLoss.
        loss_type = getattr(base, "loss_type", None)
        loss_fn = getattr(base, "_loss_function", None) or LOSS_MAPPING.get(loss_type) or LOSS_MAPPING["ForCausalLM"]
        return "num_items_in_batch" in inspect.signature(loss_fn).parameters
    return False


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
    if getattr(training, "hub_token", None):
        raise ValueError(
            "training.hub_token is set: tokens do not belong in recipes (they end up in files and shell history). "
            "Remove it and log in with `hf auth login`, or set the HF_TOKEN environment variable."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and getattr(training, "world_size", launched) == 1:
        # accelerate/torchrun started several workers, but each one would train alone on its own copy.
        raise ValueError(
            f"{launched} processes were launched but training would run in {launched} separate single "
            "processes: on a machine without GPUs set `use_cpu: true` in the training block (or add "
            "`--use_cpu true`) so they join one gloo group; see recipes/accelerate/multi_cpu.yaml."
        )
    if getattr(training, "push_to_hub", False):
        from .hub import check_push_ready

        check_push_ready(getattr(training, "hub_model_id", None) or Path(training.output_dir).name)
    set_seed(training.seed, deterministic=getattr(training, "full_determinism", False))
    run_dir = Path(training.output_dir)
    if getattr(training, "should_save", True):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        from .hub import library_versions

        (run_dir / "versions.json").write_text(json.dumps(library_versions(), indent=2))
    return time.time()


def finish_run(trainer, metrics: dict[str, float], started: float, headline: tuple[str, ...] = ()) -> dict:
    """Write ``metrics.json`` and ``curves.png`` and print the one-line summary of the run."""
    run_dir = Path(trainer.args.output_dir)
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    metrics["train_runtime_s"] = round(time.time() - started, 1)
    metrics["world_size"] = trainer.args.world_size
    trainer.save_state()  # trainer_state.json: the whole log history, for curves and audits
    if trainer.is_world_process_zero():
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        plot_curves(trainer.state.log_history, run_dir / "curves.png")
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), float))
        print(f"[hf-finetune] done in {metrics['train_runtime_s']:.0f}s: {shown or 'no metrics'} | run saved to {run_dir}")
        if trainer.args.push_to_hub:
            # Our push replaces the card Trainer may have pushed with checkpoints by the run's own card.
            from .hub import push_run

            args = trainer.args
            repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or run_dir.name
            url = push_run(run_dir, repo_id, private=args.hub_private_repo, revision=args.hub_revision)
            print(f"[hf-finetune] pushed to {url}")
    return metrics
