"""How many CPU threads each process uses, and a faster choice for phases made of small matmuls.

PyTorch starts as many OpenMP threads as the machine has cores, whatever else runs there. Two
2-thread ranks of one launch on 2 cores, or a job beside a notebook kernel, then oversubscribe the
cores, and OpenMP threads that spin-wait for a busy core make small matmuls (decoding, SB3
policies: 8x576 @ 576x1536) tens of times slower than one thread (bench/bench_threads.py). So:

* each process gets the cores it may use (``os.sched_getaffinity``) divided by the processes of
  its launch on this machine (``LOCAL_WORLD_SIZE``, which torchrun and accelerate set);
* a phase of small matmuls runs under :func:`small_matmul_threads`, and training under
  :func:`thread_policy_callback`: each times its kind of work (a matmul of the phase's size; one
  transformer layer's forward and backward on a micro-batch) with that count and with one thread
  (interleaved batches), keeps the count unless one thread is clearly faster, and measures again
  every minute;
* ``HF_FINETUNE_NUM_THREADS`` or an explicit ``OMP_NUM_THREADS`` overrides the count (and the
  small-matmul measurement, which then uses that count too); the choice is logged once.

Example:
    >>> from hf_finetune.threads import apply_thread_policy, small_matmul_threads
    >>> n = apply_thread_policy()           # e.g. 2 on a 2-core machine, 1 per rank of a 2-process run
    >>> with small_matmul_threads(hidden=576):
    ...     pass                              # generate(), SB3 rollouts, ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time

logger = logging.getLogger(__name__)

ENV_THREADS = "HF_FINETUNE_NUM_THREADS"
REMEASURE_S = 60.0
ROUNDS = 5  # interleaved timing batches per thread count
MARGIN = 0.05  # one thread must be this much faster (median paired ratio) to replace the policy's count
MAX_COST_SHARE = 50  # a measurement that took t seconds is kept at least 50 t seconds (<= 2% of the time)
_applied: int | None = None
_choice: dict[tuple, tuple[int, float, float]] = {}  # (probe, shape...) -> (threads, when, seconds it took)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this launch on this machine (1 outside torchrun/accelerate/mpirun)."""
    for name in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _override() -> tuple[int | None, str]:
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r}: set it to a whole number of threads >= 1 (or unset it).")
            return int(value), name
    return None, ""


