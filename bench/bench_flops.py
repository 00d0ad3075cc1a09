"""FLOP utilisation per method: achieved training FLOP/s over the matmul FLOP/s of the same process.

Each recipe runs as written through ``hf_finetune.recipe.run_recipe`` (its own data, model, batch,
collator) for a few steps, with evaluation and saving off. A forward pre-hook counts the tokens the
model processes in training steps (pad included: the matmuls pay for it) and the non-pad ones;
a callback times the steps after the first two (warm-up). Then:

    model FLOPs per token  = 6 x (weights of every nn.Linear that trains) + 4 x (frozen ones)
                             + 12 x layers x seq_len x hidden           (attention scores and mixing)
    achieved FLOP/s        = model FLOPs per token x tokens processed per second
    utilisation            = achieved / the FLOP/s of a (batch*len x hidden) @ (hidden x 4 hidden)
                             matmul timed in the same process, with the same threads

6 = forward 2 + backward 4 per weight (gradients for inputs and weights); a frozen weight (LoRA
base) skips its weight gradient. Embedding look-ups are not FLOPs. ``useful`` counts non-pad
tokens only: the gap to ``utilisation`` is what padding costs.

    .venv/bin/python bench/bench_flops.py                       # quickstart, MLM, NER: ~10-15 min on 2 cores
    .venv/bin/python bench/bench_flops.py --steps 6 --methods quickstart
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {
    "quickstart": ("recipes/quickstart.yaml", []),
    # The head-only warm-up steps skip the encoder's backward pass: measure full steps.
    "mlm": ("recipes/self_supervised/mlm_python_docs.yaml", ["--mlm_head_warmup_steps", "0", "--eval_on_start", "false"]),
    "ner": ("recipes/supervised/ner.yaml", []),
}


def linear_weights(model) -> tuple[int, int]:
    """(trainable, frozen) weight counts of the nn.Linear layers (LoRA's small matrices included)."""
    import torch

    trainable = frozen = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            if module.weight.requires_grad:
                trainable += n
            else:
                frozen += n
    return trainable, frozen


def matmul_flops(rows: int, hidden: int, seconds: float = 1.0) -> float:
    import torch

    a, b = torch.randn(rows, hidden), torch.randn(hidden, 4 * hidden)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        a @ b
        count += 1
    return 2 * rows * hidden * 4 * hidden * count / (time.perf_counter() - start)


def measure(name: str, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from hf_finetune.recipe import load_recipe, run_recipe

    path, extra = RECIPES[name]
    state: dict = {"tokens": 0, "useful": 0, "times": [], "model": None, "length": 0}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, st, control, model=None, **kwargs):
            state["model"] = model

            def count(module, args_, kwargs_):
                if not module.training:
                    return
                ids = kwargs_.get("input_ids")
                mask = kwargs_.get("attention_mask")
                if ids is None or state["t0"] is None:
                    return
                state["tokens"] += ids.numel()
                state["useful"] += int(mask.sum()) if mask is not None else ids.numel()
                state["length"] = max(state["length"], ids.shape[-1])

            model.register_forward_pre_hook(count, with_kwargs=True)
            state["t0"] = None

        def on_step_begin(self, args, st, control, **kwargs):
            if st.global_step >= 2 and state["t0"] is None:
                state["t0"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            state["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        overrides = ["--output_dir", out, "--max_steps", str(steps), "--eval_strategy", "no", "--save_strategy", "no",
                     "--report_to", "none", "--logging_steps", "1000", *extra]
        recipe = load_recipe(str(REPO / path), overrides)
        if hasattr(recipe.training, "predictions_file"):
            recipe.training.predictions_file = False
        run_recipe(recipe, callbacks=[Probe()])
    model = state["model"]
    elapsed = state["end"] - state["t0"]
    config = model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    trainable, frozen = linear_weights(model)
    batch_rows = state["tokens"] / max(1, steps - 2)
    per_token = 6 * trainable + 4 * frozen + 12 * layers * state["length"] * hidden
    achieved = per_token * state["tokens"] / elapsed
    peak = matmul_flops(int(min(batch_rows, 4096)), hidden)
    return {
        "method": name, "threads": torch.get_num_threads(), "steps timed": steps - 2,
        "s/step": elapsed / (steps - 2), "tokens/step": batch_rows, "pad share": 1 - state["useful"] / state["tokens"],
        "GFLOP/token": per_token / 1e9, "achieved GFLOP/s": achieved / 1e9, "matmul GFLOP/s": peak / 1e9,
        "utilisation": achieved / peak, "useful": achieved / peak * state["useful"] / state["tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="steps per method; the first 2 are not timed")
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} usable cores "
          "(above ~0.1 other jobs share the machine: achieved and matmul rates both suffer, their ratio less)")
    rows = [measure(name, args.steps) for name in args.methods]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
