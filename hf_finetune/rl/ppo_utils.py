"""The PPO math and critic modules of :class:`~hf_finetune.rl.ppo_trainer.PPOTrainer`.

Pure functions, unit-tested against hand-computed values, and the small modules that put a value
head on a policy backbone. Kept apart from the trainer so the trainer file holds only the loop.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

# ---------------------------------------------------------------------------------------------
# The math, as small pure functions (unit-tested against hand-computed values)
# ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce=None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over masked positions (unbiased variance); masked-out entries -> 0.

    ``reduce`` sums a tensor over processes (e.g. ``lambda t: accelerator.reduce(t, "sum")``), so that mean
    and variance are those of the global batch, as a 1-process run of the same batch would compute them.
    """
    reduce = reduce or (lambda t: t)
    total, n = reduce(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)])).unbind()
    mean = total / n.clamp(min=1)
    var = reduce(((x - mean) ** 2 * mask).sum()) / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimators of KL(pi || ref) from tokens sampled by pi (Schulman, "Approximating KL").

    Returns ``(k1, k3)`` with ``k1 = log pi - log ref`` and ``k3 = (r - 1) - log r``, ``r = ref / pi``.
    """
    log_ratio = logprobs - ref_logprobs
    k3 = torch.expm1(-log_ratio) + log_ratio
    return log_ratio, k3


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens; positions after the end are masked.

    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate; returns ``(loss, clipfrac, approxkl)``."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``; returns ``(loss, clipfrac)``."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac


class AdaptiveKLController:
    """Ziegler et al. (2019): ``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon``, kept >= ``minimum``.

    With ``target=None`` the coefficient stays fixed. The floor exists for short runs: the KL of the
    first steps is near 0 whatever beta is, so the plain controller cuts beta at its full rate there and
    then needs as many steps to raise it again once the KL overshoots (``minimum=value``: beta only rises,
    a KL ceiling).
    """

    def __init__(self, value: float, target: float | None = None, horizon: int = 10000, minimum: float = 0.0):
        self.value, self.target, self.horizon, self.minimum = float(value), target, horizon, float(minimum)

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value = max(self.minimum, self.value * (1.0 + error * n_steps / self.horizon))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class PolicyAndValue(nn.Module):
    """Policy plus critic in one module, so one optimizer, one ``accelerator.prepare`` and one DDP wrap cover both.

    ``value`` is either an ``AutoModelForSequenceClassification`` (its backbone's hidden states go
    through its scalar head at every position) or a ``nn.Linear`` head on the policy's last hidden state.
    """

    def __init__(self, policy: nn.Module, value: nn.Module, detach_value_input: bool = False):
        super().__init__()
        self.policy = policy
        self.value = value
        self.shared = isinstance(value, nn.Linear)
        self.detach_value_input = detach_value_input
        self.config = policy.config  # Trainer's model card and Hub push read the policy's config here
        self._checkpointed: list[nn.Module] = []

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        """What ``Trainer`` calls for ``activation_checkpointing=True``: the policy's layers and, for a separate
        critic, its backbone's layers recompute their activations in the backward pass."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        for model in (self.policy,) if self.shared else (self.policy, self.value):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if not getattr(base, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(base).__name__} does not support gradient checkpointing: set "
                                 "activation_checkpointing (gradient_checkpointing) to false.")
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                 every_n_layers=every_n_layers, offload=offload)
            if hasattr(model, "disable_adapter"):  # frozen embeddings: reentrant checkpointing needs a grad input
                base.enable_input_require_grads()
        self._checkpointed = [m for m in self.modules()
                              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]

    @contextlib.contextmanager
    def _checkpointing(self):
        # transformers checkpoints a layer only in train mode, but PPO runs in eval mode (no dropout, so the first
        # pass has ratio 1 exactly): flag the checkpointed layers alone as training; their submodules (dropout,
        # attention) stay in eval mode, so the recomputed forward is the same function.
        if not self._checkpointed or not torch.is_grad_enabled():
            yield
            return
        modes = [m.training for m in self._checkpointed]
        for m in self._checkpointed:
            m.training = True
        try:
            yield
        finally:
            for m, mode in zip(self._checkpointed, modes):
                m.training = mode

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep: int):
        with self._checkpointing():
            out = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=self.shared,
                use_cache=False,
                logits_to_keep=logits_to_keep + 1,
            )
            if self.shared:
                hidden = out.hidden_states[-1]
                # detach: the value loss trains the head only, not the policy weights it reads from.
                return out.logits, self.value(hidden.detach() if self.detach_value_input else hidden).squeeze(-1)
            backbone = getattr(self.value, self.value.base_model_prefix)
            hidden = backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            return out.logits, _value_head(self.value)(hidden).squeeze(-1)


