"""Whole-epoch fusion: one compiled call trains an epoch (the fused-trainer protocol of
``Sequential._make_trainer``).

The model is encoded as a *plan*: integer arrays saying, per layer op, its kind, widths,
activation code and offsets into flat buffers — parameters, gradients, BatchNorm state, and a
workspace holding every layer's output (``acts``) and its gradient (``dacts``) for one batch
size. The epoch kernel interprets the plan for every minibatch: gather rows by ``order``,
forward, loss, backward, optimizer update, with no Python in between.

A step runs as *stages*. Dense layers, residual additions, the gather and the loss work row by
row, so consecutive ones form one parallel region in which each thread carries its own chunk of
rows through all of them (BLAS single-threaded per chunk). Each thread writes its dW, db into
its own copy of the gradient buffer (thread 0 into the model's); the optimizer region sums
those copies block by block and updates the parameters in the same pass. BatchNorm needs the
whole batch, so each BatchNorm forward or backward is a stage of its own, parallel over
features. A dense-only network thus costs one parallel region per step (two from 2 Mi
parameters, when the update is worth sharing too), and none when its batch carries too little
work to split (see ``_split.py``): then the whole step runs on the calling thread. Networks
with big layers (mnist-sized and up) also run serially, but with BLAS itself on all threads,
which hands work over faster than a Numba region does here.

Fusion is used for every model the plan can express: it beat the layer-by-layer path on every
benchmark network (µs per step, fused vs layer path, 2 threads, loaded 2-core machine: tiny 20
vs 45, small 112 vs 138, mnist 1146 vs 2497, deep 317 vs 2412, wide 95 000 vs 174 000).
"""
from __future__ import annotations

import weakref

import numba
import numpy as np
from numba import njit, prange
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from ...threads import kernel_blas_threads
from .. import IDENTITY
from .batchnorm import bn_backward_col, bn_forward_col
from .dense import activation_grad_rows, column_sums, dense_forward_rows
from .interface import LAUNCH_LOCK
from .losses import CODES, CROSS_ENTROPY, loss_rows
from .optimizers import ADAM, MOMENTUM, SGD, update_range
from ._split import (BLAS_THREADS_WORK, BLOCK, MIN_CHUNK_WORK, PARALLEL_UPDATE_BLOCKS,
                     row_split)

# op kinds, and the columns of the op table
DENSE, BATCHNORM, ADD = range(3)
KIND, IN, OUT, NIN, NOUT, ACT, POFF, SOFF, AUX, SKIP, DX, DSKIP = range(12)
# action phases (an action is one phase of one op) and stage kinds
GATHER, FORWARD, LOSS, BACKWARD = range(4)
ROWS, WHOLE_BATCH = range(2)


@intrinsic
def _borrowed(typingctx, ary):
    """ary without its memory owner (a null meminfo), so that the views taken of it skip
    Numba's atomic reference counting: on a tiny network those increments and decrements took
    18% of a step. Safe only while the caller holds ary, as the epoch kernel's caller does for
    every buffer it passes."""
    def codegen(context, builder, sig, args):
        out = context.make_array(sig.return_type)(context, builder, value=args[0])
        out.meminfo = cgutils.get_null_value(out.meminfo.type)
        return out._getvalue()
    return ary(ary), codegen


@intrinsic
def _view(typingctx, buf, off, rows, cols):
    """rows × cols C-contiguous view of a flat buffer at off, built in place: a slice and a
    reshape cost a call into Numba's runtime per view, tens per step. (No bounds check: the
    plan lays every view out inside its buffer.)"""
    view = types.Array(buf.dtype, 2, "C")

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, value=args[0])
        off, rows, cols = (context.cast(builder, v, t, types.intp)
                           for v, t in zip(args[1:], sig.args[1:]))
        item = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(buf.dtype)))
        out = context.make_array(view)(context, builder)
        context.populate_array(out, data=builder.gep(src.data, [off], inbounds=True),
                               shape=cgutils.pack_array(builder, [rows, cols]),
                               strides=cgutils.pack_array(builder, [builder.mul(cols, item),
                                                                    item]),
                               itemsize=item, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, view, out._getvalue())
    return view(buf, off, rows, cols), codegen


