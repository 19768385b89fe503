"""Data-parallel training over MPI (mpi4py): ``model.fit(..., distributed="mpi")``.

Run a script under MPI, ``mpiexec -n 4 python -m mpi4py train.py``, in which every rank
builds the same model and calls ``fit`` with ``distributed="mpi"`` (``MPI.COMM_WORLD``) or
an mpi4py communicator. Needs the ``mpi`` extra (``pip install 'fastnn[mpi]'``: mpi4py and the
``mpich`` wheel, which brings ``mpiexec``).

Semantics (global, exact)
-------------------------
* **Data.** Each rank passes its own shard of (X, y); with ``shard=True`` every rank passes the
  whole arrays and keeps the contiguous block ``rows[r·N//P : (r+1)·N//P]``. The global
  dataset is the concatenation of the shards in rank order (their sizes are exchanged with
  one Allgather), so ``shard=True`` trains on exactly the rows a single process would.
* **Order.** Every epoch each rank draws the same permutation of the N global rows from the
  model's seed, as single-process ``fit`` does; global minibatch b is ``order[b·B:(b+1)·B]``
  with B the global ``batch_size``. Each rank trains on the rows of it that it owns (maybe
  none).
* **Step.** Each rank computes its share of the step's gradient, Σ_local wᵢ∇lᵢ / M with M
  the minibatch's global mass (rows, or Σ sample weights), on the rows it owns: by the
  backend's fused trainer in one compiled call (``trainer.gradients``: gather, forward, loss,
  backward; numba_cpu, cython, numba_cuda) or, on the reference backend, with ``fuse=False``
  or with BatchNorm, layer by layer (``Sequential._loss_and_gradients``, the loss's gradient
  scaled by m_local / M before the backward pass). Then ONE in-place ``Allreduce`` (SUM) of
  the flat gradient buffer, the global-norm clip (if ``clip_norm``) and the optimizer step
  (the backend's optimizer kernel), identical on every rank: the parameters stay
  bit-identical with no further communication (checked once per epoch; a rank that drifted,
  e.g. on a different CPU type, gets rank 0's parameters and state back, with a warning).
  A rank without rows in a minibatch joins the Allreduce with zero gradients; a minibatch
  whose global mass is 0 is skipped everywhere. The result equals single-process training up
  to the order of floating-point sums (1e-12 in float64). ``history.fused`` says whether the
  fused trainer ran.
* **BatchNorm** is synchronised (SyncBatchNorm, ``fastnn.layers.BatchNorm``): it normalises
  by the mean and variance of the *global* minibatch, reduced in two small Allreduces in
  the forward pass (Σx, then Σ(x − μ)², in float64) and one in the backward pass
  (Σ∂L/∂y, Σ∂L/∂y·x̂), so with BatchNorm too the run equals single-process training and
  the running statistics are the same on every rank. A rank with no rows in a minibatch
  joins those sums with zeros. Those collectives sit in the middle of the step, where the
  fused trainers have no exit, so a BatchNorm network trains layer by layer under
  ``distributed`` (with compiled kernels per layer).
* **Figures.** loss and accuracy are global (sums reduced once per epoch). Validation: each
  rank evaluates its own validation rows (its ``validation_data``, its share of it with
  ``shard=True``, or its ``validation_split`` of its shard) and the sums are reduced, so
  val_loss is global and identical on every rank and ``EarlyStopping`` stops every rank at
  the same epoch. ``history["allreduce_time"]`` holds each epoch's seconds in the gradient
  Allreduce.
* **Callbacks** run on every rank with the same global figures, except ModelCheckpoint and
  CSVLogger (they write files), which run on rank 0 only; the progress bar and callback
  messages show on rank 0 only.

Dropout, and this version's limits
----------------------------------
* **Dropout masks** are drawn per global row: each rank's rows draw the masks of their
  places in the global minibatch (``dropout(..., rows=)``), so with Dropout the run equals
  single-process training whatever the world size.
* ``track_gradients`` and ``class_weight="balanced"`` without ``shard=True`` (it needs the
  global class counts) are refused.
* The gradient Allreduce starts when the rank's backward pass is done; it does not overlap
  the backward of earlier layers (bench/README.md measures its share of a step).

Failure behaviour
-----------------
Before any step, every rank checks its inputs (the same validation ``fit`` does) and the
ranks compare architecture, dtype, backend, batch size, optimizer, callbacks, the width and
dtype of X and y and the validity of labels and weights: one collective exchange, after which
a problem on any rank raises the same ValueError, naming the rank, on every rank. Once
training runs, an exception that escapes one rank aborts the job (``comm.Abort``) from an
excepthook this module installs when the world has more than one rank, as ``python -m
mpi4py`` does: never a hang. Errors the ranks reach together (a diverged loss, which is
global) raise on every rank.

Threads: with several ranks on one node, a fit sets each rank to cores ÷ local ranks
threads (``MPI.COMM_TYPE_SHARED``) for Numba, OpenMP and BLAS together, through
:func:`fastnn.set_num_threads`, unless the process already called it.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
import zlib

import numpy as np

from . import threads, training, validation
from .callbacks import CSVLogger, ModelCheckpoint
from .layers import BatchNorm, Dropout, layers_of

#: callbacks that write files: run on rank 0 only
RANK0_CALLBACKS = (ModelCheckpoint, CSVLogger)
#: seconds an uncaught exception's rank waits between printing it and ``comm.Abort``: MPICH's
#: mpiexec could tear the job down before forwarding the traceback (1 test run in ~40 on a
#: loaded 2-core machine showed an empty stderr)
ABORT_GRACE_SECONDS = 0.5


# -- the communicator ------------------------------------------------------------------------
def _mpi():
    """mpi4py's MPI module, or ImportError saying how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("distributed training needs mpi4py: pip install 'fastnn[mpi]' "
                          "(mpi4py and the mpich wheel)") from exc
    return MPI


