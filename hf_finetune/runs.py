"""The one run skeleton of every method (:class:`TrainingRun`) and the run-directory conventions.

A run directory holds the model (or adapter) and tokenizer as safetensors, ``recipe.yaml`` (the
resolved recipe), ``versions.json``, ``metrics.json`` and the ``*_results.json`` files,
``training_args.json``, ``curves.png`` and the ``README.md`` card; checkpoints live in
``checkpoint-N`` sub-folders (see :mod:`hf_finetune.trainer_mixin` for how they are written)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed

from .config import Recipe
from .trainer_mixin import RunTrainerMixin, loss_uses_num_items, write_args_json  # noqa: F401 - their old home

logger = logging.getLogger(__name__)


def _args_of(recipe: Recipe) -> Any:
    """The block with ``output_dir``, seed and push settings: ``training`` (Trainer methods) or ``agent`` (SB3)."""
    blocks = recipe.blocks
    return blocks["training"] if "training" in blocks else blocks["agent"]


def _is_main_process(args: Any) -> bool:
    return bool(getattr(args, "should_save", True))


class TrainingRun:
    """The one run skeleton of every method, SB3 agents included.

    Entering checks what would make the run fail at its end (a token in the recipe, a push that could
    not happen, several launched processes that would not form one group, a finished run in
    ``output_dir`` without ``overwrite_output_dir``), seeds everything and writes ``recipe.yaml`` and
    ``versions.json``. Until the run has finished, ``args.output_dir`` and :attr:`run_dir` point to the
    staging folder ``<output_dir>.partial``: a failed or interrupted run leaves it (for
    ``resume_from_checkpoint: last``) and never touches a finished run. :meth:`callbacks` puts the
    non-finite guard and the caller's extra callbacks beside the method's own; :meth:`train` trains or
    resumes; :meth:`finish` writes ``metrics.json``, ``curves.png`` and the ``README.md`` model card
    (the one card code of :mod:`hf_finetune.hub`), moves the staging folder to ``output_dir``, prints
    the summary line and pushes when asked.

    Example:
        >>> with TrainingRun(recipe, callbacks=extra) as run:  # doctest: +SKIP
        ...     trainer = MyTrainer(model, run.args, train_dataset=ds, callbacks=run.callbacks())
        ...     run.train(trainer)
        ...     metrics = run.finish(trainer.evaluate(), headline=("eval_loss",), trainer=trainer)
    """

    def __init__(self, recipe: Recipe, callbacks: list | None = None) -> None:
        self.recipe = recipe
        self.args = _args_of(recipe)
        self.final_dir = Path(self.args.output_dir)
        self.staging_dir = staging_dir(self.final_dir)
        self.run_dir = self.final_dir  # the staging folder while the run is entered
        self.extra_callbacks = list(callbacks or [])
        self.started = time.time()
        self.trainable: int | None = None
        self.resume_from: str | None = None
        self.committed = False
        self._writer: ThreadPoolExecutor | None = None

    def __enter__(self) -> TrainingRun:
        resuming = _resume_value(getattr(self.args, "resume_from_checkpoint", None)) is not None
        check_output_dir(self.final_dir, overwrite=bool(getattr(self.args, "overwrite_output_dir", False)),
                         resuming=resuming, main=_is_main_process(self.args))
        overwrite = bool(getattr(self.args, "overwrite_output_dir", False))
        if not (resuming or overwrite) and (latest_checkpoint(self.staging_dir) or latest_agent_checkpoint(self.staging_dir)):
            raise ValueError(
                f"{self.staging_dir} holds checkpoints of an unfinished run into {self.final_dir}: add "
                "--resume_from_checkpoint last to continue it, or --overwrite_output_dir true to start over."
            )
        self.resume_from = self._resolve_resume()  # before anything is written
        if _is_main_process(self.args):
            prepare_staging(self.staging_dir, keep=resuming)
        self.run_dir = self.staging_dir
        self.args.output_dir = str(self.staging_dir)
        try:
            self.started = start_run(self.recipe, self.staging_dir, recorded_output_dir=str(self.final_dir))
        except BaseException:
            self.args.output_dir = str(self.final_dir)
            raise
        if self.resume_from is not None and "training" not in self.recipe.blocks:
            self.args.resume_from_checkpoint = self.resume_from  # the SB3 runner reads its own field
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # A failed or interrupted run leaves its staging folder (resumable checkpoints in it) and never
        # touches the finished run at output_dir; a run that ends without finish() still commits.
        self.wait_for_artefacts()
        if exc_type is None and not self.committed:
            self.commit()
        self.args.output_dir = str(self.final_dir)
        if exc_type is KeyboardInterrupt and _is_main_process(self.args):
            logger.warning("Interrupted: checkpoints so far are in %s; add --resume_from_checkpoint last to continue.",
                           self.staging_dir)
        return False

    def in_background(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Future | None:
        """Write an optional artefact (a plot, the card) on the run's writer thread, in submission order.

        Plots and the card cost ~1-2 s of Python (matplotlib's import alone ~0.9 s) that a bare
        ``Trainer`` script does not pay; submitted while the main thread still evaluates or saves
        the model (torch code, which releases the GIL), they come off the critical path. A failure
        only logs a warning naming ``what``. The run waits for them before it commits, so every file
        is there when :meth:`finish` returns. Only the main process writes.
        """
        if not _is_main_process(self.args):
            return None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-finetune-writer")

        def guarded() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - optional artefacts must not cost the run
                logger.warning("%s not written: %s", what, err)
                return None

        return self._writer.submit(guarded)

    def wait_for_artefacts(self) -> None:
        """Block until every artefact submitted with :meth:`in_background` is written."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def commit(self) -> None:
        """Make the staging folder the run at ``output_dir`` (replacing a finished run only now)."""
        self.wait_for_artefacts()
        _barrier()
        if _is_main_process(self.args) and self.staging_dir.is_dir():
            replace_dir(self.staging_dir, self.final_dir)
        _barrier()
        self.committed = True
        self.run_dir = self.final_dir
        self.args.output_dir = str(self.final_dir)

    def _resolve_resume(self) -> str | None:
        """``resume_from_checkpoint``: true/last/latest -> the newest complete checkpoint; a path must exist."""
        value = _resume_value(getattr(self.args, "resume_from_checkpoint", None))
        if value is None:
            return None
        agents = "agent" in self.recipe.blocks and "training" not in self.recipe.blocks
        field = f"{'agent' if agents else 'training'}.resume_from_checkpoint"
        if value is True:
            found = None
            for folder in (self.staging_dir, self.final_dir):
                found = latest_agent_checkpoint(folder) if agents else latest_checkpoint(folder)
                if found is not None:
                    break
            if found is None:
                raise ValueError(
                    f"{field}={self.args.resume_from_checkpoint}: no complete checkpoint in {self.final_dir} or "
                    f"{self.staging_dir}: train without it, or give a checkpoint folder."
                )
            value = str(found)
        elif not Path(value).exists():
            raise ValueError(f"{field}={value}: no such checkpoint; give a checkpoint-N folder or 'last'.")
        return value

    def callbacks(self, *own: Any, guard: bool = True) -> list:
        """The run's callbacks: the non-finite guard (Trainer methods), the method's ``own``, then the caller's."""
        from .callbacks import NonFiniteGuardCallback

        early = []
        patience = getattr(self.args, "early_stopping_patience", None)
        if patience is not None:  # the field and its checks: supervised.config.EarlyStoppingArguments
            from transformers import EarlyStoppingCallback

            early = [EarlyStoppingCallback(patience, getattr(self.args, "early_stopping_threshold", 0.0))]
        from .threads import thread_policy_callback

        # Trainer methods: the non-finite guard, and the faster of the policy's thread count and 1.
        trainer_own = [NonFiniteGuardCallback(), thread_policy_callback()] if guard else []
        return [*trainer_own, *own, *early, *self.extra_callbacks]

    def log_trainable(self, model: Any, what: str = "") -> int:
        """Log and remember how many parameters train (``metrics['trainable_parameters']``)."""
        from .models import trainable_parameters

        trainable, total = trainable_parameters(model)
        logger.info("%sTrainable parameters: %d of %d (%.2f%%)", what, trainable, total, 100 * trainable / max(total, 1))
        self.trainable = trainable
        return trainable

    def train(self, trainer: Any):
        """``trainer.train``, resuming from ``resume_from_checkpoint`` when the recipe says so.

        Once training is done, matplotlib is imported on the writer thread while the final
        evaluation runs, so the plots of :meth:`finish` cost little on the critical path.
        """
        output = trainer.train(resume_from_checkpoint=self.resume_from)
        self.in_background("matplotlib import", import_plotting)
        return output

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
            if main:  # they name the staging folder, which becomes output_dir at commit
                for name in ("training_args.json", "trainer_state.json"):
                    path = self.run_dir / name
                    if path.is_file() and self.run_dir != self.final_dir:
                        path.write_text(path.read_text().replace(str(self.staging_dir), str(self.final_dir)))
        if not main:
            self.commit()
            return metrics
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_results_files(self.run_dir, metrics)
        from .hub import write_card

        # Optional artefacts, on the writer thread in this order (the card links curves.png when it
        # exists); a failure only logs a warning, and commit() waits for both.
        self.in_background("curves.png", plot_curves, list(log_history or []), self.run_dir / "curves.png",
                           keys=curve_keys)
        self.in_background("README.md (model card)", write_card, self.run_dir, model_name=self.final_dir.name)
        self.commit()
        if trainer is None:  # Trainer methods print them with trainer.log_metrics; SB3 agents here, alike
            print_metrics("eval", metrics)
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


def check_sharding(recipe: Recipe) -> None:
    """Refuse, before anything loads, launches known not to work: FSDP on CPU, staged schedules or PPO sharded.

    accelerate 1.15 turns FSDP on only for GPU-like process groups: with ``use_cpu`` an FSDP config
    would quietly train as plain DDP. A staged schedule rebuilds its optimizer over per-stage
    parameter groups and PPO steps a policy and a value model with its own optimizer: neither fits
    FSDP's sharded parameters or DeepSpeed's engine-owned optimizer.
    """
    training = _args_of(recipe)
    env = os.environ
    fsdp = env.get("ACCELERATE_USE_FSDP", "").lower() == "true" or bool(getattr(training, "fsdp", None))
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" or bool(getattr(training, "deepspeed", None))
    if not (fsdp or deepspeed):
        return
    which = "FSDP" if fsdp else "DeepSpeed"
    if fsdp and getattr(training, "use_cpu", False):
        raise ValueError("FSDP was asked for on the CPU: accelerate runs FSDP only on GPUs (on CPU it would silently "
                         "be plain DDP). Use recipes/accelerate/multi_cpu.yaml for several CPU processes.")
    if getattr(training, "is_staged", False):
        raise ValueError(f"A staged schedule (stages/schedule/layer_lr_decay) cannot run under {which}: it rebuilds "
                         "the optimizer over per-stage parameter groups. Use DDP (recipes/accelerate/ddp.yaml).")
    if recipe.method == "ppo":
        raise ValueError(f"PPO cannot run under {which}: it steps a policy and a value model with its own optimizer. "
                         "Use DDP (recipes/accelerate/ddp.yaml), or GRPO/RLOO, which TRL supports under both.")


def print_metrics(split: str, metrics: dict[str, Any]) -> None:
    """Print ``metrics`` as ``Trainer.log_metrics`` does (a ``***** eval metrics *****`` block), for runs without a Trainer."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not numbers:
        return
    print(f"***** {split} metrics *****")
    width = max(len(k) for k in numbers)
    for key in sorted(numbers):
        value = numbers[key]
        print(f"  {key: <{width}} = {round(value, 4) if isinstance(value, float) else value:>10}")


def start_run(recipe: Recipe, run_dir: str | Path | None = None, recorded_output_dir: str | None = None) -> float:
    """Checks, seeds and ``recipe.yaml``/``versions.json`` of a run (what entering :class:`TrainingRun` does).

    ``run_dir`` is where the files go (default ``output_dir``); ``recorded_output_dir`` is the
    ``output_dir`` written into ``recipe.yaml`` (the finished run's place, not the staging folder).
    """
    training = _args_of(recipe)
    check_report_to(training)
    check_sharding(recipe)
    from .threads import apply_thread_policy

    apply_thread_policy()  # cores / local processes (HF_FINETUNE_NUM_THREADS overrides), logged once
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
    run_dir = Path(run_dir or training.output_dir)
    if _is_main_process(training):
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = recipe.to_dict()
        block = "training" if "training" in resolved else "agent"
        if recorded_output_dir is not None and block in resolved:
            resolved[block]["output_dir"] = recorded_output_dir
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        from .hub import library_versions

        (run_dir / "versions.json").write_text(json.dumps(library_versions(), indent=2))
    return time.time()


# --- run directories and checkpoints --------------------------------------------------------------


def staging_dir(output_dir: str | Path) -> Path:
    """Where a run into ``output_dir`` writes until it has finished: ``<output_dir>.partial``."""
    path = Path(output_dir)
    return path.with_name(path.name + ".partial")


def _resume_value(value: Any) -> str | bool | None:
    """``resume_from_checkpoint`` as given: True for true/last/latest, None for unset/false, else a path."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    text = str(value).strip()
    if text.lower() in ("", "false", "none", "no", "0"):
        return None
    if text.lower() in ("true", "last", "latest", "yes", "1"):
        return True
    return text


def check_output_dir(final: Path, overwrite: bool, resuming: bool, main: bool = True) -> None:
    """Refuse an ``output_dir`` that is a file, or that holds a run the new one would silently replace."""
    if final.exists() and not final.is_dir():
        raise ValueError(f"output_dir {final} is a file, not a folder: choose another --output_dir.")
    if final.is_dir() and (Path.cwd().resolve() == final.resolve() or final.resolve() in Path.cwd().resolve().parents):
        raise ValueError(f"output_dir {final} is the current folder or holds it: give the run its own folder.")
    if final.is_dir() and any(final.iterdir()) and not _looks_like_run(final):
        raise ValueError(
            f"output_dir {final} holds files that are not an hf-finetune run, which the run would replace: "
            "choose a new or empty folder."
        )
    if final.is_dir() and any(final.iterdir()) and not (overwrite or resuming):
        raise ValueError(
            f"output_dir {final} already holds a run: add --overwrite_output_dir true to replace it when the new run "
            "finishes, --resume_from_checkpoint last to continue it, or choose another --output_dir."
        )
    if main:
        parent = final.parent if str(final.parent) else Path(".")
        probe = parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
            raise ValueError(f"output_dir {final}: {probe} is not a writable folder: choose another --output_dir.")


def _looks_like_run(folder: Path) -> bool:
    markers = ("recipe.yaml", "metrics.json", "training_args.json", "trainer_state.json", "versions.json")
    return any((folder / m).exists() for m in markers) or any(folder.glob("checkpoint-*"))


def prepare_staging(staging: Path, keep: bool) -> None:
    """A fresh staging folder (stale files never survive), or the one a resumed run continues in."""
    try:
        if staging.exists() and not keep:
            logger.warning("Removing %s, left by an unfinished run (resume it with --resume_from_checkpoint last).",
                           staging)
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"Cannot create the run folder {staging}: {err.strerror or err}. Choose another --output_dir.") from None


def replace_dir(staging: Path, final: Path) -> None:
    """Move ``staging`` to ``final``; a previous ``final`` is moved aside first and deleted last."""
    previous = None
    if final.exists():
        previous = final.with_name(f"{final.name}.replaced-{os.getpid()}")
        os.replace(final, previous)
    os.replace(staging, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (complete: it has ``trainer_state.json``, written last)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if path.is_dir() and suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def latest_agent_checkpoint(folder: str | Path) -> Path | None:
    """The newest SB3 checkpoint ``checkpoints/agent_<steps>_steps.zip`` in a run folder."""
    found = []
    for path in Path(folder, "checkpoints").glob("agent_*_steps.zip"):
        steps = path.stem.split("_")[-2]
        if steps.isdigit():
            found.append((int(steps), path))
    return max(found)[1] if found else None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def import_plotting() -> None:
    """Import what :func:`plot_curves` needs (~0.9 s), e.g. on a run's writer thread ahead of time."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def plot_curves(log_history: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss", "eval_loss")) -> Path | None:
    """Plot logged values against the step as a PNG; returns the path, or None when nothing was logged.

    Uses matplotlib's ``Figure`` directly, not ``pyplot``: no global backend switch (a notebook keeps
    its inline plots) and safe on a writer thread.
    """
    series = {k: [(e["step"], e[k]) for e in log_history if k in e and "step" in e] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=key)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
