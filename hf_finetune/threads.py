"""How many CPU threads each process uses, and a faster choice for phases made of small matmuls.

PyTorch starts as many OpenMP threads as the machine has cores, whatever else runs there. Two
2-thread ranks of one launch on 2 cores, or a job beside a notebook kernel, then oversubscribe the
cores, and OpenMP threads that spin-wait for a busy core make small matmuls (decoding, SB3
policies: 8x576 @ 576x1536) tens of times slower than one thread (bench/bench_threads.py). So:

* each process gets the cores it may use (``os.sched_getaffinity``) divided by the processes of
  its launch on this machine (``LOCAL_WORLD_SIZE``, which torchrun and accelerate set);
* a phase of small matmuls runs under :func:`small_matmul_threads`, and training under
  :func:`thread_policy_callback`: each times its kind of matmul with that count and with one
  thread, keeps whichever is faster, and measures again every minute;
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
import time

logger = logging.getLogger(__name__)

ENV_THREADS = "HF_FINETUNE_NUM_THREADS"
REMEASURE_S = 60.0
_applied: int | None = None
_choice: dict[tuple[int, int, int], tuple[int, float]] = {}  # shape -> (threads, when measured)


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


def _time_matmul(rows: int, hidden: int, out: int, threads: int, seconds: float) -> float:
    """Seconds per (rows x hidden) @ (hidden x out) matmul with ``threads``, over ~``seconds`` (>= 2 runs)."""
    import torch

    torch.set_num_threads(threads)
    # A generator of its own: drawing from torch's global one would shift every later random draw of
    # the run (data order, dropout, heads), so a seeded run would depend on whether and when the
    # policy measured (a notebook without an override gave 0.9708 where the CLI gives 0.9753).
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, hidden, generator=generator), torch.randn(hidden, out, generator=generator)
    a @ b  # the first call after a thread-count change starts the threads
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        elapsed = time.perf_counter() - start
        if (elapsed >= seconds and count >= 2) or count >= 2000:
            return elapsed / count


def fastest_threads(rows: int, hidden: int, out: int | None = None, seconds: float = 0.05,
                    max_age_s: float = REMEASURE_S) -> int:
    """The thread count (the policy's or 1) that runs this matmul shape faster right now.

    Measured in the process itself (~0.1-0.5 s), because whether extra threads help depends on what
    else runs: alone they do, beside a busy process they spin-wait for its core. The answer is kept
    for ``max_age_s`` seconds, then measured again (load changes during a run). With an override
    (``HF_FINETUNE_NUM_THREADS``/``OMP_NUM_THREADS``) nothing is measured: the override is used.
    """
    import torch

    out = out or 4 * hidden
    key = (rows, hidden, out)
    policy, _ = policy_threads()
    if policy == 1 or _override()[0] is not None:
        return policy
    cached = _choice.get(key)
    if cached is not None and time.monotonic() - cached[1] < max_age_s:
        return cached[0]
    previous = torch.get_num_threads()
    try:
        one = _time_matmul(rows, hidden, out, 1, seconds)
        many = _time_matmul(rows, hidden, out, policy, seconds)
    finally:
        torch.set_num_threads(previous)
    choice = policy if many < one else 1
    if cached is None or cached[0] != choice:
        logger.info("Matmuls of %dx%d @ %dx%d: %d thread(s) measured fastest (%.0f us with 1, %.0f us with %d).",
                    rows, hidden, hidden, out, choice, one * 1e6, many * 1e6, policy)
    _choice[key] = (choice, time.monotonic())
    return choice


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

    It times a matmul of the step's size (batch x length rows, the model's hidden width) with the
    policy's count and with one thread at the start and every ``every_s`` seconds. A different count
    sums in a different order, so weights differ in their last bits between runs that chose
    differently: with ``full_determinism`` (or an override) the count is fixed. The class is
    built on first use so that importing this module does not import transformers.
    """
    from transformers import TrainerCallback

    class ThreadPolicyCallback(TrainerCallback):
        def __init__(self) -> None:
            self.shape: tuple[int, int] | None = None
            self.checked = 0.0

        def _choose(self, force: bool = False) -> None:
            import torch

            if self.shape is None or (not force and time.monotonic() - self.checked < every_s):
                return
            self.checked = time.monotonic()
            torch.set_num_threads(fastest_threads(*self.shape, seconds=0.1, max_age_s=every_s))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            apply_thread_policy()
            if getattr(args, "full_determinism", False):
                # The thread count changes the summation order of matmuls, hence the last bits of the
                # weights: a run asked to be bitwise reproducible keeps one count.
                return
            config = getattr(model, "config", None)
            hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 384
            rows = max(1, args.per_device_train_batch_size) * 128
            self.shape = (min(rows, 4096), int(hidden))
            self._choose(force=True)

        def on_step_end(self, args, state, control, **kwargs):
            self._choose()

    return ThreadPolicyCallback()