def communicator(distributed="mpi"):
    """The mpi4py communicator ``distributed`` names: "mpi" is ``MPI.COMM_WORLD``; an mpi4py
    ``Intracomm`` is used as given. With more than one rank, an exception that escapes any
    rank from then on aborts the whole job (see the module docstring)."""
    MPI = _mpi()
    if isinstance(distributed, str):
        if distributed != "mpi":
            raise ValueError(f"distributed must be None, 'mpi' or an mpi4py communicator, "
                             f"got {distributed!r}")
        comm = MPI.COMM_WORLD
    elif isinstance(distributed, MPI.Intracomm):
        comm = distributed
    else:
        raise TypeError(f"distributed must be None, 'mpi' or an mpi4py communicator, got "
                        f"{type(distributed).__name__}")
    if comm.Get_size() > 1:
        _abort_on_uncaught(comm)
    return comm


def _abort_on_uncaught(comm) -> None:
    """Make an uncaught exception print its traceback, then ``comm.Abort(1)``: the other ranks
    may be waiting in a collective for this one, and would hang."""
    previous = sys.excepthook
    if getattr(previous, "fastnn_aborts", None) is not None:
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)     # the launcher forwards what was written first
        comm.Abort(1)

    hook.fastnn_aborts = comm
    sys.excepthook = hook


def _world(comm=None):
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError:
            return None
        return MPI.COMM_WORLD
    return communicator(comm)


def rank(comm=None) -> int:
    """This process's rank in ``comm`` (default ``MPI.COMM_WORLD``); 0 without mpi4py."""
    world = _world(comm)
    return 0 if world is None else world.Get_rank()


def world_size(comm=None) -> int:
    """The number of ranks in ``comm`` (default ``MPI.COMM_WORLD``); 1 without mpi4py."""
    world = _world(comm)
    return 1 if world is None else world.Get_size()


def is_main(comm=None) -> bool:
    """Whether this is rank 0, the one that prints and writes files."""
    return rank(comm) == 0


def broadcast_model(model, comm=None, root: int = 0, optimizer=None) -> None:
    """Copy ``root``'s parameters, model state (BatchNorm running statistics, Standardize's
    mean and std), training-step and fit counters — and ``optimizer``'s state, if given — to
    every rank of ``comm`` (default ``MPI.COMM_WORLD``). Every rank must call it."""
    comm = communicator("mpi" if comm is None else comm)
    comm.Bcast(model._params, root=root)
    comm.Bcast(model._state, root=root)
    comm.Bcast(model._steps, root=root)
    model._fits = comm.bcast(model._fits, root=root)
    if optimizer is not None:
        optimizer.ensure_state(model._params)
        for name in sorted(vars(optimizer)):
            value = getattr(optimizer, name)
            if name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):       # velocity, Adam's m and v, ...
                comm.Bcast(value, root=root)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(optimizer, name, comm.bcast(value, root=root))   # Adam's t, lr, ...