def policy_threads() -> tuple[int, str]:
    """``(threads, why)`` for this process: the override, else usable cores / local processes."""
    override, name = _override()
    if override is not None:
        return override, f"{name}={override}"
    cores, procs = usable_cores(), local_processes()
    return max(1, cores // procs), f"{cores} usable core(s) / {procs} local process(es)"


def apply_thread_policy(threads: int | None = None) -> int:
    """Set ``torch``'s intra-op threads by the policy (or to ``threads``); log the choice once."""
    global _applied
    import torch

    if threads is not None:
        n, why = threads, "set by the caller"
    else:
        n, why = policy_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if _applied != n:
        logger.info("CPU threads per process: %d (%s; override with %s).", n, why, ENV_THREADS)
        _applied = n
    return n


def _time_batch(work, threads: int, seconds: float) -> float:
    """Seconds per ``work()`` call with ``threads``, over ~``seconds`` (at least one call).

    The first call after a thread-count change wakes (or starts) the other threads: it is left out
    when the batch has at least 3 calls (short work, where a wake-up is a large share of a call);
    a batch of one or two long calls keeps it (the wake-up is then a tiny share).
    """
    import torch

    torch.set_num_threads(threads)
    durations: list[float] = []
    start = time.perf_counter()
    while True:
        before = time.perf_counter()
        work()
        durations.append(time.perf_counter() - before)
        if time.perf_counter() - start >= seconds or len(durations) >= 2000:
            kept = durations[1:] if len(durations) >= 3 else durations
            return sum(kept) / len(kept)


def _interleaved(work, counts: tuple[int, ...], seconds: float, rounds: int = ROUNDS) -> dict[int, list[float]]:
    """Seconds per ``work()`` call, up to ``rounds`` short batches per thread count, the counts interleaved.

    The order is 1, n, n, 1, 1, n, ...: a batch of one count is next in time to one of the other, so a
    change in the background load, a scheduler tick taken by another task or the threads' start-up
    lands on one pair, and the median of the pairs drops it. One long window per count (the first
    version) let a single stall of a few ms decide: idle, it once kept 1 thread for a decoding-sized
    matmul that 2 threads ran 25% faster. Work so long that the batches overrun the budget
    (``seconds`` per count) twice stops after 3 rounds, or after 2 when both pairs differ more than
    2x the same way: the measurement is repeated every minute, and must stay a small share of it.
    """
    times: dict[int, list[float]] = {n: [] for n in counts}
    start = time.perf_counter()
    for index in range(rounds):
        for n in counts if index % 2 == 0 else counts[::-1]:
            times[n].append(_time_batch(work, n, seconds / rounds))
        over_budget = time.perf_counter() - start > 2 * seconds * len(counts)
        ratios = [m / o for o, m in zip(times[counts[0]], times[counts[-1]]) if o > 0]
        clear = len(ratios) >= 2 and (min(ratios) > 2 or max(ratios) < 0.5)
        if over_budget and (index + 1 >= min(3, rounds) or clear):
            break
    return times


def _time_matmul(rows: int, hidden: int, out: int, counts: tuple[int, ...], seconds: float,
                 rounds: int = ROUNDS) -> dict[int, list[float]]:
    """Seconds per (rows x hidden) @ (hidden x out) matmul per thread count (:func:`_interleaved`)."""
    import torch

    # A generator of its own: drawing from torch's global one would shift every later random draw of
    # the run (data order, dropout, heads), so a seeded run would depend on whether and when the
    # policy measured (a notebook without an override gave 0.9708 where the CLI gives 0.9753).
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, hidden, generator=generator), torch.randn(hidden, out, generator=generator)
    return _interleaved(lambda: a @ b, counts, seconds, rounds)


def _time_layer(batch: int, seq: int, hidden: int, heads: int, counts: tuple[int, ...], seconds: float,
                rounds: int = ROUNDS) -> dict[int, list[float]]:
    """Seconds per forward + backward of one transformer layer on a (batch, seq, hidden) micro-batch.

    A training step is thousands of parallel regions (attention per head, norms, activations, their
    gradients), most far shorter than one big matmul; beside a busy process each region can wait a
    time slice for a descheduled sibling thread. One big matmul hides that: beside busy processes a
    1024x576 @ 576x2304 matmul ran 0.8x as long with 2 threads as with 1, while PPO's update on
    SmolLM2 took 3.7x as long (312 s vs 85 s per step). This layer at PPO's micro-batch (8 x 46 x 576)
    measured 3.6-3.8x: the same granularity, the same answer.
    """
    import torch

    with torch.random.fork_rng(devices=[]):  # leave the run's random stream alone (see _time_matmul)
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, batch_first=True)
        x = torch.randn(batch, seq, hidden)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).pow(2).mean().backward()

    return _interleaved(step, counts, seconds, rounds)


def choose_threads(policy: int, times: dict[int, list[float]], margin: float = MARGIN) -> int:
    """The policy's count unless one thread is clearly faster in the paired timings ``times``.

    ``times[n][i]`` is the i-th batch's seconds per matmul with ``n`` threads; batches with the same ``i``
    ran next to each other. One thread is chosen when the median over pairs of (policy time / one-thread
    time) exceeds ``1 + margin``. On a tie the policy's count stays: idle, that is torch's default and
    what the machine was bought for; beside a busy process the spin-wait makes the policy's count 10-36x
    slower on small matmuls (1.15x on training-sized ones), far beyond the margin.

    Example:
        >>> choose_threads(2, {1: [1.0, 1.0, 1.0], 2: [0.8, 3.0, 0.8]})   # one stall in the 2-thread batches
        2
        >>> choose_threads(2, {1: [1.0, 1.0, 1.0], 2: [30.0, 0.9, 28.0]})  # spin-waiting beside a busy process
        1
    """
    if policy == 1:
        return 1
    ratios = [many / one for one, many in zip(times[1], times[policy]) if one > 0]
    if not ratios:
        return policy
    return 1 if statistics.median(ratios) > 1 + margin else policy


