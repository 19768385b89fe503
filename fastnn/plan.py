"""The training plan: (model, loss, optimizer, batch size) compiled once into plain arrays that
every backend's fused trainer executes.

Kernels know arrays and codes, never models: ``fit`` builds a :class:`Plan` here, and each
backend's ``make_trainer(plan)`` interprets it (``kernels/numba_cpu/trainer.py``, the
``Trainer`` of ``kernels/cython/_kernels.pyx``, ``kernels/numba_cuda/trainer.py``). The codes
and column numbers live in ``fastnn.kernels`` so that both sides share them.

The op table ``plan.ops`` (int64, one row per op, in forward order):

======  ====================================================================================
KIND    DENSE (a = f(x·W + b)), BATCHNORM (training-mode batch normalisation), ADD (y = x + h),
        DROPOUT (y = x ⊙ mask / (1 − p), the counter-based mask of ``fastnn.kernels``),
        STANDARDIZE (y = (x − mean) / std per feature, mean and std from ``state``)
IN      offset in ``acts``/``dacts`` of the op's input, a (rows, NIN) block
OUT     offset of its output, a (rows, NOUT) block (``dacts`` holds ∂L/∂output there)
NIN     input width; NOUT output width
ACT     Dense: activation code (identity for the last layer when the loss takes logits)
POFF    offset of its parameters in the flat parameter and gradient buffers
        (Dense: W (NIN×NOUT) row-major then b; BatchNorm: γ then β)
SOFF    BatchNorm: offset of its running mean then running variance in ``state``;
        Standardize: of its mean then std
AUX     BatchNorm: offset in ``aux`` of x̂ (batch×NIN) then 1/σ (NIN); Dense with an
        activation in NEEDS_PREACTIVATION (GELU, SiLU): offset in ``aux`` of its
        pre-activation z (batch×NOUT; other Dense layers keep none); Dropout: its stream
SKIP    ADD: offset of the skip input x (IN is the block's output h)
DX      how ∂L/∂input is produced: GRAD_SKIP (the input is the data), GRAD_WRITE (first
        writer walking backwards), GRAD_ADD (the buffer also receives another gradient)
DSKIP   ADD: the same for the skip input
======  ====================================================================================

``plan.fops`` (float64, per op) holds BatchNorm's (momentum, eps) and Dropout's p. Offsets
are laid out for ``plan.batch`` rows; a shorter last minibatch of ``nb`` rows uses the first
``nb`` rows of each block with the same row stride (a (nb, n) view at the same offset).
Buffer 0 of ``acts`` is the gathered minibatch.

A step is ``plan.actions`` (phase, op) in order: GATHER, FORWARD of every op, LOSS, BACKWARD of
every op in reverse; ``plan.stages`` groups consecutive row-local actions (Dense, ADD, gather,
loss: a thread can carry its own rows through all of them) into ROWS stages, and makes each
BatchNorm pass, which needs the whole batch, a WHOLE_BATCH stage.

Everything that changes between epochs is data: ``plan.hyper`` (learning rate, momentum or β₁,
β₂ or RMSprop's α, ε, weight decay, Nesterov; then the fit's ``clip_norm``, 0 for none) and
``plan.step`` (Adam's step count) are refreshed before each epoch
(:meth:`Plan.load_optimizer`), so a new learning rate recompiles and rebuilds nothing.
``plan.train_steps`` is the model's own count of minibatches trained (all fits), which a
trainer advances per minibatch: with ``plan.seed`` it keys Dropout's masks
(``fastnn.kernels.dropout_key(seed, train_steps, stream)``), so fused, layer-by-layer and
every backend draw the same masks. Row weights (``fit(sample_weight=…)``) are not part of the
plan: they are an argument of each epoch, like the data.

Inference (``predict``, ``evaluate``) has a plan of its own, :class:`InferencePlan`
(:func:`build_inference`): the same op rows for the forward pass in evaluation mode, laid out
for a chunk of ``rows`` rows. Dropout is the identity there and has no op; a BATCHNORM op
normalises with the running statistics, so every op is row-local, and a CPU backend's
``make_predictor(plan)`` lets each thread carry its own chunks of rows through the whole
network in one parallel region, with no barrier between layers (the layer-by-layer forward
wakes the threads once per matmul; waking an idle vCPU's thread took ~0.15 ms on a 2-vCPU VM);
numba_cuda's copies the weights to the device once per call and runs the ops on each chunk.

Adding a layer kind: one function in :data:`_OPS` below turning the layer into op rows (and a
new KIND in ``fastnn.kernels`` if no existing op expresses it), then one case in each backend's
interpreter (numba_cpu ``_row_action``/``_bn_stage``, cython ``_band_actions``/
``_batchnorm_block``, numba_cuda ``DeviceTrainer._forward``/``_backward``) and in each fused
forward pass (numba_cpu and cython ``_infer_chunk``, numba_cuda
``DevicePredictor._forward``). A layer type with no entry here trains
and predicts layer by layer, never wrongly. An optimizer rule is the same: a code in
``fastnn.kernels``, its ``fused_rule`` in ``fastnn.optimizers``, one case in each backend's
update (numba_cpu ``update_range``, cython ``_update``, numba_cuda ``optimizer_step``).
"""
from __future__ import annotations

