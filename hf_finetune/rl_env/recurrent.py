"""``agent.algorithm: recurrent_ppo``: sb3-contrib's RecurrentPPO with an LSTM between the LM extractor and the heads.

Imported only for that algorithm (sb3-contrib is an optional extra, ``pip install sb3-contrib``). The
policies are sb3-contrib's ``MlpLstmPolicy`` / ``MultiInputLstmPolicy`` with one change: RecurrentPPO
cuts its rollout into episodes and pads them with all-zero observations to one length per minibatch
(the padded steps are masked out of the loss). All-zero token ids are no text (no sentence, no
token to attend to), so the LM extractor must not see them: the policies extract features of the
real rows only and give the padded rows zeros.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy, RecurrentMultiInputActorCriticPolicy

__all__ = ["LMLstmPolicy", "LMMultiInputLstmPolicy", "RecurrentPPO", "lstm_policy"]


def padding_rows(obs) -> torch.Tensor:
    """Rows of a batch (a tensor or a dict of tensors) whose every value is 0: RecurrentPPO's sequence padding."""
    parts = obs.values() if isinstance(obs, dict) else [obs]
    return torch.stack([part.reshape(part.shape[0], -1).eq(0).all(1) for part in parts]).all(0)


class _SkipPadding:
    def extract_features(self, obs, features_extractor=None):
        padding = padding_rows(obs)
        if not padding.any():
            return super().extract_features(obs, features_extractor)
        keep = ~padding
        kept = {key: value[keep] for key, value in obs.items()} if isinstance(obs, dict) else obs[keep]
        features = super().extract_features(kept, features_extractor)

        def scatter(rows: torch.Tensor) -> torch.Tensor:
            out = rows.new_zeros((padding.shape[0], *rows.shape[1:]))
            out[keep] = rows
            return out

        return tuple(scatter(f) for f in features) if isinstance(features, tuple) else scatter(features)


class LMLstmPolicy(_SkipPadding, RecurrentActorCriticPolicy):
    """sb3-contrib's ``MlpLstmPolicy`` whose features extractor never sees RecurrentPPO's padded steps.

    Example:
        >>> from hf_finetune.rl_env.extractor import LMFeaturesExtractor
        >>> agent = RecurrentPPO(LMLstmPolicy, env, policy_kwargs={  # doctest: +SKIP
        ...     "features_extractor_class": LMFeaturesExtractor, "lstm_hidden_size": 64})
    """


class LMMultiInputLstmPolicy(_SkipPadding, RecurrentMultiInputActorCriticPolicy):
    """sb3-contrib's ``MultiInputLstmPolicy`` (Dict observations) that skips padded steps, as :class:`LMLstmPolicy`."""


def lstm_policy(observation_space: spaces.Space) -> type:
    """The recurrent policy class for an observation space (Dict: the multi-input one)."""
    return LMMultiInputLstmPolicy if isinstance(observation_space, spaces.Dict) else LMLstmPolicy
