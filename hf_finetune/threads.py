"""How many CPU threads each process uses, and a faster choice for phases made of small matmuls.

PyTorch starts as many OpenMP threads as the machine has cores, whatever else runs there. Two
2-thread ranks of one launch on 2 cores, or a job beside a notebook kernel, then oversubscribe the
cores, and OpenMP threads that spin-wait for a busy core make small matmuls (decoding, SB3
policies: 8x576 @ 576x1536) tens of times slower than one thread (bench/bench_threads.py). So:

* each process gets the cores it may use (``os.sched_getaffinity``) divided by the processes of
  its launch on this machine (``LOCAL_WORLD_SIZE``, which torchrun and accelerate set);
* a phase of small matmuls runs under :func:`small_matmul_threads`, which times that phase's
  kind of matmul with that count and with one thread, and keeps whichever is faster;
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
_applied: int | None = None
_small_choice: dict[tuple[int, int], int] = {}


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


def _time_matmul(rows: int, hidden: int, threads: int, seconds: float) -> float:
    """Seconds per matmul of (rows x hidden) @ (hidden x 4*hidden) with ``threads``, over ~``seconds``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(rows, hidden), torch.randn(hidden, 4 * hidden)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or count >= 2000:
            return elapsed / count


def fastest_small_matmul_threads(rows: int = 8, hidden: int = 576, seconds: float = 0.05) -> int:
    """The thread count (policy's or 1) that runs this phase's matmul faster right now; cached.

    Measured in the process itself (~0.1-0.2 s), because whether extra threads help depends on
    what else is running: on an idle machine they do, beside a busy process they spin-wait.
    """
    import torch

    key = (rows, hidden)
    if key in _small_choice:
        return _small_choice[key]
    policy, _ = policy_threads()
    previous = torch.get_num_threads()
    choice = 1
    if policy > 1 and _override()[0] is None:
        one = _time_matmul(rows, hidden, 1, seconds)
        many = _time_matmul(rows, hidden, policy, seconds)
        choice = policy if many < one else 1
        logger.info("Small matmuls (%dx%d @ %dx%d): %d thread(s) (%.0f us with 1, %.0f us with %d).", rows, hidden,
                    hidden, 4 * hidden, choice, one * 1e6, many * 1e6, policy)
    elif policy > 1:
        choice = policy
    torch.set_num_threads(previous)
    _small_choice[key] = choice
    return choice


@contextlib.contextmanager
def small_matmul_threads(rows: int = 8, hidden: int = 576):
    """Run the block with the thread count that measured fastest for small matmuls, then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(fastest_small_matmul_threads(rows, hidden))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