@njit(inline="always", error_model="numpy")
def _add_rows(dst, src, mode, r0, r1):
    """dst[r0:r1] = src (mode 1) or += src (mode 2)."""
    for i in range(r0, r1):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j] if mode == 1 else dst[i, j] + src[i, j]


@njit(cache=True, error_model="numpy")
def _row_actions(a, b, actions, c, r0, r1, nb, start, X, labels, Y, order, ops, params, grads,
                 partials, acts, dacts, tmp, labels_b, Yb, loss_code, lossp, corrp):
    """Run the row-local actions a:b for rows r0:r1 (chunk c) of the current minibatch."""
    for k in range(a, b):
        _row_action(actions[k, 0], actions[k, 1], c, r0, r1, nb, start, X, labels, Y, order,
                    ops, params, grads, partials, acts, dacts, tmp, labels_b, Yb, loss_code,
                    lossp, corrp)


@njit(inline="always", error_model="numpy")
def _row_action(phase, op, c, r0, r1, nb, start, X, labels, Y, order, ops, params, grads,
                partials, acts, dacts, tmp, labels_b, Yb, loss_code, lossp, corrp):
    """Run one row-local action for rows r0:r1 (chunk c) of the current minibatch."""
    if phase == GATHER:                                   # minibatch rows order[start + i]
        Xb = _view(acts, 0, nb, X.shape[1])
        for i in range(r0, r1):                           # (element loops: a row
            src = order[start + i]                        # assignment costs 10x more)
            for j in range(X.shape[1]):
                Xb[i, j] = X[src, j]
            if labels.shape[0]:
                labels_b[i] = labels[src]
            if Y.shape[0]:
                for j in range(Y.shape[1]):
                    Yb[i, j] = Y[src, j]
        return
    if phase == LOSS:
        out_op = ops.shape[0] - 1
        k = ops[out_op, NOUT]
        Z = _view(acts, ops[out_op, OUT], nb, k)
        dZ = _view(dacts, ops[out_op, OUT], nb, k)
        lossp[c], corrp[c] = loss_rows(loss_code, Z, labels_b, Yb[:nb], dZ, nb, r0, r1)
        return
    nin, nout = ops[op, NIN], ops[op, NOUT]
    x_in = _view(acts, ops[op, IN], nb, nin)
    a_out = _view(acts, ops[op, OUT], nb, nout)
    if ops[op, KIND] == ADD:                              # y = x + block(x)
        x_skip = _view(acts, ops[op, SKIP], nb, nout)
        if phase == FORWARD:
            for i in range(r0, r1):
                for j in range(nout):
                    a_out[i, j] = x_skip[i, j] + x_in[i, j]
        else:                                             # ∂L/∂x and ∂L/∂block(x) = ∂L/∂y
            d_out = _view(dacts, ops[op, OUT], nb, nout)
            _add_rows(_view(dacts, ops[op, IN], nb, nin), d_out, ops[op, DX], r0, r1)
            if ops[op, DSKIP]:
                _add_rows(_view(dacts, ops[op, SKIP], nb, nin), d_out, ops[op, DSKIP], r0, r1)
        return
    p = ops[op, POFF]
    W = _view(params, p, nin, nout)
    if phase == FORWARD:
        dense_forward_rows(x_in, W, params[p + nin * nout:p + nin * nout + nout], ops[op, ACT],
                           a_out, r0, r1)
        return
    dZ = _view(dacts, ops[op, OUT], nb, nout)
    activation_grad_rows(dZ, a_out, ops[op, ACT], r0, r1)   # dZ = ∂L/∂a ⊙ f′(z)
    G = grads if c == 0 else partials[c - 1]              # this chunk's share of ∂L/∂W, ∂L/∂b
    np.dot(x_in[r0:r1].T, dZ[r0:r1], _view(G, p, nin, nout))
    column_sums(dZ, r0, r1, G[p + nin * nout:p + nin * nout + nout])
    mode = ops[op, DX]
    if mode == 1:
        np.dot(dZ[r0:r1], W.T, _view(dacts, ops[op, IN], nb, nin)[r0:r1])   # dX = dZ Wᵀ
    elif mode == 2:                                       # dX += dZ Wᵀ (x also feeds a skip)
        T = _view(tmp, 0, nb, nin)
        np.dot(dZ[r0:r1], W.T, T[r0:r1])
        _add_rows(_view(dacts, ops[op, IN], nb, nin), T, 2, r0, r1)


