"""Cross-cutting ``TrainerCallback``s: the non-finite guard and the run's curves."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class NonFiniteGuardCallback(TrainerCallback):
    """Stop training at the first non-finite gradient norm or logged loss, naming the step.

    The gradient check runs in ``on_pre_optimizer_step``, before the optimizer applies the update
    and before the step's checkpoint, so no poisoned weights are written.

    Example:
        >>> trainer = Trainer(model, args, callbacks=[NonFiniteGuardCallback()])  # doctest: +SKIP
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            raise NonFiniteLossError(
                f"Non-finite gradient norm ({norm.item()}) at step {state.global_step + 1}: training stopped "
                "before that update. Lower the learning rate, enable max_grad_norm, or check the data."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteLossError(f"Non-finite {key} ({value}) logged at step {state.global_step}.")


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


def plot_confusion(matrix, label_names: list[str], path: str | Path) -> Path:
    """Save a confusion matrix (rows: true label, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