def _measured_choice(key: tuple, measure, what: str, max_age_s: float) -> int:
    """The policy's count or 1 for ``key``, by ``measure(counts)`` (paired timings), kept ``max_age_s`` seconds."""
    import torch

    policy, _ = policy_threads()
    if policy == 1 or _override()[0] is not None:
        return policy
    cached = _choice.get(key)
    # A measurement that took long (big work on a crowded machine: a layer probe took 20 s beside 4 busy
    # processes) is repeated less often, so that measuring stays under 1/MAX_COST_SHARE of the run.
    if cached is not None and max_age_s > 0 and time.monotonic() - cached[1] < max(max_age_s, cached[2] * MAX_COST_SHARE):
        return cached[0]
    previous = torch.get_num_threads()
    started = time.monotonic()
    try:
        times = measure((1, policy))
    finally:
        torch.set_num_threads(previous)
    choice = choose_threads(policy, times)
    if cached is None or cached[0] != choice:
        logger.info("%s: %d thread(s) chosen (median of %d batches: %.0f us with 1, %.0f us with %d).", what, choice,
                    len(times[1]), statistics.median(times[1]) * 1e6, statistics.median(times[policy]) * 1e6, policy)
    _choice[key] = (choice, time.monotonic(), time.monotonic() - started)
    return choice


def fastest_threads(rows: int, hidden: int, out: int | None = None, seconds: float = 0.1,
                    max_age_s: float = REMEASURE_S) -> int:
    """The thread count (the policy's or 1) that runs this matmul shape faster right now.

    Measured in the process itself (~0.2-0.5 s: ``seconds`` per count, in up to :data:`ROUNDS`
    interleaved batches), because whether extra threads help depends on what else runs: alone they
    do, beside a busy process they spin-wait for its core. The choice follows :func:`choose_threads`
    (the policy's count unless one thread is clearly faster). The answer is kept for ``max_age_s``
    seconds, then measured again (load changes during a run). With an override
    (``HF_FINETUNE_NUM_THREADS``/``OMP_NUM_THREADS``) nothing is measured: the override is used.
    """
    out = out or 4 * hidden
    return _measured_choice(("matmul", rows, hidden, out), lambda counts: _time_matmul(rows, hidden, out, counts, seconds),
                            f"Matmuls of {rows}x{hidden} @ {hidden}x{out}", max_age_s)