@njit(inline="always", error_model="numpy")
def _bn_stage(j, phase, op, nb, batch, ops, fops, params, grads, state, acts, dacts, aux):
    """Feature j of a BatchNorm op's forward (training mode) or backward pass."""
    m, p, s, x = ops[op, NIN], ops[op, POFF], ops[op, SOFF], ops[op, AUX]
    xhat = _view(aux, x, nb, m)
    inv_std = aux[x + batch * m:x + batch * m + m]
    gamma = params[p:p + m]
    if phase == FORWARD:
        bn_forward_col(j, _view(acts, ops[op, IN], nb, m), gamma, params[p + m:p + 2 * m],
                       state[s:s + m], state[s + m:s + 2 * m], fops[op, 0], fops[op, 1], True,
                       _view(acts, ops[op, OUT], nb, m), xhat, inv_std)
    else:
        bn_backward_col(j, _view(dacts, ops[op, OUT], nb, m), xhat, inv_std, gamma,
                        _view(dacts, ops[op, IN], nb, m), ops[op, DX], grads[p:p + m],
                        grads[p + m:p + 2 * m])


@njit(inline="always", error_model="numpy")
def _update_block(blk, nchunk, opt_code, params, grads, partials, s1, s2, lr, mu, b1, b2, eps,
                  t):
    """Sum the chunks' gradients over one block of the flat buffer, then update it."""
    lo, hi = blk * BLOCK, min(params.shape[0], blk * BLOCK + BLOCK)
    g = grads[lo:hi]
    for c in range(1, nchunk):
        part = partials[c - 1, lo:hi]
        for i in range(g.shape[0]):
            g[i] += part[i]
    update_range(opt_code, params, grads, s1, s2, lo, hi, lr, mu, b1, b2, eps, t)


