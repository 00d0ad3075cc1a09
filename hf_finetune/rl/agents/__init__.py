"""Deprecated location of the SB3 agents: they moved to :mod:`hf_finetune.rl_env` (removed in 0.3)."""

import importlib
import sys
import warnings

warnings.warn(
    "hf_finetune.rl.agents moved to hf_finetune.rl_env; the old path goes away in 0.3.",
    DeprecationWarning,
    stacklevel=2,
)

# Old submodule paths (hf_finetune.rl.agents.envs, ...) resolve to the new modules themselves, so
# isinstance checks and monkeypatching see one class, not a copy.
for _name in ("config", "envs", "extractor", "train"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"hf_finetune.rl_env.{_name}")
