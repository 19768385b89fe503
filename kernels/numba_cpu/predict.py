"""The fused forward pass of an inference plan (``predict``, ``evaluate``) in one compiled call.

The plan (``fastnn.plan.InferencePlan``) is the forward pass in evaluation mode, where every op
is row-local: the rows are cut into chunks, and each thread of one parallel region carries its
chunks (every team-th) through every op in a workspace of its own, with single-threaded
matmuls and no barrier between layers. A call with too little work to share
(``fastnn.kernels.predict_split``) runs on the calling thread. Which thread runs a chunk does
not change its result.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import (ACT, ADD, BATCHNORM, BN_EPS, BN_MOMENTUM, DENSE, GELU, GELU_TANH, IN, KIND, NIN,
                NOUT, OUT, POFF, SILU, SKIP, SOFF, check_predict_arrays, predict_split)
from .._threads import choose_numba_layer, kernel_blas_threads
from ._own_gemm import own_gemm
from .batchnorm import bn_forward_col
from .dense import dense_forward_rows
from .interface import LAUNCH_LOCK, writeable_input
from .trainer import _borrowed, _view


@njit(inline="always", error_model="numpy")
def _infer_chunk(x, lane, act_size, ops, fops, params, state, own):
    """The m rows x (m × n_in) through every op, each op's output an (m, nout) block at its
    offset in ``lane`` (offset 0: x itself); the floats from ``act_size`` on are scratch
    (GELU's and SiLU's z, BatchNorm's 1/σ)."""
    m = x.shape[0]
    for o in range(ops.shape[0]):
        nin, nout = ops[o, NIN], ops[o, NOUT]
        src = x if ops[o, IN] == 0 else _view(lane, ops[o, IN], m, nin)
        dst = _view(lane, ops[o, OUT], m, nout)
        kind = ops[o, KIND]
        if kind == DENSE:                                 # a = f(x·W + b)
            p, act = ops[o, POFF], ops[o, ACT]
            keeps_z = act == GELU or act == GELU_TANH or act == SILU
            dense_forward_rows(src, _view(params, p, nin, nout),
                               params[p + nin * nout:p + nin * nout + nout], act, dst, 0, m,
                               _view(lane, act_size, m, nout) if keeps_z else dst, own)
        elif kind == BATCHNORM:                           # the running statistics
            p, s = ops[o, POFF], ops[o, SOFF]
            for j in range(nin):                          # (x̂ written into the output)
                bn_forward_col(j, src, params[p:p + nin], params[p + nin:p + 2 * nin],
                               state[s:s + nin], state[s + nin:s + 2 * nin],
                               fops[o, BN_MOMENTUM], fops[o, BN_EPS], False, dst, dst,
                               lane[act_size:act_size + nin])
        elif kind == ADD:                                 # y = x + block(x)
            skip = x if ops[o, SKIP] == 0 else _view(lane, ops[o, SKIP], m, nout)
            for i in range(m):
                for j in range(nout):
                    dst[i, j] = skip[i, j] + src[i, j]
        else:                                             # Standardize: (x − mean) / std
            s = ops[o, SOFF]
            for i in range(m):
                for j in range(nin):
                    dst[i, j] = (src[i, j] - state[s + j]) / state[s + nin + j]


@njit(inline="always", error_model="numpy")
def _finite(x):
    """Whether x holds no NaN or Inf: x − x is 0 for a finite x and NaN otherwise (with no
    branch, the loop vectorises)."""
    bad = False
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            bad |= (x[i, j] - x[i, j]) != 0
    return not bad


@njit(inline="always", error_model="numpy")
def _run_lane(t, team, X, n_in, out, output, chunk, lanes, act_size, ops, fops, params, state,
              own, bad):
    """Chunks t, t + team, … of the rows, in lane t of the workspace, each checked for NaN
    and Inf first (while its rows come into cache for the first matmul; bad[t] = 1 and the
    chunk skipped where one is); their output rows copied into out."""
    n, k = out.shape
    lane = lanes[t]
    for r0 in range(t * chunk, n, team * chunk):
        m = min(chunk, n - r0)
        x = _view(X, r0 * n_in, m, n_in)
        if not _finite(x):
            bad[t] = 1
            continue
        _infer_chunk(x, lane, act_size, ops, fops, params, state, own)
        y = _view(lane, output, m, k)
        for i in range(m):
            for j in range(k):
                out[r0 + i, j] = y[i, j]


@njit(parallel=True, cache=True, error_model="numpy")
def predict_kernel(X, n_in, out, output, chunk, team, lanes, act_size, ops, fops, params,
                   state, own, bad):
    """out (n, k) = the plan's output for the rows of X (flat, n × n_in): ``team`` threads,
    each with its lane of ``lanes`` (team × floats), chunks of ``chunk`` rows; ``own``: the
    matmuls may run on fastnn's kernel; bad[t] = 1 where thread t met a NaN or Inf."""
    X, out, lanes, ops, fops, params, state, bad = (
        _borrowed(X), _borrowed(out), _borrowed(lanes), _borrowed(ops), _borrowed(fops),
        _borrowed(params), _borrowed(state), _borrowed(bad))
    if team == 1:
        _run_lane(0, 1, X, n_in, out, output, chunk, lanes, act_size, ops, fops, params,
                  state, own, bad)
    else:
        for t in prange(team):
            _run_lane(t, team, X, n_in, out, output, chunk, lanes, act_size, ops, fops,
                      params, state, own, bad)


class Predictor:
    """Runs an inference plan's forward pass over any number of rows in one compiled call
    (see the module docstring); its workspace (one lane per thread) grows with the threads."""

    def __init__(self, plan):
        self.plan = plan
        self.lane = plan.act_size + plan.scratch_size
        self.lanes = np.zeros((0, self.lane), plan.dtype)

    def run(self, X, out) -> bool:
        """out (n, out_features) = the network's output for X (n, in_features); whether every
        value of X was finite (a chunk holding a NaN or Inf is skipped)."""
        plan = self.plan
        X = writeable_input(X, plan.dtype)
        check_predict_arrays(plan, X, out)
        o = writeable_input(out, plan.dtype)
        choose_numba_layer()                  # before numba.get_num_threads starts the pool
        chunk, team = predict_split(len(X), plan.rows, plan.work_per_row,
                                    numba.get_num_threads())
        if len(self.lanes) < team:
            self.lanes = np.zeros((team, self.lane), plan.dtype)
        bad = np.zeros(team, np.int64)
        with LAUNCH_LOCK, kernel_blas_threads(1):
            predict_kernel(X.reshape(-1), plan.in_features, o, plan.out, chunk, team,
                           self.lanes, plan.act_size, plan.ops, plan.fops, plan.params,
                           plan.state, own_gemm(), bad)
        if o is not out:
            out[...] = o
        return not bad.any()


def make_predictor(plan) -> Predictor:
    """The fused forward pass executing ``plan`` (a :class:`fastnn.plan.InferencePlan`)."""
    return Predictor(plan)
