"""Whole-epoch fusion: one compiled call trains an epoch of a training plan.

The plan (built by ``fastnn.plan``; its op table is documented there) is integer and float
arrays: per op its kind, widths, activation code and offsets into the flat parameter, gradient
and BatchNorm-state buffers and into a workspace holding every op's output (``acts``) and its
gradient (``dacts``) for one batch size. The epoch kernel interprets it for every minibatch:
gather rows by ``order``, forward, loss, backward, optimizer update, with no Python in between.
The learning rate and the other hyper-parameters arrive as the plan's ``hyper`` array, so
changing them between epochs compiles nothing.

A step runs as *stages*. Dense layers, residual additions, the gather and the loss work row by
row, so consecutive ones form one stage in which each thread carries its own chunks of rows
through all of them (BLAS single-threaded per chunk, or fastnn's own float32 kernel). Each
chunk writes its dW, db into its own copy of the gradient buffer (chunk 0 into the model's);
the optimizer step sums those copies block by block and updates the parameters in the same
pass, each thread its share of the blocks. BatchNorm needs the whole batch, so each BatchNorm
forward or backward is a stage of its own, shared out by features. The threads are the calling
thread and helper threads (``_team.run_team``), each running the epoch kernel with the GIL
released, and they keep in step with a barrier of their own after each stage (``_team.py``;
~0.3 µs on a quiet machine). How many chunks a minibatch has depends on the thread count (and
so does the result); how many threads run them is measured (``kernels/_teams.py``, shared with
the cython trainer), and does not change the result. A batch with too little work to split is
one chunk, run on the calling thread alone. Networks with big layers and many parameters run
each minibatch as one chunk with BLAS itself on all threads (``_teams.threaded_blas``).
Before the team (2026-12-04, 2-vCPU Sapphire Rapids VM) a Numba parallel region per step
(~120 µs to start with the workqueue layer) made two threads lose on every network but the
biggest, which ran serially or on threaded BLAS instead; µs per step, then vs now on 2
threads: small 68.7 vs 60-63, mnist 897-955 vs 637-711, deep 277 vs 211-215.

Fusion is used for every model the plan can express: it beat the layer-by-layer path on every
benchmark network (µs per step, fused vs layer path, 2 threads, loaded 2-core machine: tiny 20
vs 45, small 112 vs 138, mnist 1146 vs 2497, deep 317 vs 2412, wide 95 000 vs 174 000).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from .. import (ACT, ADD, AUX, BN_EPS, BN_MOMENTUM, CLIP_EPS, CLIP_NORM, CROSS_ENTROPY, DROPOUT,
                DROPOUT_P, DSKIP, DX, FORWARD, GATHER, GELU, GELU_TANH, GRAD_ADD, GRAD_SKIP,
                GRAD_WRITE, IN, KIND, LOSS, NIN, NOUT, OUT, POFF, ROWS, SILU, SKIP, SOFF,
                STANDARDIZE, dropout_key, dropout_threshold)
from .._threads import choose_numba_layer, kernel_blas_threads
from .._teams import MIN_BAND_WORK, runs, shared_choice, threaded_blas
from ._split import BLOCK, PARALLEL_UPDATE_BLOCKS, row_split
from ._team import AVAILABLE as TEAMS_AVAILABLE
from ._team import LEFT, SOLO, TOGETHER, new_sync, run_team, share, team_join, team_wait
from .batchnorm import bn_backward_col, bn_forward_col
from .dense import activation_grad_rows, column_sums, dense_forward_rows
from .dropout import dropout_rows
from .interface import LAUNCH_LOCK, writeable_input
from ._own_gemm import matmul, own_gemm
from .losses import loss_rows
from .optimizers import update_range


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
    """dst[r0:r1] = src (GRAD_WRITE) or += src (GRAD_ADD)."""
    for i in range(r0, r1):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j] if mode == GRAD_WRITE else dst[i, j] + src[i, j]


@njit(cache=True, error_model="numpy")
def _row_actions(a, b, actions, c, r0, r1, nb, start, X, labels, Y, w, order, ops, fops,
                 params, grads, partials, state, acts, dacts, aux, tmp, labels_b, Yb, wb,
                 minibatch, places, loss_code, lossp, corrp):
    """Run the row-local actions a:b for rows r0:r1 (chunk c) of the current minibatch;
    ``minibatch`` is its (1/Σ weights, seed, training-step count), ``places`` the rows'
    numbers for Dropout's masks (empty: row i is number i)."""
    for k in range(a, b):
        _row_action(actions[k, 0], actions[k, 1], c, r0, r1, nb, start, X, labels, Y, w, order,
                    ops, fops, params, grads, partials, state, acts, dacts, aux, tmp, labels_b,
                    Yb, wb, minibatch, places, loss_code, lossp, corrp)


