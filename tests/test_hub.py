"""Hub push over real HTTP (a local fake Hub), model cards, the token canary, and `hf-finetune eval`.

``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, so every push runs in a subprocess
whose environment points at the :class:`FakeHub` started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_recipe
from fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
CANARY = "hf_CANARY_3b9f27d1c0e84a5f9e11"
PUSHED_IGNORED = ("predictions.jsonl",)


def hub_env(hub: FakeHub, tmp_path: Path, token: str | None = CANARY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") or k == "HF_DATASETS_OFFLINE"}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),  # no stored login from the machine; anything cached is searched too
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def supervised_recipe(tiny_bert_dir: str, topic_csv: str, output_dir: Path, **training) -> dict:
    return {
        "method": "supervised",
        "model": {"model_name_or_path": tiny_bert_dir},
        "data": {"dataset": topic_csv, "max_length": 32},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 6,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "save_steps": 3,  # report_to left out: TensorBoard is the default when installed
            **training,
        },
    }


def expected_upload(run_dir: Path) -> dict[str, bytes]:
    """What push_run must upload: every file of the run except checkpoints, pickles and predictions."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if path.is_file() and not rel.startswith("checkpoint-") and rel not in PUSHED_IGNORED:
            files[rel] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory, tiny_bert_dir, topic_csv):
    """Train + push through the CLI with HF_TOKEN set to a canary, against the fake Hub."""
    tmp = tmp_path_factory.mktemp("canary")
    run_dir = tmp / "run"
    recipe = supervised_recipe(
        tiny_bert_dir, topic_csv, run_dir, push_to_hub=True, hub_model_id="my-org/canary-model"
    )
    path = write_recipe(tmp / "recipe.yaml", recipe)
    logs = tmp / "logs"
    logs.mkdir()
    with FakeHub() as hub:
        with open(logs / "stdout.txt", "w") as out, open(logs / "stderr.txt", "w") as err:
            proc = subprocess.run(
                [sys.executable, "-m", "hf_finetune", "train", path],
                env=hub_env(hub, tmp), cwd=tmp, stdout=out, stderr=err, timeout=600,
            )
    assert proc.returncode == 0, (logs / "stderr.txt").read_text()[-3000:]
    return {"tmp": tmp, "run_dir": run_dir, "hub": hub, "logs": logs}


@pytest.mark.slow  # the canary run trains and pushes in a subprocess (~40 s)
def test_train_and_push_arrives_byte_for_byte(canary_run):
    hub, run_dir = canary_run["hub"], canary_run["run_dir"]
    pushed = hub.files("my-org/canary-model")
    expected = expected_upload(run_dir)
    # The last commit is ours: it holds the whole run, byte for byte, and our card.
    last = hub.commits[-1]
    assert last["repo_id"] == "my-org/canary-model" and last["revision"] == "main"
    assert sorted(last["files"]) == sorted(expected)
    for name, data in expected.items():
        assert pushed[name] == data, name
    for required in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "metrics.json", "curves.png"):
        assert required in pushed
    assert any(name.startswith("runs/") and "tfevents" in name for name in pushed), "TensorBoard events not pushed"
    summary = (canary_run["logs"] / "stdout.txt").read_text()
    assert "[hf-finetune] done in" in summary and f"run saved to {run_dir}" in summary
    assert "[hf-finetune] pushed to" in summary
    card = pushed["README.md"].decode()
    assert "model-index" in card and "hf-finetune train recipe.yaml" in card and "transformers" in card
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in last["files"])