# -- threads ---------------------------------------------------------------------------------
def local_ranks(comm) -> int:
    """How many ranks of ``comm`` share this node (``MPI.COMM_TYPE_SHARED``)."""
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def default_threads(comm) -> int:
    """Threads per rank that fill this node without oversubscribing: cores ÷ local ranks
    (at least 1, at most the CPUs this process may run on)."""
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    n = max(1, min(usable, cores // local_ranks(comm)))
    try:
        import numba
        n = min(n, numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        pass
    return n


def apply_thread_defaults(comm) -> int | None:
    """With several ranks on this node, set :func:`default_threads` through
    :func:`fastnn.set_num_threads` (Numba, OpenMP and BLAS), unless this process already
    chose a count; return the count set, or None."""
    if threads._requested is not None or local_ranks(comm) == 1:
        return None
    n = default_threads(comm)
    threads.set_num_threads(n)
    return n


# -- the agreement check ---------------------------------------------------------------------
def _describe(a) -> tuple:
    """(trailing shape, dtype) of an input array, or None."""
    if a is None:
        return None
    arr = np.asarray(a)
    return arr.shape[1:], arr.dtype.str


def check_agreement(comm, model, X, y, loss, settings: dict, shard: bool) -> None:
    """Before any step: validate this rank's inputs as ``fit`` would, and compare with the
    other ranks what must be equal; raise the same ValueError on every rank if any rank's
    inputs are invalid or differ from rank 0's (one ``allgather``)."""
    error = None
    try:
        Xp, yp, lossp = model._prepare(X, y, loss)
        model._row_weights(yp, lossp, settings.get("sample_weight"),
                           settings.get("class_weight"), some_count=False)
        if settings.get("validation_data") is not None:
            X_val, y_val = settings["validation_data"]
            model._prepare(X_val, y_val, lossp.name, "X_val", "y_val")
        rows = len(Xp)
        if rows == 0 and not shard:
            raise ValueError("this rank's shard of X has no rows")
    except (ValueError, TypeError) as exc:
        error, rows = f"{type(exc).__name__}: {exc}", None
    presence = ("sample_weight", "validation_data")       # may differ in value, not in use
    mine = {"architecture": model.get_config()["layers"], "dtype": model.dtype.name,
            "backend": model.backend, "parameters": model._params.size,
            "X (width, dtype)": _describe(X), "y (shape after the rows, dtype)": _describe(y)}
    for key, value in settings.items():
        if key == "callbacks" and isinstance(value, (list, tuple)):
            value = [type(c).__name__ for c in value]     # their reprs hold addresses
        mine[key] = (value is not None) if key in presence else repr(value)
    if shard:
        mine["rows (shard=True: the whole array on every rank)"] = rows
    everyone = comm.allgather((error, mine))
    problems = [f"rank {r}: {e}" for r, (e, _) in enumerate(everyone) if e is not None]
    if not problems:
        base = everyone[0][1]
        for r, (_, theirs) in enumerate(everyone[1:], start=1):
            for key in base:
                if theirs[key] != base[key]:
                    problems.append(f"rank {r} differs from rank 0 in {key}: "
                                    f"{_short(theirs[key])} vs {_short(base[key])}")
    if problems:
        raise ValueError("distributed fit refused before any step (every rank raises this):\n"
                         + "\n".join(problems))


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- the distributed fit ---------------------------------------------------------------------
def _share(n: int, rank_: int, size: int) -> slice:
    """The contiguous block of ``n`` rows that rank ``rank_`` of ``size`` takes (shard=True)."""
    return slice(rank_ * n // size, (rank_ + 1) * n // size)


class _GlobalBatch:
    """What a BatchNorm layer needs to normalise over the global minibatch (SyncBatchNorm,
    see ``fastnn.layers.BatchNorm``): its number of rows, and sums over every rank."""

    def __init__(self, run: DistributedRun):
        self.run, self.rows = run, 0

    def sum(self, values) -> np.ndarray:
        return self.run._allreduce(values)


class DistributedRun:
    """One ``fit(..., distributed=...)``: made at the top of ``fit`` (the communicator and the
    agreement check), then given the prepared arrays to train (:meth:`fit`)."""

    def __init__(self, model, distributed, shard: bool, X, y, loss, settings: dict):
        if not isinstance(shard, bool):
            raise TypeError(f"shard must be True or False, got {shard!r}")
        self.model, self.shard = model, shard
        self.comm = communicator(distributed)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        check_agreement(self.comm, model, X, y, loss, settings, shard)
        if settings.get("track_gradients"):
            raise ValueError("track_gradients is not supported with distributed in this "
                             "version (its probe batch would differ per rank)")
        if isinstance(settings.get("class_weight"), str) and not shard and self.size > 1:
            raise ValueError("class_weight='balanced' with distributed needs the global class "
                             "counts: pass shard=True, or pass sample_weight computed from "
                             "the global counts")
        self.allreduce_time = 0.0

    def _local(self, *arrays):
        """This rank's share of whole arrays (shard=True), else the arrays as given."""
        if not self.shard:
            return arrays
        return tuple(None if a is None else a[_share(len(a), self.rank, self.size)]
                     for a in arrays)

    def _allreduce(self, values) -> np.ndarray:
        """Σ over ranks of a few float64 figures."""
        return self._reduce(values, "sum")

    def _reduce(self, values: np.ndarray, op: str) -> np.ndarray:
        """``values`` combined over the ranks by op ("sum", "min" or "max"), in float64:
        how ``Standardize.adapt`` takes every shard's rows."""
        buf = np.asarray(values, np.float64).copy()
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op={"sum": self._MPI.SUM,
                                                          "min": self._MPI.MIN,
                                                          "max": self._MPI.MAX}[op])
        return buf

    def fit(self, X, y, w, X_val, y_val, loss, optimizer, epochs: int, batch_size: int,
            shuffle: bool, callbacks, clip_norm, scaler, verbose):
        """Train data-parallel (the epoch loop of ``Sequential.fit``, with the step and the
        figures global); return the History."""
        self._MPI = _mpi()
        model, comm, main = self.model, self.comm, self.rank == 0
        if self.shard and scaler is not None:
            scaler.adapt(X)                               # the whole rows, as one process
        X, y, w, X_val, y_val = self._local(X, y, w, X_val, y_val)
        counts = np.array(comm.allgather(len(X)), np.int64)
        self.n, self.offset = int(counts.sum()), int(counts[:self.rank].sum())
        batch_size = min(validation.positive_int(batch_size, "batch_size"), self.n)
        has_val = X_val is not None
        training.check_monitors(callbacks, has_val, loss.name != "mse")
        if scaler is not None and not self.shard:
            scaler.adapt(X, reduce=self._reduce)            # the global rows' statistics
        broadcast_model(model, comm, optimizer=optimizer)
        apply_thread_defaults(comm)
        self.mass = self.n if w is None else self._allreduce([w.sum()])[0]
        if self.mass == 0:
            raise ValueError("every training row on every rank has weight 0")
        n_val = int(self._allreduce([0 if X_val is None else len(X_val)])[0]) if has_val else 0

        rng = np.random.default_rng((model.seed, model._fits))
        model._fits += 1
        order = np.arange(self.n)
        verbose = verbose if main else 0
        callbacks = [c for c in callbacks if main or not isinstance(c, RANK0_CALLBACKS)]
        self.dropouts = layers_of(model.layers, Dropout)
        self.batchnorms = layers_of(model.layers, BatchNorm) if self.size > 1 else []
        # the fused trainer computes each rank's share of a step, unless BatchNorm needs its
        # statistics reduced in mid-step (then the layer path: see the module docstring)
        self.trainer = None if self.batchnorms else model._make_trainer(loss, optimizer,
                                                                        batch_size)
        if self.trainer is not None:
            self.trainer.prepare(X, y)
        self.global_batch = _GlobalBatch(self)
        for layer in self.batchnorms:
            layer._sync = self.global_batch
        # what a rank without rows in a minibatch passes through BatchNorm: no rows
        self.no_rows = {layer: (np.empty((0, layer.in_features), model.dtype),
                                layer._workspace(0, model.dtype)) for layer in self.batchnorms}
        warned = []

        def train_epoch(epoch: int) -> dict:
            self.allreduce_time = 0.0
            if shuffle:
                rng.shuffle(order)
            total, correct = self._run_epoch(X, y, w, order, loss, optimizer, batch_size,
                                             clip_norm)
            total, correct = self._allreduce([total, -1 if correct is None else correct])
            if self._resync_if_drifted(optimizer) and not warned:
                warnings.warn("the ranks' parameters drifted apart (a non-deterministic "
                              "Allreduce or different CPUs?); rank 0's were broadcast",
                              RuntimeWarning, stacklevel=5)
                warned.append(True)
            logs = {"loss": float(total / self.mass),
                    "accuracy": None if correct < 0 else float(correct / self.n)}
            if has_val:
                logs.update(self._validate(X_val, y_val, loss, n_val))
            return logs

        def forget_restored_weights() -> None:
            model._weights_changed = False                 # (no trainer holds a copy)

        def detach() -> None:                              # the model trains alone again
            for layer in self.dropouts:
                layer._rows = None
            for layer in self.batchnorms:
                layer._sync = None

        try:
            history = training.run_epochs(model, optimizer, epochs, callbacks, verbose,
                                          train_epoch,
                                          lambda: {"allreduce_time": self.allreduce_time},
                                          forget_restored_weights, detach)
            history.fused = self.trainer is not None
            return history
        except Exception as exc:
            # say it in one flushed line first: the job's abort may cut the traceback that
            # the runner prints after this, and the other ranks only see the abort
            print(f"fastnn.distributed: rank {self.rank} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            raise

    def _run_epoch(self, X, y, w, order, loss, optimizer, batch_size, clip_norm):
        """One epoch over the global minibatches: this rank's share of each step's gradient,
        one Allreduce, the same update everywhere. Returns this rank's (Σ wᵢ lᵢ, n right or
        None)."""
        model, MPI, grads = self.model, self._MPI, self.model._grads
        n, lo = len(X), self.offset
        local = order - lo
        owned = (local >= 0) & (local < n)
        starts = np.arange(0, self.n, batch_size)
        if w is None:
            masses = np.minimum(batch_size, self.n - starts).astype(np.float64)
        else:
            position_w = np.zeros(self.n)
            position_w[owned] = w[local[owned]]
            masses = self._allreduce(np.add.reduceat(position_w, starts))
        total, correct = 0.0, 0 if loss.name != "mse" else None
        for s, mass in zip(starts, masses):
            if mass == 0:                                  # globally weightless: skipped
                continue
            sel = owned[s:s + batch_size]
            self.global_batch.rows = len(sel)
            value, n_right = self._share_of_step(X, y, w, local[s:s + batch_size][sel],
                                                 np.flatnonzero(sel), mass, loss)
            total += value
            if correct is not None:                        # (None: mse, no accuracy)
                correct += n_right
            t0 = time.perf_counter()
            self.comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            self.allreduce_time += time.perf_counter() - t0
            if clip_norm is not None:
                training.clip_gradients(grads, clip_norm)
            optimizer.step(model._k, model._params, grads)
            model._steps[0] += 1
        return total, correct

    def _share_of_step(self, X, y, w, idx, places, mass, loss):
        """This rank's share of a step's gradient, Σ_local wᵢ∇lᵢ / (the global mass), in the
        gradient buffer, from its rows ``idx`` at ``places`` in the global minibatch (maybe
        none: zeros, and it joins BatchNorm's sums); returns (Σ_local wᵢ lᵢ, n right)."""
        model = self.model
        if not len(idx):
            model._grads[...] = 0
            for layer in self.batchnorms:                  # the collectives of the others'
                layer._synced_forward(model._k, *self.no_rows[layer])   # forward and
            for layer in reversed(self.batchnorms):        # backward passes, with no rows
                layer._synced_backward(*self.no_rows[layer])
            return 0.0, 0
        if self.trainer is not None:                       # compiled: no Python per layer
            return self.trainer.gradients(X, y, idx, w, places, mass)
        for layer in self.dropouts:                        # each row's mask: its place's
            layer._rows = places
        Xb, yb = model._batch_buffers(len(idx), X, y)
        np.take(X, idx, axis=0, out=Xb)
        np.take(y, idx, axis=0, out=yb)
        wb = None if w is None else w[idx]
        local_mass = len(idx) if w is None else wb.sum()
        value, out = model._loss_and_gradients(Xb, yb, loss, wb, local_mass / mass)
        return value * local_mass, loss.n_correct(out, yb, probabilities=not loss.on_logits)

    def _validate(self, X_val, y_val, loss, n_val: int) -> dict:
        """Global val_loss (and val_accuracy): each rank's sums over its validation rows,
        reduced."""
        loss_sum = right = 0.0
        if X_val is not None and len(X_val):
            result = self.model._evaluate(X_val, y_val, loss)
            loss_sum = result["loss"] * len(X_val)
            right = round(result.get("accuracy", 0.0) * len(X_val))
        loss_sum, right = self._allreduce([loss_sum, right])
        figures = {"val_loss": float(loss_sum / n_val)}
        if loss.name != "mse":
            figures["val_accuracy"] = float(right / n_val)
        return figures

    def _resync_if_drifted(self, optimizer) -> bool:
        """Compare a checksum of the parameters across ranks (one small allgather per
        epoch); if they differ, broadcast rank 0's model and optimizer state. True if so."""
        checksum = zlib.crc32(self.model._state.view(np.uint8),
                              zlib.crc32(self.model._params.view(np.uint8)))
        if len(set(self.comm.allgather(checksum))) == 1:
            return False
        broadcast_model(self.model, self.comm, optimizer=optimizer)
        return True
