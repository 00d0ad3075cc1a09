"""Model cards and Hub push for finished runs (LM runs and SB3 agents alike).

``push_run`` uploads a run directory (model or adapter, tokenizer, ``recipe.yaml``, metrics,
curves, TensorBoard logs) plus a generated ``README.md`` in ONE commit, so a failed push leaves
nothing half-uploaded. The card is built with ``huggingface_hub``'s ``ModelCard`` /
``ModelCardData`` / ``EvalResult`` so the evaluation results land in the Hub's ``model-index``
metadata. The token comes from ``HF_TOKEN`` or ``hf auth login`` only and is never written anywhere.

Example:
    >>> from hf_finetune.hub import push_run  # doctest: +SKIP
    >>> push_run("outputs/quickstart", "me/minilm-bbc")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import yaml

# Files never pushed: checkpoints (resumable state, large; SB3 agents keep theirs in checkpoints/),
# pickles, eval predictions (they quote the user's data, which may be private even when the model is not).
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "checkpoints/**", "*.bin", "*.pt", "*.pth", "*.pkl", "predictions.jsonl"]
# A run directory holds a model when one of these is there.
MODEL_MARKERS = ("config.json", "adapter_config.json")
AGENT_SUFFIXES = (".zip",)  # Stable-Baselines3 saves agents as .zip archives
LIBRARIES = ("hf-finetune", "transformers", "torch", "peft", "trl", "datasets", "accelerate", "huggingface_hub")
HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "optim",
    "max_grad_norm",
    "seed",
)
_NOT_METRICS = ("runtime", "per_second", "epoch", "trainable_parameters", "world_size")


class HubPushError(RuntimeError):
    """The Hub (or the server at ``HF_ENDPOINT``) refused the push; nothing was committed."""


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` when it is ``name`` or ``org/name``; raise ``ValueError`` saying how to fix it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"Invalid repo id {repo_id!r}: use 'name' or 'org/name' (letters, digits, '-', '_', '.'; at most 96 "
            f"characters), e.g. --repo-id my-org/minilm-bbc. ({err})"
        ) from None
    return repo_id


def require_token() -> str:
    """The Hub token from ``HF_TOKEN`` or the stored login; ``ValueError`` with login instructions if none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token found: run `hf auth login` (stores it for huggingface_hub) or set the "
            "HF_TOKEN environment variable to a write token from https://huggingface.co/settings/tokens. "
            "Tokens are never read from recipes."
        )
    return token


def check_push_ready(repo_id: str) -> None:
    """Fail before training when a ``push_to_hub`` run could not push at its end."""
    check_repo_id(repo_id)
    require_token()


def check_run_dir(run_dir: str | Path) -> Path:
    """Return ``run_dir`` when it holds a model, an adapter or an SB3 agent; ``ValueError`` otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run directory not found: {run_dir}")
    if any((run_dir / m).is_file() for m in MODEL_MARKERS) or any(
        p.suffix in AGENT_SUFFIXES for p in run_dir.iterdir()
    ):
        return run_dir
    raise ValueError(
        f"{run_dir} holds no model: expected config.json (full model), adapter_config.json (LoRA adapter) "
        "or an SB3 agent .zip. Point at the run's output_dir after training finished."
    )


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (missing ones left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and "/" in name and not name.startswith(("/", ".", "~"))


def _read(path: Path, loader) -> Any:
    return loader(path.read_text()) if path.is_file() else None


def run_metadata(run_dir: str | Path) -> dict[str, Any]:
    """Card metadata read from a run directory (``recipe.yaml``, ``metrics.json``, ``versions.json``)."""
    run_dir = Path(run_dir)
    recipe = _read(run_dir / "recipe.yaml", yaml.safe_load) or {}
    metrics = _read(run_dir / "metrics.json", json.loads) or {}
    versions = _read(run_dir / "versions.json", json.loads)
    training = recipe.get("training", {}) or {}
    model = recipe.get("model", {}) or {}
    data = recipe.get("data", {}) or {}
    lora = recipe.get("lora", {}) or {}
    method = recipe.get("method", "unknown")
    hyper = {k: training[k] for k in HYPERPARAMETERS if training.get(k) not in (None, "", [], -1)}
    world_size = int(metrics.get("world_size") or 1)
    hyper["processes"] = world_size
    command = "hf-finetune train recipe.yaml"
    if world_size > 1:
        command = f"accelerate launch --num_processes {world_size} -m hf_finetune train recipe.yaml"
    if lora.get("use_lora"):
        hyper.update({k: lora[k] for k in ("lora_r", "lora_alpha", "lora_dropout") if k in lora})
    meta: dict[str, Any] = {
        "method": method,
        "base_model": model.get("model_name_or_path"),
        "dataset": data.get("dataset"),
        "hyperparameters": hyper,
        "metrics": metrics,
        "adapter": (run_dir / "adapter_config.json").is_file(),
        "command": command if recipe else None,
        "versions": versions or library_versions(),
        "curves": "curves.png" if (run_dir / "curves.png").is_file() else None,
    }
    from .models import bundle_note, task_config_dir

    note = bundle_note(model.get("model_name_or_path"))
    if note and note.get("dequantized_from_gguf"):
        meta["weights_note"] = (
            f"The base weights were dequantized to float32 from the 4-bit GGUF `{note['dequantized_from_gguf']}` "
            f"({note.get('source', 'a bundled package')}), not the Hub's own weights of `{note.get('repo_id')}`."
        )
    meta["local_path"] = training.get("output_dir")
    config_dir = task_config_dir(run_dir)
    if config_dir is not None:
        id2label = (_read(config_dir / "config.json", json.loads) or {}).get("id2label")
        if id2label and not all(v == f"LABEL_{k}" for k, v in id2label.items()):
            meta["id2label"] = {int(k): v for k, v in id2label.items()}
    if recipe:
        from .recipe import method_entry

        entry = method_entry(method)
        if entry.card_details is not None:
            meta.update(entry.card_details(recipe, metrics))
    return meta


def write_card(run_dir: str | Path, **extra: Any) -> Path:
    """Write the run's model card to ``run_dir/README.md`` (what :func:`push_run` uploads); returns its path."""
    run_dir = Path(run_dir)
    meta = {**run_metadata(run_dir), "model_name": run_dir.name, **extra}
    path = run_dir / "README.md"
    model_card(meta).save(path)
    return path