import numpy as np

from .kernels import (ACT, ADD, AUX, BACKWARD, BATCHNORM, DENSE, DROPOUT, DSKIP, DX, FORWARD,
                      GATHER, GRAD_ADD, GRAD_SKIP, GRAD_WRITE, IDENTITY, IN, KIND, LOSS, N_HYPER,
                      N_OPTIMIZER_HYPER, NEEDS_PREACTIVATION, NIN, NOUT, OUT, POFF, ROWS, SKIP,
                      SOFF, STANDARDIZE, WHOLE_BATCH)
from .layers import BatchNorm, Dense, Dropout, Layer, Residual
from .preprocessing import Standardize

_COLUMNS = 12


class Plan:
    """One model's training plan for one batch size and loss (see the module docstring).

    Attributes read by the backends: ``batch``, ``in_features``, ``out_features``, ``dtype``;
    ``ops``, ``fops``, ``actions``, ``stages``; ``act_size``, ``aux_size``, ``width`` (widest
    op), ``work_per_row`` (multiply-adds of one row's forward pass), ``max_layer_work``
    (multiply-adds per row of the biggest Dense); ``loss`` (code); ``params``, ``grads``,
    ``state`` (the model's flat buffers); ``seed`` and ``train_steps`` (Dropout's keys);
    ``rule``, ``hyper``, ``step``, ``s1``, ``s2`` (the
    optimizer's code, hyper-parameters, step count and state buffers); ``scratch``, a dict in
    which a backend may keep the buffers it allocated for this plan.
    """

    def __init__(self, model, loss, batch: int, rows: list, fops: list, act_size: int,
                 aux_size: int):
        self.batch = batch
        self.in_features, self.out_features = model.in_features, model.out_features
        self.dtype = model.dtype
        self.ops = np.array(rows, np.int64).reshape(-1, _COLUMNS)
        self.fops = np.array(fops, np.float64).reshape(-1, 2)
        self.act_size, self.aux_size = act_size, max(aux_size, 1)
        self.width = int(max(self.ops[:, NIN].max(), self.ops[:, NOUT].max()))
        dense = self.ops[self.ops[:, KIND] == DENSE]
        work = dense[:, NIN] * dense[:, NOUT]
        self.work_per_row = int(work.sum())
        self.max_layer_work = int(work.max()) if len(work) else 0
        self.loss = loss.code
        self.params, self.grads, self.state = model._params, model._grads, model._state
        self.seed, self.train_steps = _low_int64(model.seed), model._steps
        self.actions, self.stages = _schedule(self.ops)
        self.rule = -1
        self.hyper = np.zeros(N_HYPER)
        self.step = np.zeros(1, np.int64)
        self.s1 = self.s2 = np.zeros(0, self.dtype)
        self.scratch: dict = {}

    def load_optimizer(self, optimizer) -> bool:
        """Take the optimizer's rule, hyper-parameters, step count and state buffers; False
        when it has no fused rule (then the model trains layer by layer)."""
        fused = optimizer.fused_rule(self.params)
        if fused is None:
            return False
        self.rule, hyper, self.step[0], s1, s2 = fused
        self.hyper[:N_OPTIMIZER_HYPER] = hyper
        empty = np.zeros(0, self.dtype)
        self.s1 = empty if s1 is None else s1
        self.s2 = empty if s2 is None else s2
        return True