@njit(inline="always", error_model="numpy")
def _preactivations(aux, ops, op, nb, fallback):
    """The op's saved pre-activation z (GELU, SiLU), or ``fallback`` for an activation that
    keeps none (the kernels do not touch it then)."""
    act = ops[op, ACT]
    if act == GELU or act == GELU_TANH or act == SILU:
        return _view(aux, ops[op, AUX], nb, ops[op, NOUT])
    return fallback


@njit(inline="always", error_model="numpy")
def _row_action(phase, op, c, r0, r1, nb, start, X, labels, Y, w, order, ops, fops, params,
                grads, partials, state, acts, dacts, aux, tmp, labels_b, Yb, wb, minibatch,
                places, loss_code, lossp, corrp):
    """Run one row-local action for rows r0:r1 (chunk c) of the current minibatch."""
    inv_mass, seed, draw, own = minibatch
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
            if w.shape[0]:
                wb[i] = w[src]
        return
    if phase == LOSS:
        out_op = ops.shape[0] - 1
        k = ops[out_op, NOUT]
        Z = _view(acts, ops[out_op, OUT], nb, k)
        dZ = _view(dacts, ops[out_op, OUT], nb, k)
        lossp[c], corrp[c] = loss_rows(loss_code, Z, labels_b, Yb[:nb], dZ,
                                       wb[:nb] if w.shape[0] else wb[:0], inv_mass, r0, r1)
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
    if ops[op, KIND] == STANDARDIZE:                      # y = (x − mean) / std
        mean, std = state[ops[op, SOFF]:ops[op, SOFF] + nin], state[ops[op, SOFF] + nin:]
        if phase == FORWARD:
            for i in range(r0, r1):
                for j in range(nin):
                    a_out[i, j] = (x_in[i, j] - mean[j]) / std[j]
        elif ops[op, DX] != GRAD_SKIP:                    # ∂L/∂x = ∂L/∂y / std
            d_out, d_in = _view(dacts, ops[op, OUT], nb, nout), _view(dacts, ops[op, IN], nb,
                                                                        nin)
            for i in range(r0, r1):
                for j in range(nin):
                    v = d_out[i, j] / std[j]
                    d_in[i, j] = d_in[i, j] + v if ops[op, DX] == GRAD_ADD else v
        return
    if ops[op, KIND] == DROPOUT:                          # y = x ⊙ mask / (1 − p)
        p = fops[op, DROPOUT_P]
        threshold, scale = dropout_threshold(p), 1.0 / (1.0 - p)
        key = dropout_key(seed, draw, ops[op, AUX])
        if phase == FORWARD:
            dropout_rows(x_in, a_out, threshold, scale, key, GRAD_WRITE, r0, r1, places)
        elif ops[op, DX] != GRAD_SKIP:                    # ∂L/∂x = ∂L/∂y ⊙ mask / (1 − p)
            dropout_rows(_view(dacts, ops[op, OUT], nb, nout), _view(dacts, ops[op, IN], nb,
                                                                      nin),
                         threshold, scale, key, ops[op, DX], r0, r1, places)
        return
    p = ops[op, POFF]
    W = _view(params, p, nin, nout)
    Zs = _preactivations(aux, ops, op, nb, a_out)
    if phase == FORWARD:
        dense_forward_rows(x_in, W, params[p + nin * nout:p + nin * nout + nout], ops[op, ACT],
                           a_out, r0, r1, Zs, own)
        return
    dZ = _view(dacts, ops[op, OUT], nb, nout)
    activation_grad_rows(dZ, a_out, ops[op, ACT], r0, r1, Zs)   # dZ = ∂L/∂a ⊙ f′(z)
    G = grads if c == 0 else partials[c - 1]              # this chunk's share of ∂L/∂W, ∂L/∂b
    matmul(x_in[r0:r1], dZ[r0:r1], _view(G, p, nin, nout), True, False, own)
    column_sums(dZ, r0, r1, G[p + nin * nout:p + nin * nout + nout])
    mode = ops[op, DX]
    if mode == GRAD_WRITE:
        matmul(dZ[r0:r1], W, _view(dacts, ops[op, IN], nb, nin)[r0:r1], False, True,
               own)                                       # dX = dZ Wᵀ
    elif mode == GRAD_ADD:                                # dX += dZ Wᵀ (x also feeds a skip)
        T = _view(tmp, 0, nb, nin)
        matmul(dZ[r0:r1], W, T[r0:r1], False, True, own)
        _add_rows(_view(dacts, ops[op, IN], nb, nin), T, GRAD_ADD, r0, r1)


