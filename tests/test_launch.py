"""Multi-process launch: real 2-process CPU DDP (gloo) through recipes/accelerate/multi_cpu.yaml.

Each launched run goes through ``probe.py`` (written below), which wraps ``Trainer.train`` to
record, on every rank, the world size, a SHA-256 of the final weights and the log history. The
reference is a 1-process run on the same global batch (8 = 2 x 4), made in the test process.

Tolerances: the supervised run (dropout off) has no randomness that depends on the process
layout, so its logged train and eval losses must match to 1e-4 relative. Masked-LM masks are drawn
per rank, so the 2-process MLM run sees other masks than the 1-process run: its losses must match
within 3% relative (a random-init model's token loss is ~ln(vocab) whatever is masked), which
still catches the 2x inflation this package fixes (see ``hf_finetune.runs.loss_uses_num_items``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_recipe

ROOT = Path(__file__).resolve().parents[1]
MULTI_CPU = ROOT / "recipes" / "accelerate" / "multi_cpu.yaml"

PROBE = '''
import hashlib, json, os, sys
import transformers

_train = transformers.Trainer.train


def weights_sha256(model):
    state = model.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(self, *args, **kwargs):
    before = weights_sha256(self.model)
    out = _train(self, *args, **kwargs)
    record = {"rank": self.args.process_index, "world_size": self.args.world_size, "initial_sha256": before,
              "sha256": weights_sha256(self.accelerator.unwrap_model(self.model)),
              "log_history": self.state.log_history}
    with open(os.path.join(os.environ["PROBE_DIR"], f"rank{self.args.process_index}.json"), "w") as f:
        json.dump(record, f)
    return out


transformers.Trainer.train = train
from hf_finetune.cli import main

sys.exit(main(sys.argv[1:]))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT with dropout off, so train losses do not depend on per-rank RNG."""
    target = tmp_path_factory.mktemp("bert-nodrop")
    shutil.copytree(tiny_bert_dir, target, dirs_exist_ok=True)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


def launch(tmp_path: Path, recipe: dict, processes: int, monkeypatch) -> list[dict]:
    """Train ``recipe`` with ``processes`` CPU processes; return each rank's probe record.

    2 processes: ``accelerate launch`` with recipes/accelerate/multi_cpu.yaml, as a user would.
    1 process (the reference, global batch 8 in one process): in this process, to save start-up time.
    """
    probe_dir = tmp_path / f"probe{processes}"
    probe_dir.mkdir()
    path = write_recipe(tmp_path / f"recipe{processes}.yaml", recipe)
    if processes == 1:
        import transformers

        from hf_finetune.cli import main

        namespace: dict = {}
        exec(PROBE.split("transformers.Trainer.train = train")[0], namespace)  # the probe, not yet installed
        monkeypatch.setattr(transformers.Trainer, "train", namespace["train"])
        monkeypatch.setenv("PROBE_DIR", str(probe_dir))
        assert main(["train", path, "--per_device_train_batch_size", "8"]) == 0
    else:
        (tmp_path / "probe.py").write_text(PROBE)
        env = {**os.environ, "PROBE_DIR": str(probe_dir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        cmd = [accelerate, "launch", "--config_file", str(MULTI_CPU), "--main_process_port", str(free_port()),
               str(tmp_path / "probe.py"), "train", path]
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]


def losses(record: dict) -> dict[str, list[float]]:
    history = record["log_history"]
    return {
        "loss": [h["loss"] for h in history if "loss" in h],
        "eval_loss": [h["eval_loss"] for h in history if "eval_loss" in h],
    }


def check_two_vs_one(two: list[dict], one: list[dict], rel: float) -> None:
    assert [r["world_size"] for r in two] == [2, 2] and [r["rank"] for r in two] == [0, 1]
    assert two[0]["sha256"] == two[1]["sha256"], "ranks ended with different weights"
    assert one[0]["world_size"] == 1
    got, ref = losses(two[0]), losses(one[0])
    assert len(ref["loss"]) >= 2 and len(ref["eval_loss"]) >= 2
    for key in ("loss", "eval_loss"):
        assert got[key] == pytest.approx(ref[key], rel=rel), key
    assert losses(two[1]) == got  # both ranks log the same (reduced) values


@pytest.mark.slow  # two gloo processes: ~15-20 s each, more on a shared machine
def test_two_cpu_processes_supervised_match_one_process(tmp_path, no_dropout_bert, topic_csv, monkeypatch):
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": no_dropout_bert},
        "data": {"dataset": topic_csv, "max_length": 32},
        "training": {
            "output_dir": str(tmp_path / "run"),
            "use_cpu": True,
            "max_steps": 6,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "save_strategy": "no",
            "report_to": "none",
        },
    }
    two = launch(tmp_path, recipe, 2, monkeypatch)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    recipe["training"]["output_dir"] = str(tmp_path / "run1")
    one = launch(tmp_path, recipe, 1, monkeypatch)
    check_two_vs_one(two, one, rel=1e-4)
    assert two[0]["sha256"] != two[0]["initial_sha256"], "training did not change the weights"


