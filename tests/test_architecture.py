"""The package has the shape docs/architecture.md describes, and the method interface is explicit."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hf_finetune.config import MethodEntry
from hf_finetune.recipe import METHODS, method_entry

REPO = Path(__file__).resolve().parents[1]


def test_architecture_doc_names_every_module_and_no_other():
    doc = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"^\| `(hf_finetune/[\w/]+\.py)` \|", doc, flags=re.MULTILINE))
    actual = {str(p.relative_to(REPO)) for p in (REPO / "hf_finetune").rglob("*.py")}
    assert named == actual, f"missing from the doc: {sorted(actual - named)}; gone: {sorted(named - actual)}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_typed_entry(method):
    entry = method_entry(method)
    assert isinstance(entry, MethodEntry) and entry.name == method
    blocks = entry.blocks()
    assert entry.args_block in blocks and "model" in blocks
    assert entry.evaluate is not None and entry.card_details is not None


def test_unknown_method_names_the_close_one():
    with pytest.raises(ValueError, match="Did you mean 'grpo'"):
        method_entry("gpro")


def test_no_module_below_the_runner_imports_cli_or_recipe():
    offenders = []
    for path in (REPO / "hf_finetune").rglob("*.py"):
        if path.name in ("cli.py", "recipe.py", "__main__.py", "hub.py"):
            continue  # hub.py asks recipe.method_entry for a run's card fields
        text = path.read_text()
        if re.search(r"from \.+(cli|recipe) import|import hf_finetune\.(cli|recipe)|from \.\. import (cli|recipe)", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_old_import_paths_warn_and_give_the_same_objects():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import importlib\n"
        "for path in ('hf_finetune.rl.grpo', 'hf_finetune.rl.agents'):\n"
        "    try:\n"
        "        importlib.import_module(path)\n"
        "    except DeprecationWarning:\n"
        "        continue\n"
        "    raise SystemExit(path + ' did not warn')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from hf_finetune.rl_env.envs import TextObservationWrapper
    from hf_finetune.supervised import trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import hf_finetune.rl.agents.envs as old_envs

        assert trainer.StagedTrainer is trainer.SupervisedTrainer
    assert old_envs.TextObservationWrapper is TextObservationWrapper
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_import_registers_gym_ids_and_they_build_with_defaults():
    code = (
        "import gymnasium as gym, hf_finetune\n"
        "assert 'hf_finetune/TextBandit-v0' in gym.registry and 'hf_finetune/BabyAI-Text-v0' in gym.registry\n"
        "import sys; assert 'hf_finetune.rl_env.envs' not in sys.modules  # registering loads no env code\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_users_get_what_the_config_names_say(tiny_bert_dir, tmp_path):
    """SupervisedConfig(task=...) and the TRL configs' own arguments work without a recipe."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune import SupervisedConfig, SupervisedTrainer
    from hf_finetune.rl.grpo_config import GRPOConfig
    from hf_finetune.supervised.sft_config import InstructionSFTConfig

    assert InstructionSFTConfig(str(tmp_path), max_length=77).max_length == 77
    assert GRPOConfig(str(tmp_path), reward_weights=[1.0, 0.5]).reward_weights == [1.0, 0.5]

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    names = ["sport", "tech", "business"]
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    texts = ["the match goal", "chip code data", "bank shares market", "goal team chip"]
    hot = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    ds = Dataset.from_dict({**tok(texts, truncation=True, max_length=16), "labels": hot})
    args = SupervisedConfig(str(tmp_path), task="multi_label", multi_label_threshold=0.4, max_steps=4,
                            learning_rate=1e-2, per_device_train_batch_size=4, logging_steps=1, report_to="none",
                            save_strategy="no")
    trainer = SupervisedTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    metrics = trainer.evaluate()
    # The multi-label metrics (with the config's threshold) come from args.task: no compute_metrics was passed.
    assert model.config.problem_type == "multi_label_classification"
    assert {"eval_f1_micro", "eval_f1_macro"} <= metrics.keys()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert any("loss" in e for e in trainer.state.log_history)