@njit(inline="always", error_model="numpy")
def _bn_stage(j, phase, op, nb, batch, ops, fops, params, grads, state, acts, dacts, aux):
    """Feature j of a BatchNorm op's forward (training mode) or backward pass."""
    m, p, s, x = ops[op, NIN], ops[op, POFF], ops[op, SOFF], ops[op, AUX]
    xhat = _view(aux, x, nb, m)
    inv_std = aux[x + batch * m:x + batch * m + m]
    gamma = params[p:p + m]
    if phase == FORWARD:
        bn_forward_col(j, _view(acts, ops[op, IN], nb, m), gamma, params[p + m:p + 2 * m],
                       state[s:s + m], state[s + m:s + 2 * m], fops[op, BN_MOMENTUM],
                       fops[op, BN_EPS], True,
                       _view(acts, ops[op, OUT], nb, m), xhat, inv_std)
    else:
        bn_backward_col(j, _view(dacts, ops[op, OUT], nb, m), xhat, inv_std, gamma,
                        _view(dacts, ops[op, IN], nb, m), ops[op, DX], grads[p:p + m],
                        grads[p + m:p + 2 * m])


@njit(inline="always", error_model="numpy")
def _add_chunks(blk, nchunk, grads, partials):
    """Add the chunks' gradients into grads over one block of the flat buffer (chunk 0 wrote
    grads itself); return the block as a view."""
    lo, hi = blk * BLOCK, min(grads.shape[0], blk * BLOCK + BLOCK)
    g = grads[lo:hi]
    for c in range(1, nchunk):
        part = partials[c - 1, lo:hi]
        for i in range(g.shape[0]):
            g[i] += part[i]
    return g


@njit(inline="always", error_model="numpy")
def _sum_chunks(blk, nchunk, grads, partials):
    """:func:`_add_chunks`, returning the block's Σg² (float64), for clipping by the global
    norm."""
    g = _add_chunks(blk, nchunk, grads, partials)
    sq = 0.0
    for i in range(g.shape[0]):
        sq += float(g[i]) * float(g[i])
    return sq


@njit(inline="always", error_model="numpy")
def _update_block(blk, nchunk, opt_code, params, grads, partials, s1, s2, hyper, t, scale):
    """Sum the chunks' gradients over one block of the flat buffer, scale them (a clipped
    step), then update the block."""
    g = _add_chunks(blk, nchunk, grads, partials)
    if scale != 1.0:
        factor = g.dtype.type(scale)
        for i in range(g.shape[0]):
            g[i] *= factor                                # g ← g·min(1, c/(‖g‖ + ε))
    lo = blk * BLOCK
    update_range(opt_code, params, grads, s1, s2, lo, lo + g.shape[0], hyper, t)


