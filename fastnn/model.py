"""Sequential: a stack of layers with one flat parameter buffer, trained by backend kernels."""
from __future__ import annotations

import contextlib
import numbers
import sys
import threading

import numpy as np

from . import backends, diagnostics, losses, training, validation
from . import plan as plan_module
from .kernels import CLIP_NORM
from .layers import Dense, Dropout, Layer, bind_chain, check_chain, layers_of
from .optimizers import SGD, Optimizer
from .preprocessing import leading_standardize
from .training import History

DTYPES = ("float32", "float64")

#: a compile that takes longer than this is announced (once) while it runs
COMPILE_NOTICE_S = 1.0


@contextlib.contextmanager
def _told_if_slow(message: str, verbose):
    """Print ``message`` to stderr once if the block is still running after
    :data:`COMPILE_NOTICE_S` (a JIT compile; a warm cache loads in far less), when verbose."""
    if not verbose:                  # silent: not even a Timer object (fit in a loop)
        yield
        return
    timer = threading.Timer(COMPILE_NOTICE_S, lambda: print(message, file=sys.stderr,
                                                            flush=True))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


class Sequential:
    """A feed-forward network: layers applied in order.

    Parameters
    ----------
    layers : list of Layer
        Consecutive widths must chain (layer i's inputs = layer i−1's outputs).
    backend : str
        "auto" (see :func:`fastnn.available_backends`) or a backend name.
    seed : int
        Seeds the initial weights and the shuffling: same seed and backend, same run.
    dtype : "float32" or "float64"
    """

    def __init__(self, layers: list[Layer], backend: str = "auto", seed: int = 0,
                 dtype: str = "float32"):
        layers = list(layers)
        if not layers or not all(isinstance(l, Layer) for l in layers):
            raise TypeError("layers must be a non-empty list of fastnn layers")
        check_chain(layers, "Sequential")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.dtype = _float_dtype(dtype)
        self.backend, self._k = backends.resolve(backend)
        self.layers = layers
        self.seed = int(seed)
        n_params = sum(l.n_params for l in layers)
        n_state = sum(l.n_state for l in layers)
        self._params = np.zeros(n_params, self.dtype)
        self._grads = np.zeros(n_params, self.dtype)
        self._state = np.zeros(n_state, self.dtype)
        bind_chain(layers, self._params, self._grads, self._state)
        #: minibatches trained so far, over all fits: with the seed, it keys Dropout's masks
        self._steps = np.zeros(1, np.int64)
        for stream, layer in enumerate(layers_of(layers, Dropout)):
            layer._seed, layer._steps, layer.stream = self.seed, self._steps, stream
        rng = np.random.default_rng(self.seed)
        for layer in layers:
            layer._reset_parameters(rng)
        self._workspaces: dict[int, dict] = {}
        self._plans: dict = {}
        self._fits = 0
        #: let the backend fuse whole epochs into one compiled call where it can
        self.fuse = True

    # -- structure -------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def last_activation(self) -> str:
        last = self.layers[-1]
        return last.activation if isinstance(last, Dense) else "identity"

    def parameters(self) -> np.ndarray:
        """All parameters as one flat vector (a view: writing to it changes the model)."""
        return self._params

    def gradients(self) -> np.ndarray:
        """All gradients from the last backward pass, in the layout of :meth:`parameters`."""
        return self._grads

    def get_config(self) -> dict:
        return {"layers": [l.get_config() for l in self.layers], "seed": self.seed,
                "dtype": self.dtype.name}

    def __reduce__(self):
        """Pickle (and ``copy.deepcopy``) by value: the architecture, weights, BatchNorm
        statistics, dtype, seed and backend *name*, never the kernel module or workspaces. The
        backend is resolved again by name when unpickled (a RuntimeError says why if it
        cannot run there). For in-process tools (joblib, multiprocessing, scikit-learn's
        cloning); files are for :meth:`save`, which never pickles."""
        return (_unpickle, (self.get_config(), self.backend, self._params.copy(),
                            self._state.copy(), self._fits, self.fuse, int(self._steps[0])))

    def __repr__(self):
        inner = ",\n    ".join(map(repr, self.layers))
        return (f"Sequential([\n    {inner}\n], backend={self.backend!r}, "
                f"dtype={self.dtype.name!r}, parameters={self._params.size})")

    # -- passes ----------------------------------------------------------------------------
    def _workspace(self, batch: int) -> dict:
        """Buffers for one batch size, allocated once and reused by every later batch."""
        ws = self._workspaces.get(batch)
        if ws is None:
            if len(self._workspaces) >= 4:       # bound memory when many sizes come through
                self._workspaces.clear()
            ws = {"layers": [l._workspace(batch, self.dtype) for l in self.layers],
                  "dout": np.empty((batch, self.out_features), self.dtype)}
            self._workspaces[batch] = ws
        return ws

    def _forward(self, X: np.ndarray, training: bool, logits: bool) -> np.ndarray:
        ws = self._workspace(len(X))["layers"]
        h, last = X, len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer._forward(self._k, h, ws[i], training, logits=logits and i == last)
        return h

    def _backward(self, dout: np.ndarray) -> None:
        ws = self._workspace(len(dout))["layers"]
        d = dout
        for i in range(len(self.layers) - 1, -1, -1):
            d = self.layers[i]._backward(self._k, d, ws[i], need_dX=i > 0)

    def _loss_and_gradients(self, X, y, loss: losses.Loss, w=None, scale: float = 1.0):
        """Forward in training mode, loss kernel (weighted by rows ``w`` if given), backward:
        fills the gradient buffer with ``scale`` × the loss's gradient (a process's share of a
        distributed minibatch's loss); returns (loss, output)."""
        out = self._forward(X, training=True, logits=loss.on_logits)
        dout = self._workspace(len(X))["dout"]
        value = getattr(self._k, loss.kernel)(out, y, dout, w)
        if scale != 1.0:
            dout *= dout.dtype.type(scale)
        self._backward(dout)
        return value, out

    def _row_weights(self, y, loss, sample_weight, class_weight, some_count: bool = True):
        """The fit's per-row weights (float64), or None when every row weighs 1; with
        ``some_count`` (not for one rank's shard), some must be non-zero."""
        w = None
        if sample_weight is not None:
            w = validation.sample_weights(sample_weight, len(y), allow_all_zero=not some_count)
        if class_weight is not None:
            cw = loss.class_weights(y, class_weight, self.out_features)
            w = cw if w is None else w * cw
            if some_count and not w.any():
                raise ValueError("class_weight (with sample_weight) gives every row weight 0")
        return w

    def _prepare(self, X, y, loss, x_name="X", y_name="y"):
        loss = losses.get(loss)
        loss.check_model(self.last_activation, self.out_features)
        X = validation.features(X, self.in_features, self.dtype, x_name)
        y = loss.targets(y, self.out_features, self.dtype, y_name)
        validation.same_rows(X, y, x_name, y_name)
        return X, y, loss

    # -- public API ------------------------------------------------------------------------
    def compute_gradients(self, X, y, loss: str, sample_weight=None) -> float:
        """Loss of (X, y) as one batch in training mode (weighted by ``sample_weight``);
        fills :meth:`gradients`.

        Parameters are not changed (BatchNorm's running statistics are, as in any training
        forward pass); Dropout draws the masks of the next training step, the same on every
        call until the model trains.
        """
        X, y, loss = self._prepare(X, y, loss)
        w = None if sample_weight is None else validation.sample_weights(sample_weight, len(y))
        return self._loss_and_gradients(X, y, loss, w)[0]

    def fit(self, X, y, loss: str, optimizer: Optimizer | None = None, epochs: int = 10,
            batch_size: int = 32, shuffle: bool = True, validation_data=None,
            validation_split: float = 0.0, callbacks=None, early_stopping: bool | int = False,
            clip_norm: float | None = None, sample_weight=None, class_weight=None,
            standardize: bool = False, verbose: int = 1,
            track_gradients: bool = False, distributed=None, shard: bool = False) -> History:
        """Train with minibatch gradient descent; return the per-epoch :class:`History`.

        ``loss`` is "mse", "cross_entropy" or "binary_cross_entropy" (see
        :mod:`fastnn.losses` for the targets each takes). ``optimizer`` defaults to
        ``SGD(0.01)``. ``validation_data=(X_val, y_val)`` adds val_loss (and val_accuracy)
        per epoch; without it, ``validation_split`` (a fraction in [0, 1)) holds out that share
        of the rows by a seeded split taken before training, stratified by class for the
        cross-entropy losses. ``callbacks`` is a list of :class:`fastnn.callbacks.Callback`
        (run between epochs); ``early_stopping=True`` adds ``EarlyStopping(patience=10)`` on
        val_loss, an int sets the patience, and then ``validation_split`` defaults to 0.1.
        ``clip_norm`` rescales each step's gradient to a global L2 norm of at most that, exactly
        as ``torch.nn.utils.clip_grad_norm_`` (g ← g·min(1, clip_norm/(‖g‖₂ + 1e-6))), inside
        the fused step. ``standardize=True`` adapts the model's first layer, a
        :class:`fastnn.Standardize`, on the training rows (after any validation split, before
        the first step).

        ``sample_weight`` (n,), non-negative and finite, and ``class_weight`` (a dict {label:
        weight}, labels not named weighing 1, or "balanced": n / (n_classes · count); the
        cross-entropy losses only, with one label per row) weight the rows: a minibatch's loss
        is Σ wᵢ lᵢ / Σ wᵢ, the reduction of ``torch.nn.CrossEntropyLoss(weight=…)`` (and of
        ``np.average`` for the other losses), so weight 2 on a row equals that row twice in
        its minibatch. Both weights multiply. A minibatch whose weights sum to 0 is skipped
        (no update, no optimizer step). history["loss"] is the weighted mean; accuracy and
        the validation figures are unweighted. ``verbose=0`` silences the progress bar and
        the callbacks' messages.
        ``track_gradients=True`` records after each epoch the weight-gradient norm of every
        Dense layer (forward order), measured on a fixed batch of training rows, as
        history["gradient_norms"] (see :func:`fastnn.diagnostics.gradient_norms`).
        ``distributed="mpi"`` (``MPI.COMM_WORLD``) or an mpi4py communicator trains
        data-parallel: every rank calls fit with its own shard of the rows (or, with
        ``shard=True``, the whole arrays, of which it takes its share); ``batch_size`` is the
        global minibatch, and the result equals single-process training on the shards
        concatenated in rank order. Layer by layer, one Allreduce per step; see
        :mod:`fastnn.distributed` for the semantics and this version's limits.

        Memory: a C-contiguous X in the model's dtype is trained in place; beyond it fit
        needs the minibatch buffers, O(n) index and target arrays (the int64 epoch order and
        validation rows: 8 bytes a row; int labels other than int64 are converted once) and
        blocks of a few hundred KiB for the finiteness check and ``standardize``. An X in
        another dtype or layout is converted once, a full copy; so is a read-only X on the
        numba_cpu backend, whose compiled trainer takes writeable arrays. ``distributed``
        still copies the split's rows.
        """
        run = None
        if distributed is not None:         # data-parallel over MPI: see fastnn.distributed
            from .distributed import DistributedRun
            run = DistributedRun(self, distributed, shard, X, y, loss, dict(
                loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                shuffle=shuffle, validation_data=validation_data,
                validation_split=validation_split, callbacks=callbacks,
                early_stopping=early_stopping, clip_norm=clip_norm,
                sample_weight=sample_weight, class_weight=class_weight,
                standardize=standardize, track_gradients=track_gradients))
        X, y, loss = self._prepare(X, y, loss)
        optimizer = SGD(0.01) if optimizer is None else optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn optimizer such as fastnn.SGD(0.1) or "
                            f"fastnn.Adam(1e-3), got {type(optimizer).__name__}")
        epochs = validation.positive_int(epochs, "epochs")
        for name, flag in (("track_gradients", track_gradients), ("standardize", standardize)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        scaler = leading_standardize(self) if standardize else None
        callbacks = training.callback_list(callbacks, early_stopping)
        if clip_norm is not None:
            clip_norm = validation.positive_float(clip_norm, "clip_norm")
        w = self._row_weights(y, loss, sample_weight, class_weight, distributed is None)
        # the training rows and the validation rows of X_val: indices, or None for all rows
        rows = val_rows = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            X_val, y_val, _ = self._prepare(*validation_data, loss.name, "X_val", "y_val")
        else:
            fraction = training.split_fraction(validation_split, early_stopping)
            rows, val_rows = training.split(y, fraction, loss.name != "mse",
                                            np.random.default_rng((self.seed, 1 << 20)))
            X_val, y_val = (None, None) if val_rows is None else (X, y)
        n = len(X) if rows is None else len(rows)
        mass = n if w is None else float(w.sum() if rows is None else w[rows].sum())
        if mass == 0 and run is None:       # (distributed: checked over every rank)
            raise ValueError("every training row left after validation_split has weight 0")
        if run is not None:                 # the epochs run in fastnn.distributed, on copies
            X_val, y_val = training.take(val_rows, X_val, y_val)
            return run.fit(*training.take(rows, X, y, w), X_val, y_val, loss, optimizer,
                           epochs, batch_size, shuffle, callbacks, clip_norm, scaler, verbose)
        batch_size = min(validation.positive_int(batch_size, "batch_size"), n)
        training.check_monitors(callbacks, X_val is not None, loss.name != "mse")
        if scaler is not None:                           # on the training rows only
            scaler.adapt(X, rows)
        probed = None
        if track_gradients:                              # taken before rows are shuffled
            probed = diagnostics.probe_rows(n, batch_size)
            probed = probed if rows is None else rows[probed]

        rng = np.random.default_rng((self.seed, self._fits))
        self._fits += 1
        order = np.arange(n) if rows is None else rows   # shuffled in place: rows is ours
        plan = self._fused_plan(loss, optimizer, batch_size)
        if plan is not None:
            plan.hyper[CLIP_NORM] = clip_norm or 0.0
        trainer = None if plan is None else self._k.make_trainer(plan)
        with _told_if_slow(f"{self.backend}: compiling kernels for this model (once; cached "
                           f"on disk for later runs)", verbose):
            # compile before the progress bar starts its clock, so no ETA includes it
            if trainer is not None:
                trainer.prepare(X, y)
            if X_val is not None:
                first = slice(0, 1) if val_rows is None else val_rows[:1]
                self._evaluate(X_val[first], y_val[first], loss)

        def train_epoch(epoch: int) -> dict:
            if shuffle:
                rng.shuffle(order)
            if trainer is not None:
                plan.load_optimizer(optimizer)          # this epoch's learning rate & co.
                total, correct = trainer.run_epoch(X, y, order, w)
                optimizer.fused_steps_done(plan.step[0])
            else:
                total, correct = self._run_epoch(X, y, order, loss, optimizer, batch_size,
                                                 clip_norm, w)
            logs = {"loss": float(total / mass),
                    "accuracy": None if correct is None else correct / n}
            if trainer is not None and (X_val is not None or track_gradients or callbacks):
                trainer.sync()              # evaluation, probes and callbacks read host weights
            if X_val is not None:
                logs.update({f"val_{k}": v for k, v in
                             self._evaluate(X_val, y_val, loss, rows=val_rows).items()})
            return logs

        def probe() -> dict:
            return {"gradient_norms": diagnostics.gradient_norms(
                self, X[probed], y[probed], loss.name).weight_norms}

        def take_restored_weights() -> None:
            if trainer is not None and self._weights_changed:
                trainer.push()              # a callback restored weights: the trainer's copy
                self._weights_changed = False

        history = training.run_epochs(self, optimizer, epochs, callbacks, verbose, train_epoch,
                                      probe if track_gradients else None,
                                      take_restored_weights,
                                      trainer.sync if trainer is not None else training._nothing)
        history.fused = trainer is not None
        return history

    def get_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(parameters, BatchNorm running statistics): copies of the model's flat buffers."""
        return self._params.copy(), self._state.copy()

    def set_weights(self, weights: tuple[np.ndarray, np.ndarray]) -> None:
        """Restore what :meth:`get_weights` returned (also during ``fit``, from a callback)."""
        params, state = weights
        for name, value, target in (("parameters", params, self._params),
                                    ("state", state, self._state)):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(f"{name} has shape {value.shape} but the model's has "
                                 f"{target.shape}")
            target[...] = value
        self._weights_changed = True

    def _fused_plan(self, loss, optimizer, batch_size):
        """The training plan that the backend's fused trainer runs (:mod:`fastnn.plan`), or
        None where the layer-by-layer path must run: the backend has no fused trainer
        (reference), ``model.fuse`` is False (used to verify the fused path), a layer has no op
        form or the optimizer no fused rule.

        A backend's ``make_trainer(plan)`` returns an object with ``prepare(X, y)`` (compile
        whatever these arrays need, train nothing), ``run_epoch(X, y, order, w) -> (Σ wᵢ lᵢ
        over the rows trained, n_correct or None)`` training the minibatches
        ``order[i:i + batch_size]`` with no Python between layers (``w``: float64 row weights
        in data order, or None for all 1; a minibatch whose weights sum to 0 is skipped) and
        advancing ``plan.train_steps`` by the minibatches trained, ``sync()`` writing
        parameters, BatchNorm statistics and optimizer state back to the host buffers, and
        ``push()`` taking parameters and statistics a callback wrote on the host. Plans
        are kept per (batch size, loss), at most four.
        """
        if getattr(self._k, "make_trainer", None) is None or not self.fuse:
            return None
        plan = self._plan((batch_size, loss.name),
                          lambda: plan_module.build(self, loss, batch_size))
        if plan is None or not plan.load_optimizer(optimizer):
            return None
        return plan

    def _plan(self, key, build):
        """The plan kept under ``key`` (training or inference), built by ``build()`` the first
        time; at most four are kept, to bound memory like the workspaces."""
        if key not in self._plans:
            if len(self._plans) >= 4:
                self._plans.clear()
            self._plans[key] = build()
        return self._plans[key]

    def _make_trainer(self, loss, optimizer, batch_size):
        """The backend's fused trainer for this fit (see :meth:`_fused_plan`), or None."""
        plan = self._fused_plan(loss, optimizer, batch_size)
        return None if plan is None else self._k.make_trainer(plan)

    def _run_epoch(self, X, y, order, loss, optimizer, batch_size, clip_norm=None, w=None):
        """One epoch layer by layer: per minibatch, forward, loss, backward, (clip,) optimizer
        step; returns (Σ wᵢ lᵢ, n right or None), skipping minibatches of weight 0."""
        total, correct = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            wb, mass = (None, len(idx)) if w is None else (w[idx], w[idx].sum())
            if mass == 0:
                continue
            Xb, yb = self._batch_buffers(len(idx), X, y)
            np.take(X, idx, axis=0, out=Xb)
            np.take(y, idx, axis=0, out=yb)
            value, out = self._loss_and_gradients(Xb, yb, loss, wb)
            if clip_norm is not None:
                training.clip_gradients(self._grads, clip_norm)
            optimizer.step(self._k, self._params, self._grads)
            self._steps[0] += 1
            total += value * mass
            n_right = loss.n_correct(out, yb, probabilities=not loss.on_logits)
            correct = None if n_right is None else correct + n_right
        return total, correct

    def _batch_buffers(self, batch, X, y):
        """Minibatch gather buffers, allocated once per (batch size, target layout)."""
        ws = self._workspace(batch)
        key = ("batch", y.dtype, y.shape[1:])
        if key not in ws:
            ws[key] = (np.empty((batch,) + X.shape[1:], X.dtype),
                       np.empty((batch,) + y.shape[1:], y.dtype))
        return ws[key]

    def predict(self, X, batch_size: int = 1024) -> np.ndarray:
        """Network output for X (samples, in): (samples, out), after the last activation.

        At most ``batch_size`` rows go through the network at a time (per thread, on the
        numba_cpu and cython backends, whose fused forward pass shares the rows out among
        the threads), which bounds the memory beyond X and the output."""
        batch_size = validation.positive_int(batch_size, "batch_size")
        predictor = self._predictor(batch_size, logits=False)
        given, X = X, validation.features(X, self.in_features, self.dtype,
                                          finite=predictor is None)
        out = np.empty((len(X), self.out_features), self.dtype)
        if predictor is not None:
            if not predictor.run(X, out):         # it met a NaN or Inf: say what and where
                validation.features(given, self.in_features, self.dtype)
                raise RuntimeError("the fused forward pass reported a NaN or Inf in X, "
                                     "which validation did not find")
            return out
        for s in range(0, len(X), batch_size):
            out[s:s + batch_size] = self._forward(X[s:s + batch_size], training=False,
                                                  logits=False)
        return out

    def _predictor(self, rows: int, logits: bool):
        """The backend's fused forward pass (evaluation mode) for chunks of up to ``rows``
        rows, or None where the layer-by-layer forward runs: the backend has none (reference),
        ``model.fuse`` is False, or a layer has no op form. A backend's
        ``make_predictor(plan)`` (plan: :class:`fastnn.plan.InferencePlan`) returns an object
        whose ``run(X, out)`` writes the output for any number of rows of X with no Python
        between layers and returns whether every value of X was finite (the rows are
        checked as each thread reads its chunk, while they are in cache: a separate pass
        over X made mnist's predict 13-22% slower; out is incomplete when it returns False).
        Plans are kept per (rows, logits), at most four."""
        if getattr(self._k, "make_predictor", None) is None or not self.fuse:
            return None
        plan = self._plan(("inference", rows, logits),
                          lambda: plan_module.build_inference(self, rows, logits))
        if plan is None:
            return None
        if "predictor" not in plan.scratch:              # made once per plan
            plan.scratch["predictor"] = self._k.make_predictor(plan)
        return plan.scratch["predictor"]

    def _infer(self, X: np.ndarray, logits: bool, batch_size: int) -> np.ndarray:
        """The output for X (at most ``batch_size`` rows) in evaluation mode, fused where it
        can be."""
        predictor = self._predictor(batch_size, logits)
        if predictor is None:
            return self._forward(X, training=False, logits=logits)
        out = np.empty((len(X), self.out_features), self.dtype)
        if not predictor.run(X, out):               # X was validated: NaN and Inf are not in it
            raise RuntimeError("the fused forward pass met a NaN or Inf in validated rows")
        return out

    def evaluate(self, X, y, loss: str, batch_size: int = 1024, sample_weight=None) -> dict:
        """{"loss": mean loss, "accuracy": fraction correct (cross-entropies only)} on (X, y);
        with ``sample_weight`` both are weighted means (Σ wᵢ lᵢ / Σ wᵢ, Σ wᵢ [right] / Σ wᵢ)."""
        X, y, loss = self._prepare(X, y, loss)
        w = None if sample_weight is None else validation.sample_weights(sample_weight, len(y))
        return self._evaluate(X, y, loss, validation.positive_int(batch_size, "batch_size"), w)

    def _evaluate(self, X, y, loss, batch_size=1024, w=None, rows=None) -> dict:
        """evaluate on (X, y), or on their rows ``rows`` (indices), gathered a batch at a
        time."""
        total, correct = 0.0, 0.0
        n = len(X) if rows is None else len(rows)
        for s in range(0, n, batch_size):
            chunk = slice(s, s + batch_size) if rows is None else rows[s:s + batch_size]
            Xc, yc = X[chunk], y[chunk]
            wc = None if w is None else w[chunk]
            mass = len(Xc) if w is None else wc.sum()
            out = self._infer(Xc, loss.on_logits, batch_size)
            total += getattr(self._k, loss.kernel)(out, yc, self._workspace(len(Xc))["dout"],
                                                   wc) * mass
            right = loss.correct(out, yc, probabilities=not loss.on_logits)
            correct = None if right is None else correct + (
                right.sum() if w is None else np.dot(wc, right))
        mass = n if w is None else (w.sum() if rows is None else w[rows].sum())
        result = {"loss": total / mass}
        if correct is not None:
            result["accuracy"] = float(correct / mass)
        return result

    def save(self, path) -> None:
        """Write the architecture and weights to ``path`` (see :func:`fastnn.load`)."""
        from .io import save
        save(self, path)

    def to_onnx(self, path, opset: int = 17) -> None:
        """Write the model as ONNX (input ``input``, output ``output`` = :meth:`predict`,
        float32); needs the onnx extra. See :mod:`fastnn.onnx_export`."""
        from .onnx_export import export_model
        export_model(self, path, opset)


def _unpickle(config: dict, backend: str, params: np.ndarray, state: np.ndarray, fits: int,
              fuse: bool, steps: int = 0) -> Sequential:
    """Rebuild a pickled :class:`Sequential` (see ``Sequential.__reduce__``)."""
    from .layers import from_config

    model = Sequential([from_config(c) for c in config["layers"]], backend=backend,
                       seed=config["seed"], dtype=config["dtype"])
    model._params[...] = params
    model._state[...] = state
    model._fits, model.fuse = fits, fuse
    model._steps[0] = steps
    return model