def _eval_results(meta: dict[str, Any], task_type: str, dataset: str) -> list:
    from huggingface_hub import EvalResult

    if meta.get("eval_results") is not None:  # the method chose its own (e.g. SB3's "mean +/- std")
        return [
            EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset, **result)
            for result in meta["eval_results"]
        ]
    results = []
    for key, value in sorted((meta.get("metrics") or {}).items()):
        if not key.startswith("eval_") or not isinstance(value, (int, float)) or any(s in key for s in _NOT_METRICS):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=key[len("eval_") :],
                metric_value=value,
            )
        )
    return results


def _schedule(h: dict[str, Any]) -> str:
    length = f"{h['max_steps']} steps" if (h.get("max_steps") or 0) > 0 else f"{h.get('num_train_epochs', '?')} epoch(s)"
    warmup = h.get("warmup_steps") or h.get("warmup_ratio")
    warmup_text = f", warm-up {warmup}" if warmup else ""
    return (
        f"{h.get('lr_scheduler_type', 'linear')} learning-rate schedule from {h.get('learning_rate', '?')}"
        f"{warmup_text}, {length}, batch {h.get('per_device_train_batch_size', '?')} per device"
        f" x {h.get('processes', 1)} process(es) x {h.get('gradient_accumulation_steps', 1)} accumulation step(s)"
    )


def _usage(meta: dict[str, Any], task_type: str) -> list[str]:
    """"How to use" lines for classifiers: the plain transformers/PEFT calls, labels included for adapters."""
    if task_type not in ("text-classification", "token-classification"):
        return []
    where, note = meta.get("repo_id"), []
    if not where:
        # A local card: an absolute output_dir names a folder of the training machine, wrong once the run is
        # copied or moved; a relative one (as recipes write it) stays right beside the checkout it came from.
        local = meta.get("local_path")
        where = local if local and not Path(local).is_absolute() else (
            meta.get("model_name") or (Path(local).name if local else "RUN_DIR"))
        note = [f"# {where!r}: this run's folder (its path from where you run this) or, once pushed, its Hub id"]
    if not meta.get("adapter"):
        code = [f'classify = pipeline("{task_type}", model="{where}")']
        head = "from transformers import pipeline"
    else:
        # PEFT rebuilds the base from its Hub config (2 labels by default): the labels go with the call.
        labels = meta.get("id2label") or {}
        code = [f"id2label = {labels!r}",
                f'classify = pipeline("{task_type}", model="{where}", model_kwargs={{"id2label": id2label}})',
                "# or: model = AutoPeftModelFor" + ("TokenClassification" if task_type == "token-classification"
                                                    else "SequenceClassification")
                + f'.from_pretrained("{where}", id2label=id2label)']
        head = "from transformers import pipeline"
    return ["## How to use", "", "```python", head, *note, *code, "```", ""]