@pytest.mark.slow  # the canary run trains and pushes in a subprocess (~40 s)
def test_canary_token_is_used_but_never_written(canary_run):
    hub, tmp = canary_run["hub"], canary_run["tmp"]
    # The token did reach the server (so the search below looks for something that existed)...
    assert any(auth == f"Bearer {CANARY}" for _, _, auth in hub.requests)
    # ...and appears in no file: run dir, checkpoints, card, training_args.json, TensorBoard events,
    # captured stdout/stderr, the HF_HOME cache, nor anything that was uploaded.
    searched = [p for p in tmp.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.json" for p in searched)
    assert any("tfevents" in p.name for p in searched)
    assert any(p.parent.name.startswith("checkpoint-") for p in searched)
    hits = [str(p) for p in searched if CANARY.encode() in p.read_bytes()]
    hits += [name for name, data in hub.files("my-org/canary-model").items() if CANARY.encode() in data]
    assert hits == []


@pytest.mark.slow  # the canary run trains and pushes in a subprocess (~40 s)
def test_eval_reproduces_training_metrics(canary_run, capsys):
    from hf_finetune.cli import main

    run_dir = canary_run["run_dir"]
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{") :])
    trained = json.loads((run_dir / "metrics.json").read_text())
    for key in ("eval_accuracy", "eval_f1_macro", "eval_loss"):
        assert metrics[key] == pytest.approx(trained[key], abs=2e-6), key

    # --data: the same validation rows, from a file, give the same metrics.
    from hf_finetune.data import load_splits
    from hf_finetune.recipe import evaluate_run, load_recipe

    recipe = load_recipe(str(run_dir / "recipe.yaml"), ["--output_dir", str(canary_run["tmp"] / "scratch")])
    validation = load_splits(recipe.data, label_column=recipe.data.label_column)["validation"]
    held_out = canary_run["tmp"] / "held_out.csv"
    validation.to_csv(str(held_out), index=False)
    again = evaluate_run(str(run_dir), data=str(held_out))
    for key in ("eval_accuracy", "eval_loss"):
        assert again[key] == pytest.approx(trained[key], abs=2e-6), key


def test_model_card_eval_results_in_model_index():
    from huggingface_hub import ModelCard

    from hf_finetune.hub import model_card

    card = model_card(
        {
            "model_name": "minilm-bbc",
            "method": "supervised",
            "task_type": "text-classification",
            "task": "classification",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "dataset": "SetFit/bbc-news",
            "hyperparameters": {"learning_rate": 1e-4, "num_train_epochs": 1, "per_device_train_batch_size": 16},
            "metrics": {"eval_accuracy": 0.93, "eval_loss": 0.25, "eval_runtime": 3.0, "train_loss": 0.4},
            "command": "hf-finetune train recipe.yaml",
            "versions": {"transformers": "5.24.0"},
            "curves": "curves.png",
        }
    )
    parsed = ModelCard(str(card))
    assert parsed.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert parsed.data.datasets == ["SetFit/bbc-news"]
    results = {r.metric_type: r.metric_value for r in parsed.data.eval_results}
    assert results == {"accuracy": 0.93, "loss": 0.25}  # runtime is not a result
    assert {r.task_type for r in parsed.data.eval_results} == {"text-classification"}
    text = parsed.text
    assert "![training curves](curves.png)" in text and "hf-finetune train recipe.yaml" in text
    assert "| learning_rate | 0.0001 |" in text and "- transformers 5.24.0" in text


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir, topic_csv):
    """A LoRA adapter run (in this process); returns (run_dir, the metrics training returned)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_finetune.recipe import load_recipe, run_recipe

    tmp = tmp_path_factory.mktemp("lora")
    # A base checkpoint with its pooler, so the reloaded model cannot differ by a re-initialised one.
    base = tmp / "base"
    BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(base)
    recipe = supervised_recipe(str(base), topic_csv, tmp / "lora", save_strategy="no", report_to="none")
    recipe["lora"] = {"lora_r": 4, "lora_target_modules": ["query", "value"]}
    trained = run_recipe(load_recipe(write_recipe(tmp / "lora.yaml", recipe)))
    return tmp / "lora", trained


def test_lora_adapter_eval_reproduces_training_metrics(lora_run):
    from hf_finetune.recipe import evaluate_run

    run_dir, trained = lora_run
    assert (run_dir / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").exists()
    metrics = evaluate_run(str(run_dir))
    assert metrics["eval_accuracy"] == pytest.approx(trained["eval_accuracy"], abs=2e-6)
    assert metrics["eval_loss"] == pytest.approx(trained["eval_loss"], abs=2e-6)


ERROR_CASES = textwrap.dedent(
    """
    import contextlib, io, json, os, sys
    from hf_finetune.cli import main
    run_dir, empty_dir, agent_dir, lora_dir = sys.argv[1:5]
    cases = {
        "no_token": ["push", run_dir, "--repo-id", "org/x"],
        "bad_repo_id": ["push", run_dir, "--repo-id", "a/b/c"],
        "bad_repo_chars": ["push", run_dir, "--repo-id", "org/na me"],
        "no_model": ["push", empty_dir, "--repo-id", "org/x"],
        "server_error": ["push", run_dir, "--repo-id", "org/denied"],
        "adapter": ["push", lora_dir, "--repo-id", "adapter-only", "--private", "--revision", "v1"],
    }
    out = {}
    for name, argv in cases.items():
        if name == "no_token":
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = "hf_test"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        out[name] = {"code": code, "stderr": err.getvalue()}
    # A non-Trainer run (an SB3 agent .zip) describes itself through card_extra.
    from hf_finetune.hub import push_run
    out["agent_url"] = push_run(agent_dir, "org/agent", card_extra={
        "method": "agent", "base_model": "sentence-transformers/all-MiniLM-L6-v2", "dataset": "BabyAI-GoToObj-v0",
        "library_name": "stable-baselines3", "task_type": "reinforcement-learning", "metrics": {"eval_mean_reward": 0.9},
        "hyperparameters": {"learning_rate": 3e-4}, "command": "hf-finetune train recipes/rl/agent.yaml"})
    print(json.dumps(out))
    """
)


@pytest.mark.slow  # the canary run trains and pushes in a subprocess (~40 s)
def test_push_errors_adapter_and_agent(tmp_path, canary_run, lora_run):
    """One subprocess (start-up is the cost) runs every push case against one fake Hub."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.json").write_text("{}")
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "ppo_agent.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an (empty) zip archive
    with FakeHub() as hub:
        hub.fail_on["commit:org/denied"] = (403, "You don't have the rights to push to org/denied")
        proc = subprocess.run(
            [sys.executable, "-c", ERROR_CASES, str(canary_run["run_dir"]), str(empty), str(agent), str(lora_run[0])],
            env=hub_env(hub, tmp_path, token=None), capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["no_token"]["code"] != 0 and "hf auth login" in res["no_token"]["stderr"]
    assert "HF_TOKEN" in res["no_token"]["stderr"]
    for case in ("bad_repo_id", "bad_repo_chars"):
        assert res[case]["code"] != 0 and "'name' or 'org/name'" in res[case]["stderr"], case
    assert res["no_model"]["code"] != 0 and "holds no model" in res["no_model"]["stderr"]
    server = res["server_error"]
    assert server["code"] != 0
    assert "403" in server["stderr"] and "don't have the rights" in server["stderr"]
    assert "No commit was made" in server["stderr"] and "pushed" not in server["stderr"].split("No commit")[0].lower()
    assert hub.files("org/denied") == {}
    assert [c["repo_id"] for c in hub.commits] == ["fake-user/adapter-only", "org/agent"]
    # The adapter: a name without org lands in the token owner's namespace, private, on branch v1.
    assert res["adapter"]["code"] == 0, res["adapter"]["stderr"]
    created = {c["repo_id"]: c for c in hub.created}
    assert created["fake-user/adapter-only"]["visibility"] == "private"
    adapter = hub.files("fake-user/adapter-only", "v1")
    assert hub.files("fake-user/adapter-only", "main") == {}
    for name, data in expected_upload(lora_run[0]).items():
        assert adapter[name] == data, name
    assert "adapter_model.safetensors" in adapter and "library_name: peft" in adapter["README.md"].decode()
    pushed = hub.files("org/agent")
    assert pushed["ppo_agent.zip"] == (agent / "ppo_agent.zip").read_bytes()
    card = pushed["README.md"].decode()
    assert "library_name: stable-baselines3" in card and "reinforcement-learning" in card
    assert "type: mean_reward" in card and "value: 0.9" in card


def test_hub_token_in_recipe_is_rejected(tmp_path, tiny_bert_dir, topic_csv):
    from hf_finetune.recipe import load_recipe, run_recipe

    recipe = supervised_recipe(tiny_bert_dir, topic_csv, tmp_path / "run", hub_token="hf_secret_in_yaml")
    with pytest.raises(ValueError, match="tokens do not belong in recipes.*hf auth login"):
        run_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    assert not (tmp_path / "run").exists()


def test_push_to_hub_without_token_fails_before_training(tmp_path, tiny_bert_dir, topic_csv, monkeypatch):
    from hf_finetune.recipe import load_recipe, run_recipe

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    recipe = supervised_recipe(tiny_bert_dir, topic_csv, tmp_path / "run", push_to_hub=True, hub_model_id="org/x")
    with pytest.raises(ValueError, match="hf auth login"):
        run_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    assert not (tmp_path / "run" / "model.safetensors").exists()
