"""``SupervisedTrainer``: a ``transformers.Trainer`` that trains in stages (global -> local, LP-FT, gradual
unfreezing) with optional layer-wise learning-rate decay.

Why by hand: neither ``transformers`` nor PEFT/TRL offers a multi-stage schedule that changes the
trainable parameters and rebuilds the optimizer mid-run with exact resume. Everything else (loop,
accelerate, checkpoints, logging, callbacks) is the stock ``Trainer``; the mixin only overrides its
documented extension points (``create_optimizer``, ``create_scheduler``, ``training_step``) and the
training-length and checkpoint hooks.

How it works: one ``train()`` call runs the whole plan with ``max_steps`` = the sum of the stages.
The optimizer and scheduler belong to the current stage, which is a function of the global step
only: ``create_optimizer`` builds the stage of ``state.global_step`` (so a resumed run starts in the
right stage), and ``training_step`` switches when the first micro-batch of a stage arrives. Each
checkpoint records its stage in ``stage.json``; resuming across a boundary skips loading the old
stage's optimizer, exactly as the uninterrupted run started that stage with a fresh one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass

from torch import nn
from transformers import DataCollatorForTokenClassification, Trainer
from transformers.optimization import get_scheduler

from ..models import head_module_names
from ..trainer_mixin import RunTrainerMixin
from .config import parse_stages
from .tasks import classification_metrics, multi_label_metrics, regression_metrics, token_classification_metrics

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class Stage:
    """One resolved stage: its parameter names, learning rate and step range ``[start, end)``."""

    name: str
    trainable: str | list[str]
    params: list[str]
    learning_rate: float
    layer_lr_decay: float | None
    lr_scheduler_type: str
    warmup_steps: float
    budget: tuple[str, float]
    start: int = 0
    end: int = 0

    @property
    def steps(self) -> int:
        return self.end - self.start


class ModelLayout:
    """Where each parameter sits: embeddings, layer ``i`` of the main layer stack, or after the stack.

    The layer stack is found generically as the largest ``nn.ModuleList`` of identical blocks
    (``bert.encoder.layer``, ``model.layers``, ``transformer.h``, ...), so BERT-, GPT- and Llama-style
    models need no architecture-specific code. The head is the task module(s) next to the base
    model (``classifier``, ``score``, ...), as :func:`hf_finetune.models.head_module_names` finds them.
    """

    def __init__(self, model: nn.Module):
        self.names = [n for n, _ in model.named_parameters()]
        best = None
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
                size = sum(p.numel() for p in module.parameters())
                if best is None or size > best[2]:
                    best = (name, len(module), size)
        self.layers_prefix, self.depth = (best[0] + ".", best[1]) if best else ("", 0)
        embedding_modules = [
            n for n, m in model.named_modules() if isinstance(m, nn.Embedding) or "embed" in n.split(".")[-1].lower()
        ]
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.heads = head_module_names(base)
        self.level: dict[str, int] = {}
        self.head_params: set[str] = set()
        for name in self.names:
            if self.layers_prefix and name.startswith(self.layers_prefix):
                self.level[name] = int(name[len(self.layers_prefix) :].split(".")[0]) + 1
            elif any(name.startswith(m + ".") for m in embedding_modules if m):
                self.level[name] = 0
            else:
                self.level[name] = self.depth + 1
                parts = name.split(".")
                if any(h in parts for h in self.heads):
                    self.head_params.add(name)

    def select(self, trainable: str | list[str], universe: set[str], stage: str) -> list[str]:
        """Parameter names a stage trains; raises ``ValueError`` when the selection is empty or impossible."""
        candidates = [n for n in self.names if n in universe]
        if isinstance(trainable, list):
            chosen = set()
            for pattern in trainable:
                hits = {n for n in candidates if re.search(pattern, n)}
                if not hits:
                    raise ValueError(
                        f"Stage {stage!r}: pattern {pattern!r} matches no trainable parameter. "
                        f"Parameter names look like {candidates[:3]} ... (see model.named_parameters())."
                    )
                chosen |= hits
        elif trainable == "all":
            chosen = set(candidates)
        elif trainable == "head":
            chosen = {n for n in candidates if n in self.head_params}
        elif trainable == "embeddings":
            chosen = {n for n in candidates if self.level[n] == 0}
        elif trainable == "lora":
            chosen = {n for n in candidates if "lora_" in n}
        else:  # top:N
            n_top = int(trainable.split(":")[1])
            if n_top > self.depth:
                raise ValueError(
                    f"Stage {stage!r}: trainable={trainable!r} but the model has {self.depth} layers "
                    f"(in {self.layers_prefix.rstrip('.') or 'no layer stack'}); use top:N with N <= {self.depth}."
                )
            chosen = {n for n in candidates if self.level[n] > self.depth - n_top}
        if not chosen:
            what = {"head": f"head modules {self.heads}", "lora": "LoRA adapters (is the lora block set?)"}
            raise ValueError(
                f"Stage {stage!r} leaves nothing trainable: trainable={trainable!r} matches no trainable parameter"
                f"{' of the ' + what[trainable] if trainable in what else ''}. Choose another selection."
            )
        return [n for n in self.names if n in chosen]


def preset_stages(schedule: str | None, args, depth: int) -> list[dict]:
    """The stage list of a preset ``schedule`` (fractions of the run's budget); see ``StageArguments``."""
    lr = args.learning_rate
    if schedule == "global-local":
        head_lr = args.head_learning_rate or lr
        return [
            {"name": "global", "trainable": "all", "fraction": 0.8, "learning_rate": lr},
            {"name": "local", "trainable": "head", "fraction": 0.2, "learning_rate": head_lr},
        ]
    if schedule == "lp-ft":
        head_lr = args.head_learning_rate or 10 * lr
        return [
            {"name": "linear-probe", "trainable": "head", "fraction": 0.5, "learning_rate": head_lr},
            {"name": "fine-tune", "trainable": "all", "fraction": 0.5, "learning_rate": lr},
        ]
    if schedule == "gradual-unfreezing":
        picks = ["head"] + [f"top:{k}" for k in range(1, depth)] + ["all"]
        return [{"name": p.replace(":", ""), "trainable": p, "fraction": 1 / len(picks)} for p in picks]
    # layer_lr_decay alone: one stage over everything
    return [{"name": "all", "trainable": "all", "fraction": 1.0}]


class StagedMixin:
    """Mix into a ``Trainer`` subclass (before it) to train in the stages of ``args`` (see ``StageArguments``).

    Without ``stages``, ``schedule`` or ``layer_lr_decay`` in ``args`` nothing changes: the trainer is
    the stock one (one attribute test per step).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stages: list[Stage] | None = None
        self._stage_index: int | None = None
        self.stage_history: list[dict] = []
        if getattr(self.args, "is_staged", False):
            self.stages = self._resolve_stages()

    # ----- planning (before step 1) -------------------------------------------------------------
    def _resolve_stages(self) -> list[Stage]:
        layout = ModelLayout(self.model)
        self._layout = layout
        universe = {n for n, p in self.model.named_parameters() if p.requires_grad}
        specs = parse_stages(self.args.stages) or preset_stages(self.args.schedule, self.args, layout.depth)
        stages = []
        for spec in specs:
            budget = next((k, float(spec[k])) for k in ("max_steps", "num_train_epochs", "fraction") if spec.get(k))
            warmup = spec.get("warmup_steps")
            stages.append(
                Stage(
                    name=spec["name"],
                    trainable=spec["trainable"],
                    params=layout.select(spec["trainable"], universe, spec["name"]),
                    learning_rate=float(spec.get("learning_rate") or self.args.learning_rate),
                    layer_lr_decay=spec.get("layer_lr_decay", self.args.layer_lr_decay),
                    lr_scheduler_type=spec.get("lr_scheduler_type")
                    or str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)),
                    warmup_steps=float(self.args.warmup_steps if warmup is None else warmup),
                    budget=budget,
                )
            )
        self._all_trainable = universe
        return stages

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        if not self.stages:
            return values
        num_epochs, per_epoch, examples, _, total_batch, steps_in_epoch, budget = values
        start, share = 0, 0.0
        for stage in self.stages:
            kind, amount = stage.budget
            if kind == "max_steps":
                steps = int(amount)
            elif kind == "num_train_epochs":
                steps = math.ceil(amount * per_epoch)
            else:  # a fraction of the run's budget; rounding cumulative shares keeps their total exact
                steps = round((share + amount) * budget) - round(share * budget)
                share += amount
            if steps < 1:
                raise ValueError(
                    f"Stage {stage.name!r} gets no optimizer step from a budget of {budget} steps: "
                    "raise max_steps/num_train_epochs or give the stage max_steps."
                )
            stage.start, stage.end = start, start + steps
            start += steps
        max_steps = start
        if num_epochs != sys.maxsize:  # sys.maxsize: a dataset without length, read until max_steps
            num_epochs = math.ceil(max_steps / per_epoch)
        logger.info("Staged plan: %s", ", ".join(f"{s.name} [{s.start}, {s.end})" for s in self.stages))
        return num_epochs, per_epoch, examples, max_steps * total_batch, total_batch, steps_in_epoch, max_steps

    def stage_at(self, step: int) -> int:
        """Index of the stage that runs optimizer step ``step + 1`` (the stage of the last stage after the end)."""
        for i, stage in enumerate(self.stages):
            if step < stage.end:
                return i
        return len(self.stages) - 1

    # ----- optimizer and scheduler ----------------------------------------------------------------
    def _param_groups(self, stage: Stage, model: nn.Module) -> list[dict]:
        decay_names = set(self.get_decay_parameter_names(model))
        depth = self._layout.depth
        groups: dict[tuple, dict] = {}
        named = dict(model.named_parameters())
        for name in stage.params:
            level = self._layout.level[name] if stage.layer_lr_decay else depth + 1
            scale = stage.layer_lr_decay ** (depth + 1 - level) if stage.layer_lr_decay else 1.0
            wd = self.args.weight_decay if name in decay_names else 0.0
            tag = "embeddings" if level == 0 else (f"layer.{level - 1}" if level <= depth else "top")
            group = groups.setdefault(
                (level, wd), {"params": [], "weight_decay": wd, "lr": stage.learning_rate * scale, "group": tag}
            )
            group["params"].append(named[name])
        return list(groups.values())

    def create_optimizer(self, model=None):
        if not self.stages:
            return super().create_optimizer(model)
        if self.optimizer is None:
            index = self.stage_at(self.state.global_step)
            stage = self.stages[index]
            keep = set(stage.params)
            for name, param in self.model.named_parameters():
                if name in self._all_trainable:
                    param.requires_grad_(name in keep)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = self._param_groups(stage, self.model)
            self.optimizer = optimizer_cls(groups, **kwargs)
            self._stage_index = index
            trainable = sum(p.numel() for g in groups for p in g["params"])
            rates = sorted({g["lr"] for g in groups}, reverse=True)
            record = {
                "stage": stage.name,
                "step": self.state.global_step,
                "trainable_parameters": trainable,
                "learning_rates": rates,
            }
            self.stage_history.append(record)
            logger.info(
                "Stage %d/%d %r from step %d: %s trainable parameters (%s), learning rate(s) %s",
                index + 1,
                len(self.stages),
                stage.name,
                self.state.global_step,
                f"{trainable:,}",
                stage.trainable,
                ", ".join(f"{r:.3g}" for r in rates),
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self.stages:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            stage = self.stages[self.stage_at(self.state.global_step)]
            warmup = stage.warmup_steps
            self.lr_scheduler = get_scheduler(
                stage.lr_scheduler_type,
                optimizer=optimizer or self.optimizer,
                num_warmup_steps=int(warmup) if warmup >= 1 else math.ceil(stage.steps * warmup),
                num_training_steps=stage.steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.stages is not None and self.stage_at(self.state.global_step) != self._stage_index:
            self._switch_stage()
        return super().training_step(model, inputs, num_items_in_batch)

    def _switch_stage(self) -> None:
        """Drop the old stage's optimizer (and its state) and build the next stage's optimizer and scheduler."""
        old = self.optimizer
        self.optimizer, self.lr_scheduler = None, None
        self.create_optimizer()
        self.optimizer = self.accelerator.prepare(self.optimizer)
        # accelerate keeps every prepared optimizer; forget the old one so its state can be freed.
        if old in getattr(self.accelerator, "_optimizers", []):
            self.accelerator._optimizers.remove(old)
        self.create_scheduler(self.stages[self._stage_index].steps)

    # ----- checkpoints ---------------------------------------------------------------------------
    def _plan(self) -> list[list]:
        return [[s.name, s.start, s.end] for s in self.stages]

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.stages and self.args.should_save:
            stage = self.stages[self._stage_index]
            with open(os.path.join(output_dir, STAGE_FILE), "w") as f:
                json.dump({"stage_index": self._stage_index, "stage": stage.name, "plan": self._plan()}, f, indent=2)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.stages or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, STAGE_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no {STAGE_FILE}: it was not written by a staged run of this recipe.")
        saved = json.load(open(path))
        if saved["plan"] != self._plan():
            raise ValueError(
                f"{checkpoint} was written with stages {saved['plan']}, but the recipe now plans {self._plan()}: "
                "resume with the same stages, budget and batch size."
            )
        if saved["stage_index"] != self._stage_index:
            logger.info(
                "Resuming at the start of stage %r: fresh optimizer and scheduler.", self.stages[self._stage_index].name
            )
            return None
        return super()._load_optimizer_and_scheduler(checkpoint)


class SupervisedTrainer(RunTrainerMixin, StagedMixin, Trainer):
    """The ``supervised`` method's ``Trainer``: staged schedules and LLRD, task-aware defaults, safe saving.

    ``args.task`` means the same here as in a recipe: with no ``compute_metrics`` / ``data_collator``
    given, the task's metrics (label names from ``model.config.id2label``; ``multi_label_threshold``
    for ``multi_label``) and collator (token classification pads labels with -100) are used, and the
    model's ``problem_type`` follows the task (``multi_label`` -> BCE loss, ``regression`` -> MSE).

    Example:
        >>> args = SupervisedConfig("out", task="multi_label", schedule="lp-ft", num_train_epochs=2)  # doctest: +SKIP
        >>> trainer = SupervisedTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)  # doctest: +SKIP
        >>> trainer.train()  # logs each stage: name, trainable parameters, learning rates  # doctest: +SKIP
    """

    def __init__(self, model=None, args=None, data_collator=None, *pos, compute_metrics=None, **kwargs):
        task = getattr(args, "task", "classification")
        config = getattr(model, "config", None)
        problem_type = TASK_PROBLEM_TYPES.get(task)
        if config is not None and problem_type and getattr(config, "problem_type", None) != problem_type:
            # The loss follows problem_type: without this, float multi-hot labels would meet single-label CE.
            config.problem_type = problem_type
        if data_collator is None and task == "token_classification" and kwargs.get("processing_class") is not None:
            data_collator = DataCollatorForTokenClassification(kwargs["processing_class"])
        if compute_metrics is None and config is not None and getattr(config, "id2label", None):
            names = [config.id2label[i] for i in sorted(config.id2label)]
            compute_metrics = task_metrics(task, names, getattr(args, "multi_label_threshold", 0.5))
        super().__init__(model, args, data_collator, *pos, compute_metrics=compute_metrics, **kwargs)


# Task -> the `problem_type` transformers' sequence classifiers pick their loss by.
TASK_PROBLEM_TYPES = {"multi_label": "multi_label_classification", "regression": "regression"}


def task_metrics(task: str, names: list[str], threshold: float = 0.5):
    """The ``compute_metrics`` of a supervised ``task`` over labels ``names``."""
    if task == "multi_label":
        return multi_label_metrics(names, threshold)
    if task == "regression":
        return regression_metrics()
    if task == "token_classification":
        return token_classification_metrics(names)
    return classification_metrics(names)


def __getattr__(name: str):
    if name == "StagedTrainer":  # the class's name before 0.2: one class, one name now
        import warnings

        warnings.warn("StagedTrainer is now SupervisedTrainer; the old name goes away in 0.3.", DeprecationWarning,
                      stacklevel=2)
        return SupervisedTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