@njit(parallel=True, cache=True, error_model="numpy")
def epoch_kernel(X, labels, Y, order, batch, ops, fops, actions, stages, params, grads, state,
                 s1, s2, partials, acts, dacts, aux, tmp, labels_b, Yb, lossp, corrp,
                 loss_code, opt_code, hyper, step, threads, work_per_row, min_chunk_work):
    """Train one epoch over minibatches order[s:s + batch]; return (Σ row losses, n right).

    Where the batch is too small to split (one chunk), every stage runs serially: a parallel
    region costs more than it saves there, and far more on a loaded machine.
    """
    X, labels, Y, order, ops, fops, actions = (
        _borrowed(X), _borrowed(labels), _borrowed(Y), _borrowed(order), _borrowed(ops),
        _borrowed(fops), _borrowed(actions))
    params, grads, partials, state, s1, s2 = (
        _borrowed(params), _borrowed(grads), _borrowed(partials), _borrowed(state),
        _borrowed(s1), _borrowed(s2))
    acts, dacts, aux, tmp, labels_b, Yb, lossp, corrp = (
        _borrowed(acts), _borrowed(dacts), _borrowed(aux), _borrowed(tmp), _borrowed(labels_b),
        _borrowed(Yb), _borrowed(lossp), _borrowed(corrp))
    n = order.shape[0]
    lr, mu, b1, b2, eps = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    total, right = 0.0, 0
    n_blocks = (params.shape[0] + BLOCK - 1) // BLOCK
    for start in range(0, n, batch):
        nb = min(batch, n - start)
        # at most one chunk per gradient buffer, whatever row_split was compiled with
        q, nchunk = row_split(nb, min(threads, partials.shape[0] + 1), work_per_row,
                              min_chunk_work)
        serial = nchunk == 1
        for st in range(stages.shape[0]):
            a, b = stages[st, 1], stages[st, 2]
            # (chunk indices passed as int64 in both calls: one compiled _row_actions)
            if stages[st, 0] == ROWS and serial:
                c = np.int64(0)
                _row_actions(a, b, actions, c, c, nb, nb, start, X, labels, Y, order, ops,
                             params, grads, partials, acts, dacts, tmp, labels_b, Yb,
                             loss_code, lossp, corrp)
            elif stages[st, 0] == ROWS:
                for ci in prange(nchunk):
                    c = np.int64(ci)
                    _row_actions(a, b, actions, c, c * q, min(nb, c * q + q), nb, start, X,
                                 labels, Y, order, ops, params, grads, partials, acts, dacts,
                                 tmp, labels_b, Yb, loss_code, lossp, corrp)
            else:                                         # BatchNorm over the whole batch
                phase, op = actions[a, 0], actions[a, 1]
                if serial:
                    for j in range(ops[op, NIN]):
                        _bn_stage(j, phase, op, nb, batch, ops, fops, params, grads, state,
                                  acts, dacts, aux)
                else:
                    for j in prange(ops[op, NIN]):
                        _bn_stage(j, phase, op, nb, batch, ops, fops, params, grads, state,
                                  acts, dacts, aux)
        for c in range(nchunk):
            total += lossp[c]
            right += corrp[c]
        step[0] += 1
        t = step[0]
        if threads == 1 or n_blocks < PARALLEL_UPDATE_BLOCKS:
            for blk in range(n_blocks):
                _update_block(blk, nchunk, opt_code, params, grads, partials, s1, s2, lr, mu,
                              b1, b2, eps, t)
        else:
            for blk in prange(n_blocks):
                _update_block(blk, nchunk, opt_code, params, grads, partials, s1, s2, lr, mu,
                              b1, b2, eps, t)
    return total, right