@pytest.mark.slow  # two gloo processes: ~15-20 s each, more on a shared machine
def test_two_cpu_processes_masked_lm_match_one_process(tmp_path, no_dropout_bert, topic_csv, monkeypatch):
    import csv

    pytest.importorskip("hf_finetune.self_supervised.train")
    corpus = tmp_path / "corpus.txt"
    with open(topic_csv) as f:
        corpus.write_text("\n".join(row["text"] for row in csv.DictReader(f)) + "\n")
    recipe = {
        "method": "self_supervised",
        "model": {"model_name_or_path": no_dropout_bert},
        "data": {"dataset": str(corpus), "max_length": 16},
        "text": {"sample_by": "line"},
        "training": {
            "output_dir": str(tmp_path / "mlm"),
            "objective": "mlm",
            "use_cpu": True,
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "no",
            "report_to": "none",
        },
    }
    two = launch(tmp_path, recipe, 2, monkeypatch)
    recipe["training"]["output_dir"] = str(tmp_path / "mlm1")
    one = launch(tmp_path, recipe, 1, monkeypatch)
    check_two_vs_one(two, one, rel=0.03)
    assert two[0]["sha256"] != two[0]["initial_sha256"], "training did not change the weights"


def test_mlm_loss_is_not_inflated_by_trainer_scaling(tmp_path, tiny_bert_dir):
    """The DDP 2x bug, reproduced in one process: Trainer treats BertForMaskedLM's ``**kwargs`` as
    "normalises by num_items_in_batch", so the loss skips the division by gradient-accumulation
    steps (and under DDP is multiplied by the world size). Our mixin turns that assumption off."""
    import math

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_finetune.trainer_mixin import RunTrainerMixin

    class OurTrainer(RunTrainerMixin, Trainer):
        pass

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["the match goal team player coach league score win season"] * 32
    data = Dataset.from_dict(dict(tokenizer(texts)))

    def first_loss(trainer_cls):
        torch.manual_seed(0)
        model = BertForMaskedLM.from_pretrained(tiny_bert_dir)
        args = TrainingArguments(
            output_dir=str(tmp_path / trainer_cls.__name__), max_steps=1, per_device_train_batch_size=8,
            gradient_accumulation_steps=2, logging_steps=1, report_to="none", use_cpu=True, learning_rate=1e-9,
            seed=0,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
        trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=collator)
        trainer.train()
        return trainer, trainer.state.log_history[0]["loss"]

    ours, loss = first_loss(OurTrainer)
    plain, plain_loss = first_loss(Trainer)
    assert ours.model_accepts_loss_kwargs is False and plain.model_accepts_loss_kwargs is True
    chance = math.log(len(tokenizer))  # random-init model: token loss ~ ln(vocab)
    assert loss == pytest.approx(chance, rel=0.1)
    assert plain_loss == pytest.approx(2 * loss, rel=0.05)  # Trainer alone: 2 accumulation steps summed


def test_loss_uses_num_items_detection(tiny_bert_dir, tiny_gpt2_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import BertForMaskedLM, BertForSequenceClassification, GPT2LMHeadModel

    from hf_finetune.trainer_mixin import loss_uses_num_items

    assert not loss_uses_num_items(BertForMaskedLM.from_pretrained(tiny_bert_dir))
    assert not loss_uses_num_items(BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3))
    gpt2 = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    assert loss_uses_num_items(gpt2)  # ForCausalLMLoss takes num_items_in_batch
    lora = get_peft_model(gpt2, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert loss_uses_num_items(lora)


def test_launched_workers_that_would_train_alone_are_refused(tmp_path, tiny_bert_dir, topic_csv, monkeypatch):
    from hf_finetune.recipe import load_recipe, run_recipe

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it, but without use_cpu on a CPU machine
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": tiny_bert_dir},
        "data": {"dataset": topic_csv},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "report_to": "none"},
    }
    with pytest.raises(ValueError, match="use_cpu: true"):
        run_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))


def test_accelerate_configs_parse_and_name_their_launch_command():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
    names = {p.stem for p in configs}
    assert {"single_process", "multi_cpu", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"} <= names
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# Launch: accelerate launch --config_file recipes/accelerate/" + path.name), path
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1
    multi = load_config_from_file(str(MULTI_CPU))
    assert multi.num_processes == 2 and multi.use_cpu
