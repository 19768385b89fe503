"""A team of threads running one epoch of the fused trainer, and its barrier.

Starting a Numba parallel region costs ~120 µs with the workqueue threading layer on a 2-vCPU
VM, and its team is two worker threads while the calling thread sleeps: after a pause the OS
could wake both workers on one CPU, and a 2-thread deep step ran 950-1 100 µs for ~16 ms
before it settled at ~240. So the trainer uses no Numba region: :func:`run_team` runs member 0
on the calling thread and the others on helper threads of its own, each calling the epoch
kernel, which releases the GIL, and the members keep in step with :func:`team_wait`, which
spins for at most SPIN_TICKS of the time-stamp counter (a quiet machine's waits end there;
past YIELD_TICKS it also yields its CPU at each turn) and then sleeps on a futex, so a thread
waiting for a descheduled one gives its core up.

A barrier needs its members to run at the same time, which nothing promises (a helper may
wait long for the GIL while other Python threads hold it). So the team first meets in
:func:`team_join`: whoever does not see every member arrive within JOIN_TICKS takes the whole
run alone (``team_join`` returns SOLO to it and LEFT to the late ones), and a barrier is
entered only by a team whose members all run. The run's result does not depend on which
thread runs a band, so SOLO gives the same numbers.

The sync words live in a small int32 array (:func:`new_sync`). Linux only (the futex); other
systems train on one thread (:data:`AVAILABLE`).
"""
import os
import platform
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: whether a team can run here: the barrier sleeps on a Linux futex
AVAILABLE = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64",
                                                                         "aarch64")
_SYS_FUTEX = 98 if platform.machine() == "aarch64" else 202
_SYS_SCHED_YIELD = 124 if platform.machine() == "aarch64" else 24
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_INT_MAX = 2 ** 31 - 1
#: time-stamp-counter ticks a waiting thread spins before it sleeps: ~50 µs at 2.6 GHz
SPIN_TICKS = 1 << 17
#: ticks after which the spinning thread also yields its CPU at each turn (~1.5 µs), in case
#: the member it waits for shares its CPU
YIELD_TICKS = 1 << 12
#: ticks the first member to arrive waits for the others in team_join before running alone:
#: ~0.1 s at 2.6 GHz (a helper thread starts its member within ~0.1 ms on a quiet VM)
JOIN_TICKS = 1 << 28

# the words of a sync array
_ARRIVED, _GENERATION, _SLEEPERS, _JOINED, _MODE = range(5)
_UNDECIDED, _TOGETHER, _ALONE = 0, 1, 2           # the _MODE word
#: team_join's verdicts: run with the team, run the whole run alone, or do nothing
TOGETHER, SOLO, LEFT = 0, 1, 2

_syscall = types.ExternalFunction("syscall", types.int64(
    types.int64, types.intp, types.int64, types.int64, types.intp, types.intp, types.int64))


def new_sync() -> np.ndarray:
    """The zeroed words a team shares for one run."""
    return np.zeros(_MODE + 1, np.int32)


def _word(context, builder, ary_type, ary, index):
    ary = context.make_array(ary_type)(context, builder, value=ary)
    return cgutils.get_item_pointer(context, builder, ary_type, ary, [index])


@intrinsic
def _fetch_add(typingctx, sync, index, value):
    """sync[index] += value atomically (sequentially consistent); the old value."""
    def codegen(context, builder, sig, args):
        ptr = _word(context, builder, sig.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, context.cast(builder, args[2], sig.args[2],
                                                          types.int32), "seq_cst")
    return types.int32(sync, index, value), codegen


@intrinsic
def _load(typingctx, sync, index):
    """sync[index], read atomically (sequentially consistent)."""
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_word(context, builder, sig.args[0], args[0], args[1]),
                                   "seq_cst", 4)
    return types.int32(sync, index), codegen


@intrinsic
def _store(typingctx, sync, index, value):
    """sync[index] = value atomically (sequentially consistent)."""
    def codegen(context, builder, sig, args):
        builder.store_atomic(context.cast(builder, args[2], sig.args[2], types.int32),
                             _word(context, builder, sig.args[0], args[0], args[1]),
                             "seq_cst", 4)
        return context.get_dummy_value()
    return types.void(sync, index, value), codegen