def model_card(meta: dict[str, Any]):
    """Build a ``huggingface_hub.ModelCard`` from run metadata (see :func:`run_metadata` for the keys).

    Args:
        meta: ``model_name``, ``method``, ``task``, ``task_type`` (the Hub task, e.g.
            ``text-classification``; the method's entry gives it), ``base_model``, ``dataset``,
            ``hyperparameters`` (dict), ``metrics`` (dict; ``eval_*`` numbers go to ``model-index``),
            ``eval_results`` (list of ``EvalResult`` keyword dicts replacing those), ``eval_dataset``,
            ``command``, ``versions`` (dict), ``curves`` (image path in the repo), ``adapter`` (bool),
            ``library_name``, ``tags``, ``title``, ``description`` (extra Markdown). Missing keys are left out.

    Returns:
        A ``ModelCard`` whose YAML header holds base model, datasets, tags and ``model-index``.

    Example:
        >>> card = model_card({"model_name": "demo", "method": "supervised", "task_type": "text-classification",
        ...                    "metrics": {"eval_accuracy": 0.9}})
        >>> "model-index" in str(card)
        True
    """
    from huggingface_hub import ModelCard, ModelCardData

    method = meta.get("method") or "unknown"
    task_type = meta.get("task_type") or "other"
    base_model, dataset = meta.get("base_model"), meta.get("dataset")
    dataset_label = meta.get("eval_dataset") or (Path(dataset).name if dataset and Path(dataset).exists() else dataset)
    dataset_label = dataset_label or "unknown"
    name = meta.get("model_name") or "model"
    library = meta.get("library_name") or ("peft" if meta.get("adapter") else "transformers")
    card_data = ModelCardData(
        model_name=name,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset] if dataset and _is_hub_id(dataset) else None,
        library_name=library,
        pipeline_tag=None if task_type in ("other", "reinforcement-learning") else task_type,
        tags=list(dict.fromkeys(["hf-finetune", method, *(meta.get("tags") or [])])),
        eval_results=_eval_results(meta, task_type, dataset_label) or None,
    )
    hyper = meta.get("hyperparameters") or {}
    lines = [f"# {meta.get('title') or name}", ""]
    what = "LoRA adapter for" if meta.get("adapter") else "Fine-tuned"
    lines += [
        f"{what} `{base_model or 'a pretrained model'}`, trained with [hf-finetune](https://pypi.org/project/hf-finetune/) "
        f"(method `{method}`{', task `' + meta['task'] + '`' if meta.get('task') else ''}) on `{dataset_label}`.",
        "",
    ]
    if meta.get("weights_note"):
        lines += [meta["weights_note"], ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += _usage(meta, task_type)
    results = [(k, v) for k, v in sorted((meta.get("metrics") or {}).items()) if isinstance(v, (int, float))]
    if results:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results]
        lines.append("")
    if hyper:
        lines += ["## Training procedure", ""]
        lines += [f"Schedule: {_schedule(hyper)}.", "", "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in hyper.items()]
        lines.append("")
    if meta.get("curves"):
        lines += ["### Training curves", "", f"![training curves]({meta['curves']})", ""]
    if meta.get("command"):
        lines += [
            "## Reproduce",
            "",
            "`recipe.yaml` in this repository is the resolved recipe of the run:",
            "",
            "```bash",
            f"pip install hf-finetune\n{meta['command']}",
            "```",
            "",
        ]
    if meta.get("versions"):
        lines += ["## Framework versions", ""] + [f"- {k} {v}" for k, v in meta["versions"].items()] + [""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def push_run(
    run_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    card_extra: dict[str, Any] | None = None,
) -> str:
    """Upload a run directory with a generated model card in one commit; returns the commit URL.

    Args:
        run_dir: a finished run (model, adapter or SB3 agent ``.zip``).
        repo_id: ``name`` or ``org/name``; created when missing.
        private: create the repository private (an existing repository keeps its visibility).
        revision: branch to push to (created from main when missing); default ``main``.
        card_extra: metadata merged over what the run directory says (keys of :func:`model_card`);
            runs without ``recipe.yaml`` (e.g. SB3 agents) describe themselves here.

    Returns:
        The URL of the commit.

    Raises:
        ValueError: bad repo id, no token, or no model in ``run_dir``.
        HubPushError: the server answered an error (its status and message are in the text).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    run_dir = check_run_dir(run_dir)
    token = require_token()
    api = HfApi(token=token)
    meta = {**run_metadata(run_dir), "model_name": repo_id.split("/")[-1], "repo_id": repo_id, **(card_extra or {})}
    card = model_card(meta)
    step = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        full_id = repo_url.repo_id
        if revision and revision != "main":
            step = f"creating branch {revision!r}"
            api.create_branch(full_id, branch=revision, exist_ok=True)
        step = "validating the model card"
        card.validate()
        card.save(run_dir / "README.md")
        step = "committing the files"
        info = api.upload_folder(
            repo_id=full_id,
            folder_path=run_dir,
            revision=revision,
            commit_message=f"Upload {meta.get('method', 'run')} run with hf-finetune",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except (HfHubHTTPError, ValueError, *_transport_errors()) as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        shown = f"HTTP {status}: " if status else ""
        raise HubPushError(
            f"Push of {run_dir} to {repo_id} failed while {step}: {shown}{_redact(str(err), token)}. "
            "No commit was made."
        ) from None
    return str(info.commit_url)


def _transport_errors() -> tuple[type[Exception], ...]:
    # huggingface_hub talks through httpx (1.x) or httpx2 (2.x): their connection/timeout errors are
    # not OSErrors, and only the one in use is installed.
    errors: list[type[Exception]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def _redact(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text