@njit(cache=True, error_model="numpy")
def _rank_epoch(rank, team, sync, X, labels, Y, w, order, batch, ops, fops, actions, stages,
                params, grads, state, s1, s2, partials, acts, dacts, aux, tmp, labels_b, Yb, wb,
                lossp, corrp, block_sq, loss_code, opt_code, hyper, t0, seed, draws0,
                chunk_max, work_per_row, min_chunk_work, places, mass, update, own_gemm):
    """Member ``rank`` of a ``team`` of threads training one epoch (team 1: the whole epoch on
    this thread); returns its (Σ wᵢ × row loss, n right) and the minibatches trained.

    Every member walks every minibatch: a ROWS stage gives each its share of the
    minibatch's row chunks (chunk c writes its dW, db into its own buffer), a BatchNorm stage
    its share of the features, then the optimizer step its share of the flat buffer's blocks
    (each first adding the chunks' gradients); after each, the team waits for all. The
    chunks, and so the result, do not depend on the team size.
    """
    n = order.shape[0]
    total, right, trained = 0.0, 0, 0
    n_blocks = (params.shape[0] + BLOCK - 1) // BLOCK
    first_blk, last_blk = share(n_blocks, rank, team)
    for start in range(0, n, batch):
        nb = min(batch, n - start)
        inv_mass = 1.0 / nb if mass == 0 else 1.0 / mass
        if w.shape[0] and mass == 0:                      # a weighted mean: Σ w l / Σ w
            own_mass = 0.0
            for i in range(nb):
                own_mass += w[order[start + i]]
            if own_mass == 0:
                continue                                  # weight 0: the batch counts for nothing
            inv_mass = 1.0 / own_mass
        q, nchunk = row_split(nb, chunk_max, work_per_row, min_chunk_work)
        # (1/Σw, Dropout's key inputs, whether matmuls may run on fastnn's kernel)
        minibatch = (inv_mass, seed, draws0 + trained, own_gemm)
        first, last = share(nchunk, rank, team)
        for st in range(stages.shape[0]):
            a, b = stages[st, 1], stages[st, 2]
            if stages[st, 0] == ROWS:
                for ci in range(first, last):
                    c = np.int64(ci)
                    _row_actions(a, b, actions, c, c * q, min(nb, c * q + q), nb, start, X,
                                 labels, Y, w, order, ops, fops, params, grads, partials,
                                 state, acts, dacts, aux, tmp, labels_b, Yb, wb, minibatch,
                                 places, loss_code, lossp, corrp)
            else:                                         # BatchNorm over the whole batch
                phase, op = actions[a, 0], actions[a, 1]
                lo, hi = share(ops[op, NIN], rank, team)
                for j in range(lo, hi):
                    _bn_stage(j, phase, op, nb, batch, ops, fops, params, grads, state, acts,
                              dacts, aux)
            team_wait(sync, team)
        for c in range(first, last):
            total += lossp[c]
            right += corrp[c]
        if not update:                                    # the gradients are the result
            for blk in range(first_blk, last_blk):
                _add_chunks(blk, nchunk, grads, partials)
            team_wait(sync, team)
            continue
        trained += 1
        scale, summed = 1.0, nchunk
        if hyper[CLIP_NORM] > 0:                          # the global norm needs every chunk
            for blk in range(first_blk, last_blk):        # summed first
                block_sq[blk] = _sum_chunks(blk, nchunk, grads, partials)
            team_wait(sync, team)
            sq = 0.0                                      # (each member, in the same order)
            for blk in range(n_blocks):
                sq += block_sq[blk]
            scale, summed = min(1.0, hyper[CLIP_NORM] / (np.sqrt(sq) + CLIP_EPS)), 1
        for blk in range(first_blk, last_blk):
            _update_block(blk, summed, opt_code, params, grads, partials, s1, s2, hyper,
                          t0 + trained, scale)
        team_wait(sync, team)
    return total, right, trained


