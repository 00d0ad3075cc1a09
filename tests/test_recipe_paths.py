"""Recipe data paths: from the current folder first (as before), else beside the recipe file (runs started elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_finetune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def project(tmp_path: Path) -> Path:
    """A user's project: proj/recipes/run.yaml naming data/train.jsonl relative to proj/ (as our recipes do)."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "recipes").mkdir()
    (proj / "data" / "train.jsonl").write_text(json.dumps({"text": "a", "label": 0}) + "\n")
    (proj / "recipes" / "run.yaml").write_text(
        "method: supervised\nmodel: {model_name_or_path: m}\n"
        "data: {dataset: data/train.jsonl, eval_dataset: data/missing.jsonl, test_dataset: bbc_news}\n"
        "training: {output_dir: out}\n")
    return proj


def test_a_run_started_outside_the_project_finds_its_data(tmp_path, monkeypatch):
    proj = project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = load_recipe(proj / "recipes" / "run.yaml").data
    assert data.dataset == str(proj / "data" / "train.jsonl")
    assert data.eval_dataset == "data/missing.jsonl"  # found nowhere: unchanged, the loader names it
    assert data.test_dataset == "bbc_news"  # a bundled name (or a Hub id) is not a path


def test_the_current_folder_comes_first_and_overrides_stay_as_typed(tmp_path, monkeypatch):
    proj = project(tmp_path)
    monkeypatch.chdir(proj)
    assert load_recipe("recipes/run.yaml").data.dataset == "data/train.jsonl"  # as before: relative to the cwd
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    recipe = load_recipe(proj / "recipes" / "run.yaml", ["--dataset", "data/train.jsonl"])
    assert recipe.data.dataset == "data/train.jsonl"  # a command-line value is relative to the shell, as typed


@pytest.mark.parametrize("name", ["rl/grpo_short_answers.yaml", "supervised/ner.yaml"])
def test_shipped_recipes_load_their_data_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = load_recipe(REPO / "recipes" / name).data
    for path in (data.dataset, data.eval_dataset):
        assert path is None or Path(path).is_file(), path