@intrinsic
def _compare_swap(typingctx, sync, index, expected, value):
    """sync[index] = value if it holds expected, atomically; whether it did."""
    def codegen(context, builder, sig, args):
        i32 = lambda v, t: context.cast(builder, v, t, types.int32)   # noqa: E731
        ptr = _word(context, builder, sig.args[0], args[0], args[1])
        pair = builder.cmpxchg(ptr, i32(args[2], sig.args[2]), i32(args[3], sig.args[3]),
                               "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(sync, index, expected, value), codegen


@intrinsic
def _address(typingctx, sync, index):
    """The address of sync[index] (for the futex)."""
    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_word(context, builder, sig.args[0], args[0], args[1]),
                                context.get_value_type(types.intp))
    return types.intp(sync, index), codegen


@intrinsic
def _ticks(typingctx):
    """The CPU's cycle (time-stamp) counter."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 ``pause``, Arm ``yield``)."""
    def codegen(context, builder, sig, args):
        if platform.machine() == "aarch64":
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]),
                "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(ir.IntType(32), 1)])
        else:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(inline="always")
def _spin(start):
    """One turn of a spin-wait begun at tick ``start``: the pause hint, and past YIELD_TICKS
    the CPU yielded too (the member waited for may share it); the ticks spun so far."""
    _pause()
    spun = _ticks() - start
    if spun > YIELD_TICKS:
        _syscall(_SYS_SCHED_YIELD, 0, 0, 0, 0, 0, 0)
    return spun


@njit(inline="always")
def _wait_while(sync, index, value):
    """Until sync[index] != value: spin up to SPIN_TICKS, then sleep on the futex (woken by
    :func:`_wake`, which sees the sleeper count)."""
    start = _ticks()
    while _load(sync, index) == value:
        if _spin(start) > SPIN_TICKS:
            _fetch_add(sync, _SLEEPERS, 1)
            while _load(sync, index) == value:
                _syscall(_SYS_FUTEX, _address(sync, index), _FUTEX_WAIT_PRIVATE, value, 0, 0, 0)
            _fetch_add(sync, _SLEEPERS, -1)
            return


@njit(inline="always")
def _wake(sync, index):
    """Wake the threads sleeping on sync[index], if any."""
    if _load(sync, _SLEEPERS):
        _syscall(_SYS_FUTEX, _address(sync, index), _FUTEX_WAKE_PRIVATE, _INT_MAX, 0, 0, 0)


@njit(error_model="numpy", cache=True)
def team_join(sync, team):
    """Where a member of a ``team``-thread run starts: TOGETHER once all have arrived,
    SOLO for the one that waited JOIN_TICKS in vain (it runs everything), LEFT for members
    arriving after that (they do nothing)."""
    if _fetch_add(sync, _JOINED, 1) + 1 == team:           # the last to arrive
        return TOGETHER if _compare_swap(sync, _MODE, _UNDECIDED, _TOGETHER) else LEFT
    start = _ticks()
    while _load(sync, _MODE) == _UNDECIDED:
        if _spin(start) > JOIN_TICKS and _compare_swap(sync, _MODE, _UNDECIDED, _ALONE):
            return SOLO
    return TOGETHER if _load(sync, _MODE) == _TOGETHER else LEFT


@njit(error_model="numpy", cache=True)
def team_wait(sync, team):
    """Every member of a joined team waits here until all ``team`` have arrived."""
    if team <= 1:
        return
    generation = _load(sync, _GENERATION)
    if _fetch_add(sync, _ARRIVED, 1) + 1 == team:          # the last: release the others
        _store(sync, _ARRIVED, 0)
        _store(sync, _GENERATION, generation + 1)
        _wake(sync, _GENERATION)
        return
    _wait_while(sync, _GENERATION, generation)


@njit(inline="always")
def share(n, rank, team):
    """Member ``rank``'s [first, last) of n items, in contiguous static shares."""
    return n * rank // team, n * (rank + 1) // team


_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def _forget_helpers() -> None:
    """In a forked child: the parent's helper threads do not exist there (an executor that
    believed in them would never run what it is given), so the next team makes new ones."""
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's helper threads, at least ``workers`` of them (made on first use)."""
    global _helpers
    with _helpers_lock:
        if _helpers is None or _helpers._max_workers < workers:
            if _helpers is not None:
                _helpers.shutdown(wait=False)
            _helpers = ThreadPoolExecutor(workers, thread_name_prefix="fastnn-team")
        return _helpers


def run_team(kernel, team: int, *args) -> None:
    """``kernel(rank, team, *args)`` for every rank of a team: rank 0 on this thread, the
    others on helper threads; returns when all have. ``kernel`` must release the GIL."""
    if team == 1:
        kernel(0, 1, *args)
        return
    pool = _pool(team - 1)
    others = [pool.submit(kernel, rank, team, *args) for rank in range(1, team)]
    try:
        kernel(0, team, *args)
    finally:
        for future in others:
            future.result()