class InferencePlan:
    """One model's forward pass in evaluation mode for chunks of up to ``rows`` rows (see the
    module docstring): ``ops`` and ``fops`` as a training plan's (no Dropout ops; BATCHNORM
    uses the running statistics), ``act_size`` floats of workspace per chunk (offset 0 names
    the input, which is read from X itself), ``out`` (offset of the block holding the output),
    ``scratch_size`` (floats of scratch per chunk: GELU's and SiLU's z, rows × nout;
    BatchNorm's x̂ and 1/σ, rows × nin + nin), ``work_per_row`` (multiply-adds of one row),
    ``in_features``, ``out_features``, ``dtype``, and the model's ``params`` and ``state``;
    ``scratch`` for the backend's objects."""

    def __init__(self, model, rows: int, ops: list, fops: list, act_size: int, out: int):
        self.rows, self.out = rows, out
        self.in_features, self.out_features = model.in_features, model.out_features
        self.dtype = model.dtype
        self.ops = np.array(ops, np.int64).reshape(-1, _COLUMNS)
        self.fops = np.array(fops, np.float64).reshape(-1, 2)
        self.act_size = act_size
        dense = self.ops[self.ops[:, KIND] == DENSE]
        self.work_per_row = int((dense[:, NIN] * dense[:, NOUT]).sum())
        keeps_z = np.isin(dense[:, ACT], list(NEEDS_PREACTIVATION))
        bn = self.ops[self.ops[:, KIND] == BATCHNORM, NIN]
        self.scratch_size = int(max([rows * n for n in dense[keeps_z, NOUT]]
                                    + [rows * n + n for n in bn], default=0))
        self.params, self.state = model._params, model._state
        self.scratch: dict = {}


def build_inference(model, rows: int, logits: bool) -> InferencePlan | None:
    """The evaluation-mode forward plan of ``model`` for chunks of up to ``rows`` rows, its
    last Dense layer without its activation when ``logits``; None when a layer has no op
    form."""
    builder = _Builder(model, rows, training=False)
    # offset 0 names the input chunk, read from X itself: no workspace (16 floats of padding
    # keep the first block on a 64-byte line)
    builder.act_size = 16
    out = builder.add(model.layers, 0, logits)
    if out is None:
        return None
    return InferencePlan(model, rows, builder.rows, builder.fops, builder.act_size, out)


def build(model, loss, batch: int) -> Plan | None:
    """The plan of ``model`` trained with ``loss`` on minibatches of ``batch`` rows, or None when
    a layer has no op form (see :data:`_OPS`)."""
    builder = _Builder(model, batch)
    src = builder.buffer(model.in_features)              # acts[0]: the gathered minibatch
    if builder.add(model.layers, src, loss.on_logits) is None:
        return None
    builder.gradient_modes()
    return Plan(model, loss, batch, builder.rows, builder.fops, builder.act_size,
                builder.aux_size)


class _Builder:
    """Walks the layers once, appending op rows and laying out the workspace buffers."""

    def __init__(self, model, batch: int, training: bool = True):
        self.model, self.batch, self.training = model, batch, training
        self.rows: list[list[int]] = []
        self.fops: list[tuple[float, float]] = []
        self.act_size = self.aux_size = 0

    def buffer(self, width: int) -> int:
        """Reserve a (batch, width) block of acts/dacts; return its offset."""
        offset = self.act_size
        self.act_size += self.batch * width
        return offset

    def op(self, kind: int, src: int, n_in: int, n_out: int, act: int = IDENTITY,
           params=None, state=None, aux: int = 0, skip: int = 0,
           fop=(0.0, 0.0)) -> int:
        """Append one op reading block ``src``; return the offset of its output block."""
        out = self.buffer(n_out)
        row = [0] * _COLUMNS
        row[KIND], row[IN], row[OUT], row[NIN], row[NOUT], row[ACT] = (kind, src, out, n_in,
                                                                        n_out, act)
        row[POFF] = 0 if params is None else _offset(params, self.model._params)
        row[SOFF] = 0 if state is None else _offset(state, self.model._state)
        row[AUX], row[SKIP] = aux, skip
        self.rows.append(row)
        self.fops.append(fop)
        return out

    def add(self, layers: list[Layer], src: int, logits_last: bool) -> int | None:
        """Append the ops of ``layers`` applied to block ``src``; the offset of their output,
        or None if one has no op form."""
        for i, layer in enumerate(layers):
            to_ops = _OPS.get(type(layer))
            if to_ops is None:
                return None
            src = to_ops(self, layer, src, logits_last and i == len(layers) - 1)
            if src is None:
                return None
        return src

    def gradient_modes(self) -> None:
        """Per op, whether its input gradient is skipped (block 0 holds the data), written
        (the first writer, walking backwards) or added (a block that also feeds a skip)."""
        written = set()
        for row in reversed(self.rows):
            for field, block in ((DX, row[IN]), (DSKIP, row[SKIP] if row[KIND] == ADD else 0)):
                if block == 0:
                    row[field] = GRAD_SKIP
                    continue
                row[field] = GRAD_ADD if block in written else GRAD_WRITE
                written.add(block)


