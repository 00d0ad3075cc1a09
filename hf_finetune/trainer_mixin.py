"""What every trainer of ours adds to ``transformers.Trainer``: safe checkpoints, JSON arguments, a right DDP loss.

``RunTrainerMixin`` goes first in the bases of each method's trainer (``SupervisedTrainer``,
``SelfSupervisedTrainer``, ``InstructionSFTTrainer``, ``PPOTrainer``, ``GRPOTrainer``, ``RLOOTrainer``).
Written by hand because ``Trainer`` pickles its arguments, optimizer, scheduler and RNG state
(``torch.save``) and writes checkpoints in place; everything else is the stock ``Trainer``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer import TRAINING_ARGS_NAME

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
        from .callbacks import NonFiniteGuardCallback

        self._guards = [c for c in self.callback_handler.callbacks if isinstance(c, NonFiniteGuardCallback)]
        for callback in self.callback_handler.callbacks:
            # TensorBoardCallback only picks <output_dir>/runs/... in on_train_begin; an evaluate() or
            # log() before train() (RL runs evaluate the untrained policy) would write to ./runs.
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # Trainer computes the gradient norm of every update (to clip and log it): the non-finite
        # guard checks that one instead of a second pass over the gradients (~5 ms a MiniLM step).
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        for guard in self._guards:
            if grad_norm is not None:
                guard.check_grad_norm(grad_norm, self.state.global_step)
                guard.checked_step = self.state.global_step
        return grad_norm

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = Path(output_dir or self.args.output_dir)
        write_args_json(self.args, output_dir)
        if self.args.should_save:
            save_task_config(self.accelerator.unwrap_model(self.model), output_dir)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Trainer writes checkpoint-N in place, so a kill while saving leaves a folder that looks like
        # the latest checkpoint but cannot be loaded. Write it under <output_dir>/.saving, then rename.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        real_root = Path(super()._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # what a killed save left behind
            shutil.rmtree(real_root / ".saving", ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._checkpoint_root = real_root / ".saving"
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            written, target = real_root / ".saving" / name, real_root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(written, target)
            (real_root / ".saving").rmdir()
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == real_root / ".saving":
                self.state.best_model_checkpoint = str(real_root / Path(best).name)
                self.state.save_to_json(str(target / "trainer_state.json"))
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=str(real_root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    # --- optimizer, scheduler and RNG state without pickles -------------------------------------
    # Trainer stores them with torch.save (optimizer.pt, scheduler.pt, rng_state.pth). We write
    # tensors as safetensors and the rest as JSON, and read them back on resume; the pickles stay
    # only where we cannot (DeepSpeed, FSDP, XLA/SageMaker, non-JSON state), as Trainer writes them.

    def _plain_checkpoints(self) -> bool:
        return not (getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
                    or getattr(self, "is_fsdp_xla_v1_enabled", False))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if not (self._plain_checkpoints() and self.args.should_save):
            return
        folder = Path(output_dir)
        try:
            tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
            scheduler = json.dumps(self.lr_scheduler.state_dict()) if self.lr_scheduler is not None else None
        except (TypeError, ValueError) as err:
            logger.warning("Optimizer/scheduler state is not plain tensors and numbers (%s): kept as .pt files.", err)
            return
        from safetensors.torch import save_file

        save_file(tensors, str(folder / OPTIMIZER_TENSORS))
        (folder / OPTIMIZER_META).write_text(meta)
        if scheduler is not None:
            (folder / SCHEDULER_JSON).write_text(scheduler)
        for name in ("optimizer.pt", "scheduler.pt"):
            (folder / name).unlink(missing_ok=True)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # old checkpoints (.pt) and the staged plan checks
        if checkpoint is None or not (Path(checkpoint) / OPTIMIZER_TENSORS).is_file():
            return
        stage_file = Path(checkpoint) / "stage.json"
        if stage_file.is_file() and json.loads(stage_file.read_text()).get("stage_index") != getattr(
            self, "_stage_index", None
        ):
            return  # the staged trainer starts a new stage with a fresh optimizer (StagedMixin's rule)
        from safetensors.torch import load_file

        folder = Path(checkpoint)
        state = _unflatten_optimizer(load_file(str(folder / OPTIMIZER_TENSORS)), (folder / OPTIMIZER_META).read_text())
        self.optimizer.load_state_dict(state)
        if self.lr_scheduler is not None and (folder / SCHEDULER_JSON).is_file():
            self.lr_scheduler.load_state_dict(json.loads((folder / SCHEDULER_JSON).read_text()))

    def _save_rng_state(self, output_dir: str) -> None:
        import random

        import numpy as np
        import torch
        from safetensors.torch import save_file

        if not self._plain_checkpoints() or any(check() for check in _other_accelerators()):
            return super()._save_rng_state(output_dir)
        tensors = {"cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.random.get_rng_state_all()):
                tensors[f"cuda.{i}"] = state
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        meta = {"python": [version, list(internal), gauss],
                "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{stem}.safetensors"))
        (folder / f"{stem}.json").write_text(json.dumps(meta))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        import random

        import numpy as np
        import torch
        from safetensors.torch import load_file

        stem = "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"
        if checkpoint is None or not (Path(checkpoint) / f"{stem}.safetensors").is_file():
            return super()._load_rng_state(checkpoint)
        tensors = load_file(str(Path(checkpoint) / f"{stem}.safetensors"))
        meta = json.loads((Path(checkpoint) / f"{stem}.json").read_text())
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.random.set_rng_state(tensors["cpu"])
        cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.random.set_rng_state_all(cuda)

    def _get_output_dir(self, trial: Any) -> str:
        root = getattr(self, "_checkpoint_root", None)
        return str(root) if root is not None else super()._get_output_dir(trial=trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer's mid-run push pickles the arguments into output_dir/training_args.bin and uploads
        # that pickle. With push_to_hub, runs.finish_run pushes the finished run (model, card,
        # metrics) in one commit instead, so checkpoints are not pushed mid-run.
        return None


OPTIMIZER_TENSORS, OPTIMIZER_META, SCHEDULER_JSON = "optimizer.safetensors", "optimizer.json", "scheduler.json"


def _other_accelerators() -> list:
    from transformers.utils import (
        is_torch_hpu_available,
        is_torch_mlu_available,
        is_torch_musa_available,
        is_torch_npu_available,
        is_torch_xla_available,
    )

    return [is_torch_xla_available, is_torch_npu_available, is_torch_hpu_available, is_torch_mlu_available,
            is_torch_musa_available]


def _flatten_optimizer(state_dict: dict) -> tuple[dict, str]:
    """An optimizer ``state_dict`` as safetensors tensors plus JSON (``TypeError`` for anything else)."""
    import torch

    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = json.dumps({"param_groups": state_dict["param_groups"], "scalars": scalars,
                       "indices": [str(i) for i in state_dict["state"]]})
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: str) -> dict:
    data = json.loads(meta)
    state: dict = {int(i): dict(data["scalars"].get(i, {})) for i in data["indices"]}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state[int(index)][name] = value
    return {"state": state, "param_groups": data["param_groups"]}


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
