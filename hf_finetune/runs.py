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


def _args_of(recipe: Recipe) -> Any:
    """The block with ``output_dir``, seed and push settings: ``training`` (Trainer methods) or ``agent`` (SB3)."""
    blocks = recipe.blocks
    return blocks["training"] if "training" in blocks else blocks["agent"]


def _is_main_process(args: Any) -> bool:
    return bool(getattr(args, "should_save", True))


class TrainingRun:
    """The one run skeleton of every method, SB3 agents included.

    Entering checks what would make the run fail at its end (a token in the recipe, a push that could
    not happen, several launched processes that would not form one group), seeds everything and
    writes ``recipe.yaml`` and ``versions.json``; :meth:`callbacks` puts the non-finite guard and the
    caller's extra callbacks beside the method's own; :meth:`train` trains or resumes;
    :meth:`finish` writes ``metrics.json``, ``curves.png`` and the ``README.md`` model card (the one
    card code of :mod:`hf_finetune.hub`), prints the summary line and pushes when asked.

    Example:
        >>> with TrainingRun(recipe, callbacks=extra) as run:  # doctest: +SKIP
        ...     trainer = MyTrainer(model, run.args, train_dataset=ds, callbacks=run.callbacks())
        ...     run.train(trainer)
        ...     metrics = run.finish(trainer.evaluate(), headline=("eval_loss",), trainer=trainer)
    """

    def __init__(self, recipe: Recipe, callbacks: list | None = None) -> None:
        self.recipe = recipe
        self.args = _args_of(recipe)
        self.run_dir = Path(self.args.output_dir)
        self.extra_callbacks = list(callbacks or [])
        self.started = time.time()
        self.trainable: int | None = None

    def __enter__(self) -> TrainingRun:
        self.started = start_run(self.recipe)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False  # errors propagate; what a failed run leaves behind is decided in start_run/finish

    def callbacks(self, *own: Any, guard: bool = True) -> list:
        """The run's callbacks: the non-finite guard (Trainer methods), the method's ``own``, then the caller's."""
        from .callbacks import NonFiniteGuardCallback

        early = []
        patience = getattr(self.args, "early_stopping_patience", None)
        if patience is not None:  # the field and its checks: supervised.config.EarlyStoppingArguments
            from transformers import EarlyStoppingCallback

            early = [EarlyStoppingCallback(patience, getattr(self.args, "early_stopping_threshold", 0.0))]
        return [*([NonFiniteGuardCallback()] if guard else []), *own, *early, *self.extra_callbacks]

    def log_trainable(self, model: Any, what: str = "") -> int:
        """Log and remember how many parameters train (``metrics['trainable_parameters']``)."""
        from .models import trainable_parameters

        trainable, total = trainable_parameters(model)
        logger.info("%sTrainable parameters: %d of %d (%.2f%%)", what, trainable, total, 100 * trainable / max(total, 1))
        self.trainable = trainable
        return trainable

    def train(self, trainer: Any):
        """``trainer.train``, resuming from ``resume_from_checkpoint`` when the recipe says so."""
        return trainer.train(resume_from_checkpoint=getattr(self.args, "resume_from_checkpoint", None))

    def finish(
        self,
        metrics: dict[str, Any],
        headline: tuple[str, ...] = (),
        trainer: Any = None,
        log_history: list[dict] | None = None,
        curve_keys: tuple[str, ...] = ("loss", "eval_loss"),
    ) -> dict:
        """Write the run's results and card, print the summary line, push when asked; returns the metrics.

        Args:
            metrics: final metrics (``eval_*`` numbers go to the card's ``model-index``).
            headline: metric names shown in the summary line.
            trainer: the ``Trainer`` (its state, world size and arguments are saved); ``None`` for SB3.
            log_history: logged entries for ``curves.png`` when there is no trainer.
            curve_keys: logged keys to plot.
        """
        metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        if self.trainable is not None:
            metrics.setdefault("trainable_parameters", self.trainable)
        metrics["train_runtime_s"] = round(time.time() - self.started, 1)
        metrics["world_size"] = getattr(self.args, "world_size", 1)
        main = _is_main_process(self.args)
        if trainer is not None:
            trainer.save_state()  # trainer_state.json: the whole log history, for curves and audits
            write_args_json(self.args, self.run_dir)
            log_history = trainer.state.log_history
            main = trainer.is_world_process_zero()
        if not main:
            return metrics
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_results_files(self.run_dir, metrics)
        plot_curves(log_history or [], self.run_dir / "curves.png", keys=curve_keys)
        from .hub import write_card

        write_card(self.run_dir)
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), float))
        print(f"[hf-finetune] done in {metrics['train_runtime_s']:.0f}s: {shown or 'no metrics'} | run saved to {self.run_dir}")
        if getattr(self.args, "push_to_hub", False):
            from .hub import push_run

            args = self.args
            repo_id = getattr(args, "hub_model_id", None) or self.run_dir.name
            url = push_run(self.run_dir, repo_id, private=getattr(args, "hub_private_repo", None),
                           revision=getattr(args, "hub_revision", None))
            metrics["hub_commit_url"] = url
            print(f"[hf-finetune] pushed to {url}")
        return metrics


def write_results_files(run_dir: Path, metrics: dict[str, Any]) -> None:
    """``train_results.json``, ``eval_results.json``, ``test_results.json`` and ``all_results.json``.

    Where ``run_glue.py``/``run_ner.py`` users look (``Trainer.save_metrics`` writes the same files);
    ``metrics.json`` keeps everything, run facts included.
    """
    combined = {}
    for split in ("train", "eval", "test"):
        part = {k: v for k, v in metrics.items() if k.startswith(f"{split}_")}
        if part:
            (run_dir / f"{split}_results.json").write_text(json.dumps(part, indent=4, sort_keys=True))
            combined.update(part)
    if combined:
        (run_dir / "all_results.json").write_text(json.dumps(combined, indent=4, sort_keys=True))


def check_report_to(args: Any) -> None:
    """Fail before the model loads when ``report_to`` names a logger that is not installed."""
    wanted = getattr(args, "report_to", None) or []
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    if not wanted or wanted in (["none"], ["all"]):
        return
    from transformers.integrations import get_available_reporting_integrations

    missing = sorted(set(wanted) - set(get_available_reporting_integrations()) - {"none", "all"})
    if missing:
        extras = {"wandb": "pip install 'hf-finetune[wandb]' (or pip install wandb)",
                  "tensorboard": "pip install 'hf-finetune[logging]' (or pip install tensorboard)"}
        how = "; ".join(extras.get(name, f"pip install {name}") for name in missing)
        raise ValueError(f"training.report_to names {missing}, not installed here: {how}, "
                         "or set training.report_to: none.")


def start_run(recipe: Recipe) -> float:
    """Checks, seeds and ``recipe.yaml``/``versions.json`` of a run (what entering :class:`TrainingRun` does)."""
    training = _args_of(recipe)
    check_report_to(training)
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
    if _is_main_process(training):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        from .hub import library_versions

        (run_dir / "versions.json").write_text(json.dumps(library_versions(), indent=2))
    return time.time()


def plot_curves(log_history: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss", "eval_loss")) -> Path | None:
    """Plot logged values against the step as a PNG; returns the path, or None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(e["step"], e[k]) for e in log_history if k in e and "step" in e] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=key)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