def _dense_ops(b: _Builder, layer: Dense, src: int, logits: bool) -> int:
    act = IDENTITY if logits else layer._code            # the loss kernel applies the output f
    aux = 0
    if act in NEEDS_PREACTIVATION and b.training:        # z kept for f′(z): these layers only
        aux, b.aux_size = b.aux_size, b.aux_size + b.batch * layer.out_features
    return b.op(DENSE, src, layer.in_features, layer.out_features, act, params=layer._W,
                aux=aux)


def _dropout_ops(b: _Builder, layer: Dropout, src: int, logits: bool) -> int:
    if layer.p == 0 or not b.training:                   # the identity: no op
        return src
    n = layer.in_features
    return b.op(DROPOUT, src, n, n, aux=layer.stream, fop=(layer.p, 0.0))


def _batchnorm_ops(b: _Builder, layer: BatchNorm, src: int, logits: bool) -> int:
    n = layer.in_features
    if not b.training:                                   # running statistics: no x̂, 1/σ
        return b.op(BATCHNORM, src, n, n, params=layer.gamma, state=layer.running_mean,
                    fop=(layer.momentum, layer.eps))
    out = b.op(BATCHNORM, src, n, n, params=layer.gamma, state=layer.running_mean,
               aux=b.aux_size, fop=(layer.momentum, layer.eps))
    b.aux_size += b.batch * n + n                        # x̂ (batch, n), then 1/σ (n)
    return out


def _residual_ops(b: _Builder, layer: Residual, src: int, logits: bool) -> int | None:
    h = b.add(layer.block, src, False)
    if h is None:
        return None
    return b.op(ADD, h, layer.in_features, layer.out_features, skip=src)   # y = x + block(x)


#: layer type -> the function appending its ops: the one place a layer kind enters the plan
def _standardize_ops(b: _Builder, layer: Standardize, src: int, logits: bool) -> int:
    n = layer.in_features
    return b.op(STANDARDIZE, src, n, n, state=layer.mean)


_OPS = {Dense: _dense_ops, BatchNorm: _batchnorm_ops, Residual: _residual_ops,
        Dropout: _dropout_ops, Standardize: _standardize_ops}


def _low_int64(value: int) -> int:
    """The low 64 bits of a non-negative int as a signed int64 (what compiled code can take;
    dropout_key reads only those bits)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _offset(view: np.ndarray, base: np.ndarray) -> int:
    """Position of a view's first element in the flat buffer it looks into."""
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) \
        // base.itemsize


def _schedule(ops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(actions, stages) of one training step (see the module docstring)."""
    actions = [(GATHER, 0)] + [(FORWARD, k) for k in range(len(ops))] + [(LOSS, 0)]
    actions += [(BACKWARD, k) for k in reversed(range(len(ops)))]
    stages: list[tuple[int, int, int]] = []
    for a, (phase, op) in enumerate(actions):
        if phase in (FORWARD, BACKWARD) and ops[op, KIND] == BATCHNORM:
            stages.append((WHOLE_BATCH, a, a + 1))
        elif stages and stages[-1][0] == ROWS and stages[-1][2] == a:
            stages[-1] = (ROWS, stages[-1][1], a + 1)
        else:
            stages.append((ROWS, a, a + 1))
    return np.array(actions, np.int64), np.array(stages, np.int64)