class _Planner:
    """Walks the layers in the order the model binds them, laying out ops and buffers."""

    def __init__(self, batch: int):
        self.batch = batch
        self.ops: list[list[int]] = []
        self.fops: list[tuple[float, float]] = []
        self.act_size = 0
        self.aux_size = 0
        self.p = self.s = 0

    def buffer(self, width: int) -> int:
        off, self.act_size = self.act_size, self.act_size + self.batch * width
        return off

    def op(self, kind, src, width_in, width_out, act=IDENTITY, aux=0, skip=0, fop=(0.0, 0.0)):
        out = self.buffer(width_out)
        self.ops.append([kind, src, out, width_in, width_out, act, self.p, self.s, aux, skip,
                         0, 0])
        self.fops.append(fop)
        return out

    def add(self, layers, src: int, logits_last: bool) -> int | None:
        from fastnn.layers import BatchNorm, Dense, Residual

        for i, layer in enumerate(layers):
            if isinstance(layer, Dense):
                act = IDENTITY if logits_last and i == len(layers) - 1 else layer._code
                src = self.op(DENSE, src, layer.in_features, layer.out_features, act)
            elif isinstance(layer, BatchNorm):
                n = layer.in_features
                src = self.op(BATCHNORM, src, n, n, aux=self.aux_size,
                              fop=(layer.momentum, layer.eps))
                self.aux_size += self.batch * n + n
            elif isinstance(layer, Residual):
                h = self.add(layer.block, src, False)
                if h is None:
                    return None
                src = self.op(ADD, h, layer.in_features, layer.out_features, skip=src)
                continue                                  # the block advanced p and s
            else:
                return None
            self.p += layer.n_params
            self.s += layer.n_state
        return src

    def gradient_modes(self) -> None:
        """Per op, whether its input gradient is skipped (0: the data), written (1: first
        writer, walking backwards) or accumulated (2: a buffer that also feeds a skip)."""
        written = set()
        for row in reversed(self.ops):
            for field, buf in ((DX, row[IN]), (DSKIP, row[SKIP] if row[KIND] == ADD else 0)):
                if buf == 0:
                    continue
                row[field] = 2 if buf in written else 1
                written.add(buf)

    def schedule(self):
        """(actions, stages): the step's actions in order, grouped into parallel stages."""
        actions = [(GATHER, 0)] + [(FORWARD, k) for k in range(len(self.ops))] + [(LOSS, 0)]
        actions += [(BACKWARD, k) for k in reversed(range(len(self.ops)))]
        stages = []
        for a, (_, op) in enumerate(actions):
            whole = actions[a][0] in (FORWARD, BACKWARD) and self.ops[op][KIND] == BATCHNORM
            if whole:
                stages.append((WHOLE_BATCH, a, a + 1))
            elif stages and stages[-1][0] == ROWS and stages[-1][2] == a:
                stages[-1] = (ROWS, stages[-1][1], a + 1)
            else:
                stages.append((ROWS, a, a + 1))
        return np.array(actions, np.int64), np.array(stages, np.int64)


class _Plan:
    """A model's plan for one (batch size, loss form) and the workspace it trains in,
    built once and reused by every later fit with that batch size."""

    def __init__(self, model, batch: int, planner: _Planner):
        dt = model.dtype
        self.batch = batch
        self.ops = np.array(planner.ops, np.int64)
        self.fops = np.array(planner.fops, np.float64).reshape(-1, 2)
        self.actions, self.stages = planner.schedule()
        dense = self.ops[self.ops[:, KIND] == DENSE]
        #: multiply-adds per row of a forward pass: what decides whether to split the batch
        self.work_per_row = int((dense[:, NIN] * dense[:, NOUT]).sum())
        #: whether a batch worth splitting runs serially on threaded BLAS instead (big layers)
        self.threaded_blas = batch * int((dense[:, NIN] * dense[:, NOUT]).max()) \
            >= BLAS_THREADS_WORK
        width = int(max(self.ops[:, NIN].max(), self.ops[:, NOUT].max()))
        self.acts = np.zeros(planner.act_size, dt)
        self.dacts = np.zeros(planner.act_size, dt)
        self.aux = np.zeros(max(planner.aux_size, 1), dt)
        self.tmp = np.zeros(batch * width, dt)
        self.labels_b = np.zeros(batch, np.int64)
        self.Yb = np.zeros((batch, model.out_features), dt)
        self.empty = np.zeros(0, dt)
        self.n_params = model.parameters().size
        self.partials = np.zeros((0, self.n_params), dt)
        self.lossp, self.corrp = np.zeros(1), np.zeros(1, np.int64)

    def split(self, threads: int) -> tuple[int, int]:
        """(threads the epoch kernel splits rows over, threads BLAS may use): a batch worth
        splitting goes to row chunks, or, with big layers, to threaded BLAS called serially."""
        if row_split(self.batch, threads, self.work_per_row)[1] == 1:
            return 1, 1
        return (1, threads) if self.threaded_blas else (threads, 1)

    def chunk_buffers(self, threads: int):
        """(partials, lossp, corrp) for as many row chunks as ``threads`` may use: per extra
        chunk a gradient buffer (entries no chunk writes, BatchNorm's, stay 0)."""
        extra = row_split(self.batch, threads, self.work_per_row)[1] - 1
        if self.partials.shape[0] < extra:
            self.partials = np.zeros((extra, self.n_params), self.partials.dtype)
            self.lossp, self.corrp = np.zeros(extra + 1), np.zeros(extra + 1, np.int64)
        return self.partials, self.lossp, self.corrp