def _value_head(model: nn.Module) -> nn.Module:
    for name in ("score", "classifier", "v_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(
        f"{type(model).__name__} has no `score`/`classifier` head: use a decoder AutoModelForSequenceClassification "
        "(num_labels=1) as the value model, or value_model='shared'."
    )


def value_model_from_policy(policy: nn.Module) -> nn.Module:
    """A critic with the policy's architecture and backbone weights and a zero-initialized scalar head."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    value = AutoModelForSequenceClassification.from_config(config, dtype=next(base.parameters()).dtype)
    # Same base_model_prefix in *ForCausalLM and *ForSequenceClassification: backbone keys match.
    # Under PEFT the base weights sit in `.base_layer` and the adapters are not part of the critic.
    prefix = value.base_model_prefix + "."
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()
             if k.startswith(prefix) and "lora_" not in k}
    missing, _ = value.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(prefix)]
    if missing:
        raise ValueError(f"Could not initialize the value model from the policy's backbone (missing {missing[:3]}): "
                         "pass value_model=... explicitly, or use value_model='shared'.")
    nn.init.zeros_(_value_head(value).weight)
    value.config.pad_token_id = base.config.pad_token_id
    return value.to(next(base.parameters()).device)


REF_ADAPTER = "ppo_reference"


def _freeze_starting_adapter(model) -> str | None:
    """With an adapter that already changes the policy (e.g. carried in from SFT), keep a frozen copy of it as the
    KL reference, so the reference is the starting policy; a fresh LoRA adapter (B = 0) needs none: the
    adapter-disabled base is then exactly the starting policy. Returns the reference adapter's name, or None."""
    params = dict(model.named_parameters())
    active = model.active_adapter
    adapter_keys = [k for k in params if f".{active}." in k]
    fresh = all(not params[k].any() for k in adapter_keys if "lora_B" in k or "lora_embedding_B" in k)
    fresh = fresh and not any(f"modules_to_save.{active}." in k or "trainable_tokens" in k for k in adapter_keys)
    if fresh:
        return None
    model.add_adapter(REF_ADAPTER, copy.deepcopy(model.peft_config[active]))
    with torch.no_grad():
        for key in adapter_keys:
            ref = model.get_parameter(key.replace(f".{active}.", f".{REF_ADAPTER}."))
            ref.copy_(params[key])
            ref.requires_grad_(False)
    model.set_adapter(active)  # PEFT marks the active adapter trainable and every other one frozen
    return REF_ADAPTER


@contextlib.contextmanager
def _adapter(model, name: str | None):
    """The reference forward: the frozen starting adapter when there is one, else the adapter-disabled base."""
    if name is None:
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(active)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # As generate() does for left-padded batches, so training logprobs match the sampled ones.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, entropy_grad: bool = False):
    logits = logits.float() / temperature
    logsumexp = torch.logsumexp(logits, dim=-1)
    logprobs = torch.gather(logits, 2, tokens.unsqueeze(-1)).squeeze(-1) - logsumexp
    # Entropy over the vocabulary is costly to differentiate; only keep its graph when it is in the loss.
    with contextlib.nullcontext() if entropy_grad else torch.no_grad():
        entropy = logsumexp - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs, entropy


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
