"""The part of :class:`fastnn.sklearn.MLPClassifier` and ``MLPRegressor`` they share: parameter
constraints, the training run (scikit-learn's ``_fit_stochastic`` over fastnn's compiled
epochs), the fitted attributes and pickling.

The estimator keeps one :class:`fastnn.Sequential` (``model_``) whose weights are the fitted
parameters; ``coefs_`` and ``intercepts_`` are views of its Dense layers' weights in
scikit-learn's (in, out) layout, so nothing is stored twice.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _sklearn_network as network
from ._sklearn_monitor import SklearnMonitor, l2_factor
from .backends import BACKENDS

#: scikit-learn's automatic batch size: min(AUTO_BATCH, n_samples)
AUTO_BATCH = 200

#: the message of scikit-learn's MLP when training diverges
DIVERGED = ("Solver produced non-finite parameter weights. The input data may contain large "
            "values and need to be preprocessed.")

#: a linked optimizer state's stand-in while pickled (the state belongs to model_'s buffer)
_LINKED = "model_"


class BaseMLP(BaseEstimator):
    """Shared implementation; use :class:`fastnn.sklearn.MLPClassifier` or ``MLPRegressor``.

    Subclasses provide ``_validate_input`` (X checked and converted to the model's dtype, y
    turned into the fastnn targets), ``_loss`` (fastnn's loss name), ``_loss_scale``,
    ``_score`` and ``_predict_from_logits``.
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(network.HIDDEN_ACTIVATIONS))],
        "solver": [StrOptions(set(network.SOLVERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        # [0, 1): momentum 1 never forgets a step (scikit-learn accepts it; fastnn's SGD not)
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "batch_norm": ["boolean"],
        "residual": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "clip_norm": [Interval(Real, 0, None, closed="neither"), None],
        "backend": [StrOptions({"auto", *BACKENDS})],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    # -- fitted state ----------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices W (in, out) of the Dense layers, input layer first: writable views
        of ``model_``'s parameters (in its dtype)."""
        check_is_fitted(self)
        return [layer.weight for layer in network.dense_layers(self.model_.layers)]

    @coefs_.setter
    def coefs_(self, values) -> None:
        _assign(self.coefs_, values, "coefs_")

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors b (out,) of the Dense layers: writable views, as ``coefs_``."""
        check_is_fitted(self)
        return [layer.bias for layer in network.dense_layers(self.model_.layers)]

    @intercepts_.setter
    def intercepts_(self, values) -> None:
        _assign(self.intercepts_, values, "intercepts_")

    def __getstate__(self):
        state = super().__getstate__()
        optimizer = state.get("_optimizer")
        if optimizer is not None and getattr(optimizer, "_state_for", None) is not None:
            # the optimizer's state is tied to model_'s parameter buffer: pickle the link,
            # not a second copy of the weights
            optimizer = _shallow_copy(optimizer)
            optimizer._state_for = _LINKED
            state["_optimizer"] = optimizer
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        optimizer = state.get("_optimizer")
        if optimizer is not None and isinstance(getattr(optimizer, "_state_for", None), str):
            optimizer._state_for = self.model_.parameters()

    # -- training --------------------------------------------------------------------------
    @property
    def _schedules_lr(self) -> bool:
        """learning_rate (invscaling, adaptive) applies to solver="sgd", as in scikit-learn."""
        return self.solver == "sgd"

    def _hidden(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(not isinstance(h, (Integral, np.integer)) or isinstance(h, bool)
               or h <= 0 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(h) for h in sizes]

    def _sample_weight(self, sample_weight, X, y_labels, incremental):
        """The fit's per-row weights (the classifier multiplies in class weights), or None."""
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        return sample_weight

    def _fit(self, X, y, sample_weight=None, incremental: bool = False):
        """scikit-learn's ``_fit`` and ``_fit_stochastic``: validate, initialise on a first
        pass, hold out the early-stopping rows, then train for max_iter epochs (one for
        partial_fit) with :class:`SklearnMonitor` keeping the books between epochs."""
        hidden = self._hidden()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y, y_labels = self._validate_input(X, y, incremental, reset=first_pass)
        weights = self._sample_weight(sample_weight, X, y_labels, incremental)
        if weights is not None and not weights.any():
            raise ValueError("sample_weight (times class_weight) is zero for every row; at "
                             "least one must be positive")
        n_outputs = self._n_outputs(y)
        random_state = check_random_state(self.random_state)
        if first_pass:          # drawn before the split, as scikit-learn does
            initial = network.initial_weights([X.shape[1], *hidden, n_outputs],
                                              self.activation, random_state)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, y, weights, validation = self._hold_out(X, y, y_labels, weights, n_outputs,
                                                   random_state)
        if first_pass:
            self._initialize(X.shape[1], hidden, n_outputs, initial, random_state)
        batch_size = self._batch_size(len(X))
        mean_weight = 1.0 if weights is None else float(weights.mean())
        decay = network.weight_decay(self.alpha, batch_size, mean_weight)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = network.make_optimizer(
                self.solver, self.learning_rate_init, decay, self.momentum,
                self.nesterovs_momentum, self.beta_1, self.beta_2, self.epsilon)
        else:
            self._optimizer.weight_decay = decay     # this call's batch size and weights
        monitor = SklearnMonitor(self, len(X), self._loss_scale(n_outputs),
                                 l2_factor(self.alpha, decay, len(X), batch_size), validation,
                                 incremental)
        extra = {} if weights is None else {"sample_weight": weights}
        self.n_iter_ = 0
        try:
            self.model_.fit(X, y, loss=self._loss, optimizer=self._optimizer,
                            epochs=1 if incremental else self.max_iter, batch_size=batch_size,
                            shuffle=self.shuffle, callbacks=[monitor],
                            clip_norm=self.clip_norm, verbose=0, **extra)
        except FloatingPointError as exc:
            raise ValueError(DIVERGED) from exc
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if not incremental and not monitor.converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          f"and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=4)
        if self.early_stopping:
            self.model_.set_weights(self._best_weights)
        return self

    def _hold_out(self, X, y, y_labels, weights, n_outputs, random_state):
        """(X, y, weights) to train on and (X_val, labels, weights) or None: scikit-learn's
        early-stopping split, the same rows for the same random_state."""
        if not self.early_stopping:
            return X, y, weights, None
        stratify = y if self._stratify(n_outputs) else None
        rows, val = train_test_split(np.arange(len(X)), random_state=random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
        if len(val) < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        validation = (X[val], y_labels[val], None if weights is None else weights[val])
        return X[rows], y[rows], None if weights is None else weights[rows], validation

    def _batch_size(self, n: int) -> int:
        """scikit-learn's: "auto" is min(200, n); a larger one is clipped to n, warning."""
        if self.batch_size == "auto":
            return min(AUTO_BATCH, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped", stacklevel=5)
        return int(np.clip(self.batch_size, 1, n))

    def _initialize(self, n_features: int, hidden: list[int], n_outputs: int, initial,
                    random_state) -> None:
        """Build ``model_`` with scikit-learn's initial weights and reset the attributes
        scikit-learn's ``_initialize`` resets."""
        seed = int(random_state.randint(np.iinfo(np.int32).max))
        self.model_ = network.build_network(
            n_features, hidden, n_outputs, self.activation, self.batch_norm, self.residual,
            float(self.dropout), self.backend, seed, self.dtype)
        network.set_dense_weights(self.model_, initial)
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(hidden) + 2
        self.out_activation_ = self._out_activation(n_outputs)
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self._best_weights = self.model_.get_weights()
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _validate_X(self, X, reset: bool):
        return validate_data(self, X, reset=reset, dtype=np.dtype(self.dtype))

    def _logits(self, X, check_input: bool = True) -> np.ndarray:
        """The network's output for X (float64): logits for the classifier, values for the
        regressor."""
        check_is_fitted(self)
        if check_input:
            X = self._validate_X(X, reset=False)
        return self.model_.predict(X).astype(np.float64)

    def _stratify(self, n_outputs: int) -> bool:
        return False

    def _n_outputs(self, y) -> int:
        raise NotImplementedError

    def _loss_scale(self, n_outputs: int) -> float:
        return 1.0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.non_deterministic = False
        return tags


def _assign(views: list[np.ndarray], values, name: str) -> None:
    """Write ``values`` (a list of arrays) into the model's parameter views."""
    values = list(values)
    if len(values) != len(views):
        raise ValueError(f"{name} needs {len(views)} arrays, got {len(values)}")
    for i, (view, value) in enumerate(zip(views, values)):
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"{name}[{i}] has shape {value.shape}, expected {view.shape}")
        view[...] = value


def _shallow_copy(obj):
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new