#: per model: {(batch size, loss takes logits): _Plan}
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Trainer:
    """Runs whole epochs of ``model.fit`` in one compiled call (see the module docstring).

    It trains the model's own parameter, gradient and state buffers and the optimizer's own
    state arrays in place, so :meth:`sync` has nothing to copy back.
    """

    def __init__(self, model, loss, optimizer, plan: _Plan):
        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.loss_code = CODES[loss.kernel]

    def run_epoch(self, X, y, order):
        """Train one epoch on the minibatches order[i:i + batch]; see Sequential._make_trainer."""
        model, opt, plan = self.model, self.optimizer, self.plan
        params = model.parameters()
        opt.ensure_state(params)
        code, s1, s2 = _optimizer_state(opt, plan.empty)
        hyper = np.array([opt.lr, getattr(opt, "momentum", 0.0), getattr(opt, "beta1", 0.0),
                          getattr(opt, "beta2", 0.0), getattr(opt, "eps", 0.0)])
        step = np.array([getattr(opt, "t", 0)], np.int64)
        if self.loss_code == CROSS_ENTROPY:
            labels, Y = np.ascontiguousarray(y, np.int64), plan.Yb[:0]
        else:
            labels, Y = plan.labels_b[:0], np.ascontiguousarray(y, model.dtype)
        threads, blas_threads = plan.split(numba.get_num_threads())
        partials, lossp, corrp = plan.chunk_buffers(threads)
        with LAUNCH_LOCK, kernel_blas_threads(blas_threads):
            total, right = epoch_kernel(
                np.ascontiguousarray(X, model.dtype), labels, Y,
                np.ascontiguousarray(order, np.int64), plan.batch, plan.ops, plan.fops,
                plan.actions, plan.stages, params, model.gradients(), model._state, s1, s2,
                partials, plan.acts, plan.dacts, plan.aux, plan.tmp, plan.labels_b, plan.Yb,
                lossp, corrp, self.loss_code, code, hyper, step, threads, plan.work_per_row,
                MIN_CHUNK_WORK)
        if code == ADAM:
            opt.t = int(step[0])
        return total, (None if right < 0 else int(right))

    def sync(self) -> None:
        """Nothing to copy: the kernel trained the model's and optimizer's own buffers."""


def _optimizer_state(opt, empty):
    """(optimizer code, first state buffer, second state buffer) for the update kernel."""
    from fastnn.optimizers import Adam

    if isinstance(opt, Adam):
        return ADAM, opt.m, opt.v
    return (MOMENTUM, opt.velocity, empty) if opt.momentum else (SGD, empty, empty)


def make_trainer(model, loss, optimizer, batch_size: int):
    """A :class:`Trainer` for this model, or None where the layer-by-layer path must run
    (a layer or optimizer type this planner does not know)."""
    from fastnn.optimizers import SGD as SGDClass, Adam

    if type(optimizer) not in (SGDClass, Adam):
        return None
    plans = _PLANS.setdefault(model, {})
    key = (batch_size, loss.on_logits)
    if key not in plans:
        if len(plans) >= 4:                               # bound memory, like the model's
            plans.clear()                                 # own per-batch-size workspaces
        planner = _Planner(batch_size)
        planner.buffer(model.in_features)                 # acts[0]: the gathered minibatch
        if planner.add(model.layers, 0, loss.on_logits) is None:
            plans[key] = None
        else:
            planner.gradient_modes()
            plans[key] = _Plan(model, batch_size, planner)
    if plans[key] is None:
        return None
    optimizer.ensure_state(model.parameters())
    return Trainer(model, loss, optimizer, plans[key])