@njit(cache=True, nogil=True, error_model="numpy")
def epoch_kernel(rank, team, sync, rank_results, X, labels, Y, w, order, batch, ops, fops,
                 actions, stages, params, grads, state, s1, s2, partials, acts, dacts, aux, tmp,
                 labels_b, Yb, wb, lossp, corrp, block_sq, loss_code, opt_code, hyper, step,
                 seed, train_steps, chunk_max, work_per_row, min_chunk_work, places, mass,
                 update, own_gemm):
    """Member ``rank`` of a ``team`` of threads training one epoch over minibatches
    order[s:s + batch] (each member calls it on its own thread, the GIL released; team 1: the
    whole epoch here): it joins the others (``_team.team_join``), then trains its share of
    every minibatch (:func:`_rank_epoch`), or all of it if they never came, or nothing if it
    came too late. rank_results[rank] receives its (Σ wᵢ × row loss, n right, minibatches
    trained); the caller advances ``step`` and ``train_steps`` by the latter once all are done.

    A minibatch is split into at most ``chunk_max`` row chunks (row_split). ``w`` holds the
    rows' weights (empty: all 1); a minibatch whose weights sum to 0 is skipped. With
    ``update`` False (one minibatch, a rank's share of a distributed step) the kernel only
    leaves Σ wᵢ∇lᵢ / ``mass`` in ``grads`` (the chunks summed), ``places`` numbering the rows
    for Dropout; it updates nothing and counts no step. (``mass`` 0 and empty ``places``: the
    minibatch's own weight sum and row numbers.)
    """
    X, labels, Y, w, order, ops, fops, actions, hyper = (
        _borrowed(X), _borrowed(labels), _borrowed(Y), _borrowed(w), _borrowed(order),
        _borrowed(ops), _borrowed(fops), _borrowed(actions), _borrowed(hyper))
    params, grads, partials, state, s1, s2 = (
        _borrowed(params), _borrowed(grads), _borrowed(partials), _borrowed(state),
        _borrowed(s1), _borrowed(s2))
    acts, dacts, aux, tmp, labels_b, Yb, wb, lossp, corrp, block_sq = (
        _borrowed(acts), _borrowed(dacts), _borrowed(aux), _borrowed(tmp), _borrowed(labels_b),
        _borrowed(Yb), _borrowed(wb), _borrowed(lossp), _borrowed(corrp), _borrowed(block_sq))
    me, size = rank, team
    verdict = TOGETHER if team == 1 else team_join(sync, team)
    if verdict == SOLO:                                   # the others never came: all of it
        me, size = 0, 1
    if verdict != LEFT:
        total, right, trained = _rank_epoch(
            me, size, sync, X, labels, Y, w, order, batch, ops, fops, actions, stages, params,
            grads, state, s1, s2, partials, acts, dacts, aux, tmp, labels_b, Yb, wb, lossp,
            corrp, block_sq, loss_code, opt_code, hyper, step[0], seed, train_steps[0],
            chunk_max, work_per_row, min_chunk_work, places, mass, update, own_gemm)
        rank_results[rank, 0], rank_results[rank, 1] = total, right
        rank_results[rank, 2] = trained


