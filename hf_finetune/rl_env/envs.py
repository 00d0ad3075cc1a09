"""Text environments for SB3 agents: the token-id wrapper, BabyAI-Text and a text-classification bandit.

Registered with gymnasium under the ``hf_finetune/`` prefix (importing this module registers them):

* ``hf_finetune/BabyAI-Text-v0``: a ``minigrid`` BabyAI level whose partial 7x7 view is described in
  words (objects, colours, doors, walls, relative position in steps) after the mission, as in
  GLAM's BabyAI-Text; the seven BabyAI actions; ``info["is_success"]`` when the mission is done.
* ``hf_finetune/TextBandit-v0``: a one-step contextual bandit over a labelled text dataset (the
  observation is a text, the action a label, reward 1 when right).

Both come wrapped in :class:`TextObservationWrapper`, so the observation is a fixed-length ``Box``
of token ids that :class:`~hf_finetune.rl_env.extractor.LMFeaturesExtractor` reads.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .. import GYM_ENVS

TEXT_KEY = "text"

# ---------------------------------------------------------------------------------------------
# Token-id observation wrapper
# ---------------------------------------------------------------------------------------------


def _load_tokenizer(tokenizer: Any):
    if not isinstance(tokenizer, str):
        return tokenizer
    from ..config import ModelArguments
    from ..models import load_tokenizer

    return load_tokenizer(ModelArguments(model_name_or_path=tokenizer))


class TextObservationWrapper(gym.ObservationWrapper):
    """Turn a text observation (or the text entry of a ``Dict`` observation) into fixed-length token ids.

    The ids are padded with the tokenizer's pad id into a ``Box`` of ``int64`` (SB3 one-hot encodes
    ``MultiDiscrete``, which a transformer cannot use; a ``Box`` reaches the extractor as floats that
    convert back exactly). Every ``info`` reports ``text_truncated`` and ``text_tokens`` (the length
    before truncation); with ``truncation=False`` a text longer than ``max_length`` raises.

    Args:
        env: An env whose observation space is ``spaces.Text`` or a ``Dict`` with a ``Text`` entry.
        tokenizer: A tokenizer object, or a Hub id / folder to load one from.
        max_length: Tokens per observation, special tokens included.
        truncation: Cut longer texts (reported in ``info``) instead of raising.
        text_key: The ``Dict`` entry holding the text (default ``"text"``).

    Example:
        >>> env = TextObservationWrapper(TextBanditEnv(["a b", "c"], [0, 1]), "bert-base-uncased", 16)  # doctest: +SKIP
    """

    def __init__(self, env: gym.Env, tokenizer: Any, max_length: int = 64, truncation: bool = True,
                 text_key: str = TEXT_KEY):
        super().__init__(env)
        self.tokenizer = _load_tokenizer(tokenizer)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: give it one (tokenizer.pad_token = tokenizer.eos_token).")
        if max_length < 2:
            raise ValueError(f"max_length={max_length}: use at least 2 tokens.")
        self.max_length, self.truncation, self.text_key = max_length, truncation, text_key
        ids_space = spaces.Box(0, len(self.tokenizer) - 1, shape=(max_length,), dtype=np.int64)
        inner = env.observation_space
        if isinstance(inner, spaces.Text):
            self.observation_space = ids_space
        elif isinstance(inner, spaces.Dict) and isinstance(inner.spaces.get(text_key), spaces.Text):
            self.observation_space = spaces.Dict({**inner.spaces, text_key: ids_space})
        else:
            raise ValueError(
                f"TextObservationWrapper needs a spaces.Text observation or a Dict with a Text entry "
                f"'{text_key}'; got {inner}."
            )
        self._ids_cache: dict[str, tuple[np.ndarray, int]] = {}
        self._last_length = 0

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` padded to ``max_length`` (memoized: views repeat)."""
        hit = self._ids_cache.get(text)
        if hit is None:
            ids = self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
            if len(ids) > self.max_length:
                if not self.truncation:
                    raise ValueError(
                        f"A text observation has {len(ids)} tokens, more than max_length={self.max_length}, and "
                        f"truncation is off: raise max_length or set truncation=True. Text: {text[:120]!r}..."
                    )
                keep = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
            else:
                keep = ids
            row = np.full(self.max_length, self.tokenizer.pad_token_id, dtype=np.int64)
            row[: len(keep)] = keep
            hit = (row, len(ids))
            if len(self._ids_cache) < 100_000:
                self._ids_cache[text] = hit
        self._last_length = hit[1]
        return hit[0].copy()

    def decode(self, ids: np.ndarray) -> str:
        """The text of an id row, without padding and special tokens."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def observation(self, observation):
        if isinstance(observation, dict):
            return {**observation, self.text_key: self.encode(observation[self.text_key])}
        return self.encode(observation)

    def _report(self, info: dict) -> dict:
        info = dict(info)
        info["text_tokens"] = self._last_length
        info["text_truncated"] = self._last_length > self.max_length
        return info

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        return obs, self._report(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, self._report(info)


# ---------------------------------------------------------------------------------------------
# BabyAI-Text
# ---------------------------------------------------------------------------------------------

_OBJECTS = {2: "wall", 4: "door", 5: "key", 6: "ball", 7: "box", 8: "goal", 9: "lava"}
_COLORS = ["red", "green", "blue", "purple", "yellow", "grey"]
_COLOR_WORD = re.compile(r"\b(" + "|".join(_COLORS) + r")\b")
_DOOR_STATES = ["open", "closed", "locked"]
ACTION_NAMES = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle", "done"]
_MAX_STEPS_HERE = 7  # steps_here saturates: a full turn on the spot is 4
_CHARSET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;'-")


def _steps(n: int, word: str) -> str:
    return f"{n} step{'s' if n != 1 else ''} {word}"


def describe_view(image: np.ndarray, carrying: str | None = None, ahead: bool = False) -> list[str]:
    """Describe a minigrid partial view (``obs["image"]``, shape ``(w, h, 3)``) in short sentences.

    The agent stands at the bottom middle cell looking up. Each object, door and the nearest wall
    straight ahead, left and right is given with its offset in steps ("1 step left and 2 steps
    forward"). Written for this package, in the spirit of GLAM's BabyAI-Text descriptions.

    Args:
        image: The encoded view: ``image[x, y] = (object index, colour index, state)``.
        carrying: What the agent holds (e.g. ``"red key"``), if anything.
        ahead: Start with one sentence on the cell straight ahead, always present ("In front of you is
            a grey ball.", "... is nothing."), so a pooled view cannot lose whether the way is blocked.

    Returns:
        One sentence per thing seen, nearest first.
    """
    width, height = image.shape[0], image.shape[1]
    ax, ay = width // 2, height - 1
    seen: list[tuple[int, str]] = []
    for x in range(width):
        for y in range(height):
            if (x, y) == (ax, ay):
                continue
            obj, color, state = (int(v) for v in image[x, y])
            name = _OBJECTS.get(obj)
            if name is None or name == "wall":
                continue
            side = x - ax
            forward = ay - y
            where = []
            if side:
                where.append(_steps(abs(side), "left" if side < 0 else "right"))
            if forward:
                where.append(_steps(forward, "forward"))
            thing = f"{_COLORS[color]} {name}" if name not in ("goal", "lava") else name
            if name == "door":
                thing = f"{_DOOR_STATES[state]} {thing}"
            seen.append((abs(side) + forward, f"You see a {thing} {' and '.join(where)}."))
    seen.sort(key=lambda item: item[0])
    walls = []
    for label, cells in (
        ("forward", [(ax, ay - d) for d in range(1, height)]),
        ("left", [(ax - d, ay) for d in range(1, ax + 1)]),
        ("right", [(ax + d, ay) for d in range(1, width - ax)]),
    ):
        for distance, (x, y) in enumerate(cells, start=1):
            if int(image[x, y, 0]) == 2:
                walls.append(f"You see a wall {_steps(distance, label)}.")
                break
    sentences = [s for _, s in seen] + walls
    if carrying:
        sentences.insert(0, f"You carry a {carrying}.")
    if ahead:
        sentences.insert(0, f"In front of you is {_cell_name(image[ax, ay - 1])}.")
    return sentences


def _cell_name(cell: np.ndarray) -> str:
    obj, color, state = (int(v) for v in cell)
    name = _OBJECTS.get(obj)
    if name is None:
        return "nothing"
    if name in ("wall", "goal", "lava"):
        return f"a {name}" if name == "wall" else ("the goal" if name == "goal" else "lava")
    if name == "door":
        return f"a {_DOOR_STATES[state]} {_COLORS[color]} door"
    return f"a {_COLORS[color]} {name}"


def babyai_levels() -> list[str]:
    """The BabyAI level ids ``minigrid`` registers."""
    import minigrid  # noqa: F401 - registers the BabyAI levels

    return sorted(k for k in gym.registry if k.startswith("BabyAI-"))


def check_level(level: str) -> None:
    """Raise ``ValueError`` naming the closest BabyAI level ids when ``level`` is not one."""
    import difflib

    levels = babyai_levels()
    if level in levels:
        return
    close = difflib.get_close_matches(level, levels, n=5, cutoff=0.6)
    if not close:  # e.g. 'GoToObj' without prefix and version: match on the core name
        core = level.removeprefix("BabyAI-").split("-v")[0].lower()
        close = [k for k in levels if core and core in k.lower()][:5]
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"Unknown BabyAI level {level!r}. {hint}minigrid registers {len(levels)} levels, e.g. "
                     f"{', '.join(levels[:6])} (list them: hf_finetune.rl_env.envs.babyai_levels()).")


def mission_goal(env: gym.Env) -> str | None:
    """The object a BabyAI mission names, as ``"colour type"`` (``"red ball"``) or ``"type"`` when no colour.

    ``None`` for missions that name no single object (sequences, "and" missions).
    """
    desc = getattr(getattr(env.unwrapped, "instrs", None), "desc", None)
    if desc is None:
        return None
    return f"{desc.color} {desc.type}" if desc.color else str(desc.type)


class GoalSplitWrapper(gym.Wrapper):
    """Keep only episodes whose mission names a held-out goal, or only those that name none.

    Compositional generalisation: train with some colour/object combinations never asked for
    (``split="train"``), evaluate on exactly those (``split="held_out"``). Each colour and each object
    type still occurs in training, in other combinations. Episodes are redrawn from the level's own
    RNG after the first seeded reset, so a seed still gives a fixed sequence of episodes.

    Args:
        env: A minigrid BabyAI env.
        held_out: Goals as :func:`mission_goal` writes them, e.g. ``["red ball", "green key"]``.
        split: ``"train"`` (never a held-out goal) or ``"held_out"`` (only held-out goals).
        max_draws: Episodes drawn before giving up with an error.

    Example:
        >>> env = GoalSplitWrapper(gym.make("BabyAI-GoToLocalS6N2-v0"), ["red ball"], split="held_out")  # doctest: +SKIP
    """

    def __init__(self, env: gym.Env, held_out: list[str], split: str = "train", max_draws: int = 1000):
        super().__init__(env)
        if split not in ("train", "held_out"):
            raise ValueError(f"goal_split={split!r}: use 'train' or 'held_out'.")
        if not held_out:
            raise ValueError("held_out_goals is empty: name the goals to hold out, e.g. ['red ball', 'green key'].")
        self.held_out, self.split, self.max_draws = {str(g).lower() for g in held_out}, split, max_draws

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        for _ in range(self.max_draws):
            goal = mission_goal(self.env)
            if goal is None:
                raise ValueError(f"held_out_goals: the missions of {self.env.spec.id if self.env.spec else self.env} "
                                 f"name no single object ({self.env.unwrapped.mission!r}); use a GoTo/Pickup/Open level.")
            if (goal in self.held_out) == (self.split == "held_out"):
                return obs, info
            obs, info = self.env.reset(options=options)
        raise ValueError(f"No episode with a {'held-out' if self.split == 'held_out' else 'training'} goal in "
                         f"{self.max_draws} draws (held out: {sorted(self.held_out)}): check the goal names "
                         "('colour type', e.g. 'red ball').")


class BabyAITextEnv(gym.Env):
    """A BabyAI level from ``minigrid`` with its observation given as text.

    Observation (``spaces.Text``): ``"Mission: <mission>. <description of the view>"``; actions: the
    seven BabyAI actions (:data:`ACTION_NAMES`); reward: minigrid's (``1 - 0.9 * steps / max_steps``
    on success); ``info["is_success"]`` at the end of each episode.

    Args:
        level: A registered minigrid/BabyAI env id, e.g. ``"BabyAI-GoToObj-v0"``, or a list of them: each
            episode then comes from one drawn at random (a multi-level curriculum).
        max_chars: Maximum length of the text observation (for the ``Text`` space).
        symbolic: Also return the raw 7x7 view and direction in a ``Dict`` (``text``, ``image``, ``direction``).
        held_out_goals: Mission goals (``"red ball"``) held out of training; see :class:`GoalSplitWrapper`.
        goal_split: ``"train"`` (default: no held-out goal) or ``"held_out"`` (only held-out goals).
        describe_ahead: Start the view's description with what is straight ahead (see :func:`describe_view`).
        last_action: Also return the previous action in a ``Dict`` (``text``, ``last_action``): a ``Discrete(8)``
            entry, the action's index or 7 ("none") after a reset, which SB3 one-hot encodes next to the text.
            A policy that sees only the current view cannot tell that it has just turned there: greedy agents
            turned left on the spot forever, or walked into a key ahead, because no view in the loop said so.
        steps_here: Also return how many steps the agent has spent in its current cell, facing any way (0 when it
            has just arrived or after a reset; capped at 7), as a ``Discrete(8)`` entry ``steps_here``. It
            counts turns and bumps on the spot, which one last action cannot (four left turns look the same).
        permute_colors: Rename the six colours in the text by a permutation drawn at each reset (mission and
            view alike, so the episode is the same task in other words): an augmentation for training envs
            (set ``eval_env_kwargs: {permute_colors: false}``). The policy can then no longer learn each
            goal colour on its own; it has to match the mission's colour to the view's. On GoToRedBlueBall
            the failed runs had learned one of the two missions and looped on the other; with this option
            100k steps were too few (0.22-0.58 on 4 seeds, against 0.72-0.98 without).

    Example:
        >>> env = BabyAITextEnv("BabyAI-GoToObj-v0")
        >>> obs, info = env.reset(seed=0)
        >>> obs.startswith("Mission: go to the")
        True
    """

    metadata = {"render_modes": []}

    def __init__(self, level: str | list[str] = "BabyAI-GoToObj-v0", max_chars: int = 2048, symbolic: bool = False,
                 held_out_goals: list[str] | None = None, goal_split: str = "train", describe_ahead: bool = False,
                 last_action: bool = False, steps_here: bool = False, permute_colors: bool = False):
        self.describe_ahead, self.last_action, self.steps_here = describe_ahead, last_action, steps_here
        self.permute_colors, self._renamed = permute_colors, dict(zip(_COLORS, _COLORS))
        levels = [level] if isinstance(level, str) else list(level)
        if not levels:
            raise ValueError("level: give a BabyAI level id or a non-empty list of them.")
        for name in levels:
            check_level(name)
        self.level = level
        self.envs = [gym.make(name) for name in levels]
        if held_out_goals:
            self.envs = [GoalSplitWrapper(env, held_out_goals, goal_split) for env in self.envs]
        self.env = self.envs[0]
        self.action_space = self.env.action_space
        text_space = spaces.Text(max_length=max_chars, charset=_CHARSET)
        self.symbolic = symbolic
        self._none = int(self.action_space.n)  # the last_action value after a reset (no action yet)
        self._previous = self._none
        self._here = 0
        parts: dict[str, spaces.Space] = {}
        if symbolic:
            inner = self.env.observation_space
            parts.update(image=inner["image"], direction=inner["direction"])
        if last_action:
            parts["last_action"] = spaces.Discrete(self._none + 1)
        if steps_here:
            parts["steps_here"] = spaces.Discrete(_MAX_STEPS_HERE + 1)
        self.observation_space = spaces.Dict({TEXT_KEY: text_space, **parts}) if parts else text_space

    def _text(self, obs: dict) -> str:
        carrying = self.env.unwrapped.carrying
        held = f"{carrying.color} {carrying.type}" if carrying is not None else None
        text = " ".join([f"Mission: {obs['mission']}.", *describe_view(obs["image"], held, self.describe_ahead)])
        if self.permute_colors:
            text = _COLOR_WORD.sub(lambda match: self._renamed[match.group(0)], text)
        space = self.observation_space
        return text[: (space[TEXT_KEY] if isinstance(space, spaces.Dict) else space).max_length]

    def _obs(self, obs: dict):
        text = self._text(obs)
        if not isinstance(self.observation_space, spaces.Dict):
            return text
        out: dict[str, Any] = {TEXT_KEY: text}
        if self.symbolic:
            out.update(image=obs["image"], direction=obs["direction"])
        if self.last_action:
            out["last_action"] = self._previous
        if self.steps_here:
            out["steps_here"] = self._here
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if len(self.envs) > 1:  # draw the level, and seed it, from this env's RNG: a seed fixes the sequence
            self.env = self.envs[int(self.np_random.integers(len(self.envs)))]
            seed = int(self.np_random.integers(2**31))
        obs, info = self.env.reset(seed=seed, options=options)
        if self.permute_colors:
            self._renamed = dict(zip(_COLORS, (_COLORS[i] for i in self.np_random.permutation(len(_COLORS)))))
        self._previous, self._here = self._none, 0
        info = dict(info)
        info["level"] = self.env.spec.id if self.env.spec else str(self.level)
        return self._obs(obs), info

    def step(self, action):
        cell = tuple(self.env.unwrapped.agent_pos)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._previous = int(action)
        self._here = min(self._here + 1, _MAX_STEPS_HERE) if tuple(self.env.unwrapped.agent_pos) == cell else 0
        info = dict(info)
        if terminated or truncated:
            info["is_success"] = bool(terminated and reward > 0)
        return self._obs(obs), float(reward), terminated, truncated, info

    def close(self):
        for env in self.envs:
            env.close()


# ---------------------------------------------------------------------------------------------
# Text-classification bandit
# ---------------------------------------------------------------------------------------------


class TextBanditEnv(gym.Env):
    """A contextual bandit over labelled texts: see a text, answer its label, reward 1 when right.

    Every episode is one step. Episodes draw texts at random from the env's RNG (``reset(seed=...)``),
    or in order with ``sequential=True`` (a deterministic sweep for evaluation).

    Args:
        texts: The observations.
        labels: Integer label of each text.
        label_names: Names of the labels (the action meanings); default ``label_0`` ...
        max_chars: Maximum text length in characters (longer texts are cut).
        sequential: Go through the texts in order instead of sampling.

    Example:
        >>> env = TextBanditEnv(["goal", "chip"], [0, 1], ["sport", "tech"])
        >>> obs, _ = env.reset(seed=0)
        >>> env.step(env.labels[env.index])[1]
        1.0
    """

    metadata = {"render_modes": []}

    def __init__(self, texts: list[str], labels: list[int], label_names: list[str] | None = None,
                 max_chars: int = 4096, sequential: bool = False):
        if len(texts) == 0:
            raise ValueError("TextBanditEnv got no texts: check the dataset and its split.")
        if len(texts) != len(labels):
            raise ValueError(f"TextBanditEnv: {len(texts)} texts but {len(labels)} labels.")
        n = max(int(x) for x in labels) + 1 if label_names is None else len(label_names)
        if min(int(x) for x in labels) < 0 or max(int(x) for x in labels) >= n:
            raise ValueError(f"TextBanditEnv: labels must be integers in [0, {n}); got {sorted(set(labels))[:10]}.")
        self.texts = [str(t)[:max_chars] for t in texts]
        self.labels = [int(x) for x in labels]
        self.label_names = list(label_names) if label_names is not None else [f"label_{i}" for i in range(n)]
        self.sequential = sequential
        self.observation_space = spaces.Text(max_length=max_chars, min_length=0, charset=_bandit_charset(self.texts))
        self.action_space = spaces.Discrete(n)
        self.index = 0
        self._cursor = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.sequential:
            if seed is not None:
                self._cursor = 0
            self.index = self._cursor % len(self.texts)
            self._cursor += 1
        else:
            self.index = int(self.np_random.integers(len(self.texts)))
        return self.texts[self.index], {"label": self.labels[self.index]}

    def step(self, action):
        correct = int(action) == self.labels[self.index]
        info = {"label": self.labels[self.index], "is_success": correct}
        return self.texts[self.index], float(correct), True, False, info


def _bandit_charset(texts: list[str]) -> frozenset:
    chars = set()
    for text in texts:
        chars.update(text)
    return frozenset(chars) or frozenset("a")


def load_bandit_data(dataset: str, split: str = "train", text_column: str = "text", label_column: str = "label",
                     validation_size: float = 0.2, split_seed: int = 42, max_samples: int | None = None):
    """Texts, integer labels and label names of one split of a dataset from :mod:`hf_finetune.data`."""
    from datasets import DatasetDict

    from ..config import DataArguments
    from ..data import encode_labels, load_splits, require_columns

    args = DataArguments(dataset=dataset, text_column=text_column, label_column=label_column,
                         validation_size=validation_size, split_seed=split_seed)
    splits = load_splits(args, label_column=label_column)
    name = {"train": "train", "validation": "validation", "eval": "validation"}.get(split)
    if name is None:
        raise ValueError(f"split={split!r}: use 'train' or 'validation'.")
    ds = splits[name]
    require_columns(ds, [text_column, label_column], f"dataset {dataset}")
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=split_seed).select(range(max_samples))
    encoded, names = encode_labels(DatasetDict({"train": splits["train"], name: ds}), label_column, None)
    return list(ds[text_column]), list(encoded[name][label_column]), names


# ---------------------------------------------------------------------------------------------
# Registered factories (entry points of gym.make)
# ---------------------------------------------------------------------------------------------


def make_babyai_text(tokenizer: Any = "sentence-transformers/all-MiniLM-L6-v2", level: str = "BabyAI-GoToObj-v0",
                     max_length: int = 96, truncation: bool = True, symbolic: bool = False,
                     held_out_goals: list[str] | None = None, goal_split: str = "train",
                     describe_ahead: bool = False, last_action: bool = False, steps_here: bool = False,
                     permute_colors: bool = False) -> gym.Env:
    """BabyAI-Text with token-id observations (the entry point of ``hf_finetune/BabyAI-Text-v0``)."""
    env = BabyAITextEnv(level, symbolic=symbolic, held_out_goals=held_out_goals, goal_split=goal_split,
                        describe_ahead=describe_ahead, last_action=last_action, steps_here=steps_here,
                        permute_colors=permute_colors)
    return TextObservationWrapper(env, tokenizer, max_length=max_length, truncation=truncation)


def make_text_bandit(tokenizer: Any = "sentence-transformers/all-MiniLM-L6-v2", dataset: str | None = None,
                     texts: list[str] | None = None, labels: list[int] | None = None,
                     label_names: list[str] | None = None, split: str = "train", text_column: str = "text",
                     label_column: str = "label", validation_size: float = 0.2, split_seed: int = 42,
                     max_samples: int | None = None, max_length: int = 64, truncation: bool = True,
                     sequential: bool = False) -> gym.Env:
    """The text bandit with token-id observations (the entry point of ``hf_finetune/TextBandit-v0``).

    Give either ``dataset`` (anything :func:`hf_finetune.data.load_source` reads, e.g. ``bbc_news``
    with ``text_column: title``) or ``texts`` and ``labels`` directly.
    """
    if dataset is not None:
        texts, labels, label_names = load_bandit_data(
            dataset, split, text_column, label_column, validation_size, split_seed, max_samples
        )
    elif texts is None or labels is None:
        raise ValueError("hf_finetune/TextBandit-v0 needs dataset=... or texts=[...] and labels=[...].")
    env = TextBanditEnv(texts, labels, label_names, sequential=sequential)
    return TextObservationWrapper(env, tokenizer, max_length=max_length, truncation=truncation)


# The two envs of this package (a literal dict: gym.register is the registry).
ENTRY_POINTS = GYM_ENVS  # one table: hf_finetune/__init__.py registers these ids on import


def register_envs() -> None:
    """Register the package's envs with gymnasium (idempotent; done on import of this module)."""
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, disable_env_checker=True)


def registered_env_ids() -> list[str]:
    """The ids of this package's envs."""
    return sorted(ENTRY_POINTS)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with a clear error for an id that is not registered (lists the package's envs)."""
    register_envs()
    if env_id not in gym.registry:
        raise ValueError(
            f"Environment {env_id!r} is not registered. This package registers {registered_env_ids()}; "
            "any other gymnasium id works once its package is imported (e.g. 'BabyAI-GoToObj-v0' via minigrid)."
        )
    return gym.make(env_id, **kwargs)


register_envs()