def fastest_training_threads(batch: int, seq: int, hidden: int, heads: int = 0, seconds: float = 0.1,
                             max_age_s: float = REMEASURE_S) -> int:
    """The thread count (the policy's or 1) that runs a training micro-batch faster right now.

    As :func:`fastest_threads`, timing one transformer layer's forward and backward on a
    ``batch x seq x hidden`` micro-batch (:func:`_time_layer`) instead of one matmul. ``heads``
    defaults to ``hidden // 64``; it is lowered until it divides ``hidden``.
    """
    heads = max(1, heads or hidden // 64)
    while hidden % heads:
        heads -= 1
    return _measured_choice(("layer", batch, seq, hidden, heads),
                            lambda counts: _time_layer(batch, seq, hidden, heads, counts, seconds),
                            f"Training micro-batches of {batch}x{seq}x{hidden}", max_age_s)


@contextlib.contextmanager
def small_matmul_threads(rows: int = 8, hidden: int = 576):
    """Run the block (decoding, SB3 rollouts) with the thread count that measures fastest, then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(fastest_threads(rows, hidden))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_policy_callback(every_s: float = REMEASURE_S):
    """A ``TrainerCallback`` that applies the policy at the start of training and keeps the faster count.

    It times one transformer layer's forward and backward on a micro-batch of the run's size
    (:func:`fastest_training_threads`: batch x length tokens, the model's width and heads) with the
    policy's count and with one thread, at the start and every ``every_s`` seconds. The length is
    the prompt and completion budget of RL configs (``max_prompt_length``, 32 when unset, plus
    ``max_completion_length``), else ``max_length``, else 128; at most 2,048 tokens are timed. A
    different count sums in a different order, so weights differ in their last bits between runs
    that chose differently: with ``full_determinism`` (or an override) the count is fixed. The class
    is built on first use so that importing this module does not import transformers.
    """
    from transformers import TrainerCallback

    class ThreadPolicyCallback(TrainerCallback):
        def __init__(self) -> None:
            self.shape: tuple[int, int, int, int] | None = None
            self.checked = 0.0

        def _choose(self, force: bool = False) -> None:
            import torch

            if self.shape is None or (not force and time.monotonic() - self.checked < every_s):
                return
            self.checked = time.monotonic()
            torch.set_num_threads(fastest_training_threads(*self.shape, seconds=0.1, max_age_s=every_s))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            apply_thread_policy()
            if getattr(args, "full_determinism", False):
                # The thread count changes the summation order of matmuls, hence the last bits of the
                # weights: a run asked to be bitwise reproducible keeps one count.
                return
            config = getattr(model, "config", None)
            hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 384
            heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 0
            if getattr(args, "max_completion_length", None):
                seq = (getattr(args, "max_prompt_length", None) or 32) + int(args.max_completion_length)
            else:
                seq = getattr(args, "max_length", None) or 128
            seq = max(1, min(int(seq), 2048))
            batch = max(1, min(int(args.per_device_train_batch_size or 1), 2048 // seq))
            self.shape = (batch, seq, int(hidden), int(heads))
            self._choose(force=True)

        def on_step_end(self, args, state, control, **kwargs):
            self._choose()

    return ThreadPolicyCallback()


def sb3_thread_policy_callback(every_s: float = REMEASURE_S):
    """A Stable-Baselines3 ``BaseCallback`` that gives rollouts and updates the faster thread count.

    An SB3 agent alternates between collecting a rollout (the policy on ``n_envs`` observations per
    step) and an update (``batch_size`` rows forward and backward). Both are small matmuls whose
    extra threads spin-wait beside a busy process, so each phase runs with :func:`fastest_threads` for
    its rows and the policy's widest layer, measured again every ``every_s`` seconds. Evaluation after
    training keeps the rollout's count. Built on first use (importing this module imports no SB3).

    Example:
        >>> model.learn(10_000, callback=sb3_thread_policy_callback())  # doctest: +SKIP
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    class SB3ThreadPolicyCallback(BaseCallback):
        def _on_training_start(self) -> None:
            apply_thread_policy()
            widths = [m.in_features for m in self.model.policy.modules() if isinstance(m, torch.nn.Linear)]
            self.hidden = max(widths, default=64)
            n_envs = self.model.n_envs
            self.rollout_rows = n_envs
            # PPO/DQN/SAC: batch_size rows per gradient step; A2C: the whole rollout (n_steps x n_envs).
            self.update_rows = getattr(self.model, "batch_size", None) or n_envs * getattr(self.model, "n_steps", 1)

        def _set(self, rows: int) -> int:
            n = fastest_threads(max(1, int(rows)), self.hidden, max_age_s=every_s)
            torch.set_num_threads(n)
            return n

        def _on_rollout_start(self) -> None:
            self._set(self.rollout_rows)

        def _on_rollout_end(self) -> None:
            self._set(self.update_rows)

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self._set(self.rollout_rows)

    return SB3ThreadPolicyCallback()