class Trainer:
    """Runs whole epochs of a :class:`fastnn.plan.Plan` in one compiled call (see the module
    docstring).

    It trains the plan's parameter, gradient and state buffers and the optimizer's state
    arrays in place, so :meth:`sync` has nothing to copy back. Its workspace (every op's
    output and gradient, BatchNorm's x̂ and 1/σ, the chunks' gradient buffers) is allocated
    once per plan.
    """

    def __init__(self, plan):
        self.plan = plan
        self.teams = shared_choice("numba_cpu", plan.batch, plan.work_per_row,
                                   plan.params.size, plan.dtype.name)
        ws = plan.scratch.get("numba_cpu")
        if ws is None:
            dt = plan.dtype
            ws = plan.scratch["numba_cpu"] = {
                "acts": np.zeros(plan.act_size, dt), "dacts": np.zeros(plan.act_size, dt),
                "aux": np.zeros(plan.aux_size, dt), "tmp": np.zeros(plan.batch * plan.width, dt),
                "labels_b": np.zeros(plan.batch, np.int64),
                "Yb": np.zeros((plan.batch, plan.out_features), dt),
                "wb": np.zeros(plan.batch), "no_weights": np.zeros(0),
                "no_places": np.zeros(0, np.int64),
                "partials": np.zeros((0, plan.params.size), dt),
                "lossp": np.zeros(1), "corrp": np.zeros(1, np.int64),
                "block_sq": np.zeros(-(-plan.params.size // BLOCK))}
        self.ws = ws

    def split(self, threads: int) -> tuple[int, int]:
        """(row chunks a full minibatch is split into, threads BLAS may use) on ``threads``
        threads: one chunk with BLAS on all of them for a network with big layers
        (``_teams.threaded_blas``), else a chunk per MIN_BAND_WORK multiply-adds (at most one
        per thread) with BLAS on one."""
        plan = self.plan
        if threaded_blas(threads, plan.params.size, plan.batch, plan.max_layer_work):
            return 1, threads
        return row_split(plan.batch, threads, plan.work_per_row, MIN_BAND_WORK)[1], 1

    def _chunk_buffers(self, chunks: int):
        """(partials, lossp, corrp, block_sq) for ``chunks`` row chunks: per extra chunk a
        gradient buffer (entries no chunk writes, BatchNorm's, stay 0)."""
        ws, plan = self.ws, self.plan
        if ws["partials"].shape[0] < chunks - 1:
            ws["partials"] = np.zeros((chunks - 1, plan.params.size), plan.dtype)
            ws["lossp"], ws["corrp"] = np.zeros(chunks), np.zeros(chunks, np.int64)
        return ws["partials"], ws["lossp"], ws["corrp"], ws["block_sq"]

    def _segments(self, n_batches: int, chunks: int, blas_threads: int, update: bool):
        """(first minibatch, count, team) runs of the epoch (``_teams.runs``); with threaded
        BLAS, the team shares a big update."""
        plan = self.plan
        if n_batches == 0:                                 # (prepare: compile, train nothing)
            return [(0, 0, 1)]
        if not TEAMS_AVAILABLE:
            return [(0, n_batches, 1)]
        if blas_threads > 1:
            big = plan.params.size >= PARALLEL_UPDATE_BLOCKS * BLOCK
            return [(0, n_batches, blas_threads if big else 1)]
        return runs(self.teams, n_batches, chunks, update, plan.batch * plan.work_per_row)

    def _targets(self, y):
        """(labels, Y) as the kernel takes them: one is the targets, the other empty."""
        if self.plan.loss == CROSS_ENTROPY:
            return writeable_input(y, np.int64), self.ws["Yb"][:0]
        return self.ws["labels_b"][:0], writeable_input(y.reshape(len(y), -1), self.plan.dtype)

    def prepare(self, X, y) -> None:
        """Compile (or load from the disk cache) the epoch kernel for this plan: an epoch over
        no rows, which trains nothing. Once per plan: inputs always reach the kernel as the
        same array types (``writeable_input``), so one compilation serves every later fit."""
        if not self.ws.get("prepared"):
            self._run(X, y, np.zeros(0, np.int64))
            self.ws["prepared"] = True

    def run_epoch(self, X, y, order, w=None):
        """Train one epoch on the minibatches order[i:i + batch], rows weighted by ``w``
        (see fastnn.plan)."""
        total, right = self._run(X, y, order, w)
        return total, (None if right < 0 else int(right))

    def gradients(self, X, y, rows, w, places, mass: float):
        """Fill the plan's gradients with Σ wᵢ∇lᵢ / mass over the minibatch X[rows] (Dropout
        masks of row numbers ``places``), updating nothing (see fastnn.plan)."""
        total, right = self._run(X, y, rows, w, writeable_input(places, np.int64), mass,
                                 False)
        return total, (None if right < 0 else int(right))

    def _run(self, X, y, order, w=None, places=None, mass=0.0, update=True):
        plan, ws = self.plan, self.ws
        places = ws["no_places"] if places is None else places
        labels, Y = self._targets(y)
        w = ws["no_weights"] if w is None else writeable_input(w, np.float64)
        X, order = writeable_input(X, plan.dtype), writeable_input(order, np.int64)
        choose_numba_layer()                  # before numba.get_num_threads starts the pool
        chunks, blas_threads = self.split(numba.get_num_threads())
        partials, lossp, corrp, block_sq = self._chunk_buffers(chunks)
        batch, total, right = plan.batch, 0.0, 0
        n_batches = -(-len(order) // batch)
        with LAUNCH_LOCK, kernel_blas_threads(blas_threads):
            for first, count, team in self._segments(n_batches, chunks, blas_threads, update):
                sync, results = new_sync(), np.zeros((team, 3))
                args = (X, labels, Y, w, order[first * batch:(first + count) * batch], batch,
                        plan.ops, plan.fops, plan.actions, plan.stages, plan.params,
                        plan.grads, plan.state, plan.s1, plan.s2, partials, ws["acts"],
                        ws["dacts"], ws["aux"], ws["tmp"], ws["labels_b"], ws["Yb"], ws["wb"],
                        lossp, corrp, block_sq, plan.loss, plan.rule, plan.hyper, plan.step,
                        plan.seed, plan.train_steps, chunks, plan.work_per_row, MIN_BAND_WORK,
                        places, float(mass), update, blas_threads == 1 and own_gemm())
                run_team(epoch_kernel, team, sync, results, *args)
                trained = int(results[:, 2].max())
                plan.step[0] += trained
                plan.train_steps[0] += trained
                total += float(results[:, 0].sum())
                right += int(results[:, 1].sum())
        return total, right

    def sync(self) -> None:
        """Nothing to copy: the kernel trained the model's and optimizer's own buffers."""

    def push(self) -> None:
        """Nothing to copy: the host buffers a callback wrote are the ones the kernel trains."""


def make_trainer(plan) -> Trainer:
    """The fused trainer executing ``plan`` (a :class:`fastnn.plan.Plan`)."""
    return Trainer(plan)
