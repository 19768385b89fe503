"""scikit-learn estimators over fastnn: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier``/``MLPRegressor`` with the
stochastic solvers: the same parameter names, defaults, fitted attributes and stopping rules,
trained by fastnn's compiled epochs. What differs, and why:

* ``alpha`` (L2 penalty ½·alpha·‖W‖²/batch rows, as scikit-learn's) becomes fastnn's weight
  decay λ = alpha/(batch_size · mean sample weight), added to the gradient of *every*
  parameter (PyTorch's convention), so biases (and BatchNorm's γ, β) are decayed too, by
  λ·b per step; scikit-learn decays only the weights. The weights' gradient is
  scikit-learn's exactly on every full batch (see :func:`fastnn._sklearn_network.weight_decay`).
* Solvers: "sgd", "adam", and fastnn's "adamw", "rmsprop"; no "lbfgs" (and so no
  ``max_fun``). ``learning_rate`` schedules apply to "sgd" only, as in scikit-learn.
* ``momentum`` must be < 1; ``nesterovs_momentum`` is ignored when momentum is 0.
* Sparse X is rejected (fastnn's kernels are dense): pass ``X.toarray()``.
* fastnn's own parameters: ``batch_norm``, ``residual``, ``dropout``, ``class_weight``
  (classifier), ``clip_norm``, ``backend``, ``dtype`` (float32 by default; scikit-learn
  trains in X's dtype, float64 for float64 X).

The network is ``model_`` (a :class:`fastnn.Sequential` whose last layer outputs logits, or
the regression values); ``coefs_``/``intercepts_`` are views of its Dense layers' weights.
Inside a joblib worker (``GridSearchCV(n_jobs=2)``, ``cross_val_score(n_jobs=...)``) fastnn's
compute threads default to that worker's share of the cores: joblib's process backends start
each worker with ``OMP_NUM_THREADS``/``NUMBA_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set to
cores // n_jobs (``parallel_config(inner_max_num_threads=...)`` overrides it), and fastnn
never raises them.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import column_or_1d, compute_sample_weight
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import (_check_partial_fit_first_call,
                                      check_classification_targets, type_of_target,
                                      unique_labels)
from sklearn.utils.validation import check_is_fitted, validate_data

from ._sklearn_base import BaseMLP

_SHARED_DOC = """
    Parameters (scikit-learn's, with its defaults)
    ----------------------------------------------
    hidden_layer_sizes : array-like of int, default=(100,)
        Width of each hidden layer.
    activation : str, default="relu"
        Hidden activation: "identity", "logistic" (sigmoid), "tanh", "relu", or any other
        fastnn activation ("leaky_relu", "elu", "selu", "softplus", ...).
    solver : {"adam", "sgd", "adamw", "rmsprop"}, default="adam"
    alpha : float, default=1e-4
        L2 penalty; weight decay alpha/(batch_size · mean sample weight) on every parameter.
    batch_size : int or "auto", default="auto"
        "auto" is min(200, n_samples).
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Schedule for solver="sgd" (invscaling: lr = lr_init/(t_ + 1)^power_t after each
        epoch; adaptive: lr/5 after n_iter_no_change epochs without improvement).
    learning_rate_init, power_t, max_iter (epochs), shuffle, random_state, tol, verbose,
    warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction,
    beta_1, beta_2, epsilon, n_iter_no_change
        As in scikit-learn. rmsprop uses beta_2 as its smoothing constant and epsilon.

    fastnn's parameters
    -------------------
    batch_norm : bool, default=False
        BatchNorm after each hidden layer's activation.
    residual : bool, default=False
        x + block(x) around each hidden layer (after the first) as wide as the one before.
    dropout : float, default=0.0
        Dropout after each hidden layer (inverted dropout; none when predicting).
    clip_norm : float or None, default=None
        Rescale each step's gradient to at most this global L2 norm.
    backend : str, default="auto"
        fastnn backend ("auto", "cython", "numba_cpu", "numba_cuda", "reference").
    dtype : {"float32", "float64"}, default="float32"
        Arithmetic of the network.

    Attributes
    ----------
    n_features_in_, feature_names_in_, n_iter_ (epochs of the last fit), t_ (samples seen),
    loss_, loss_curve_ (scikit-learn's loss, L2 term included), best_loss_,
    validation_scores_, best_validation_score_, n_layers_, n_outputs_, out_activation_,
    coefs_ (list of W (in, out)), intercepts_ (list of b (out,)), model_ (fastnn.Sequential).
"""


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multilayer perceptron classifier trained by fastnn, with scikit-learn's API.

    Labels of any type; binary and multiclass y (softmax cross-entropy for more than two
    classes, a logistic output otherwise) and multilabel indicator y (independent sigmoid
    outputs, binary cross-entropy).
    """ + _SHARED_DOC + """
    class_weight : dict, "balanced" or None, default=None
        Per-class weights multiplied into ``sample_weight`` (:func:`sklearn.utils.
        compute_sample_weight`); single-output y only. classes_ holds the labels.
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 batch_norm=False, residual=False, dropout=0.0, class_weight=None,
                 clip_norm=None, backend="auto", dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.batch_norm = batch_norm
        self.residual = residual
        self.dropout = dropout
        self.class_weight = class_weight
        self.clip_norm = clip_norm
        self.backend = backend
        self.dtype = dtype

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> MLPClassifier:
        """Train on X (n_samples, n_features) and labels y (n_samples,), or a multilabel
        indicator matrix (n_samples, n_classes); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None) -> MLPClassifier:
        """One epoch over (X, y). ``classes`` (every label the calls will see) is required
        on the first call, as in scikit-learn."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_samples,), or the indicator matrix for multilabel y."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_samples, n_classes) in the order of ``classes_``
        (multilabel: each label's own probability)."""
        z = self._logits(X)
        if self._multiclass:
            return softmax(z, axis=1)
        p = expit(z)
        return np.column_stack([1 - p[:, 0], p[:, 0]]) if self.n_outputs_ == 1 else p

    def to_onnx(self, path, opset: int = 17) -> None:
        """Write the fitted classifier as ONNX: input ``input`` (rows, n_features) float32,
        outputs ``label`` (the original label values; multilabel: the 0/1 indicator rows)
        and ``probabilities`` (as :meth:`predict_proba`), no ZipMap. Needs the ``onnx``
        extra."""
        from .onnx_export import export_classifier
        check_is_fitted(self)
        export_classifier(self.model_, self.classes_, path, opset,
                          multilabel=self._label_binarizer.y_type_.startswith("multilabel"))

    def predict_log_proba(self, X) -> np.ndarray:
        """log of :meth:`predict_proba`, computed from the logits (finite where the
        probability underflows to 0)."""
        z = self._logits(X)
        if self._multiclass:
            return log_softmax(z, axis=1)
        if self.n_outputs_ == 1:
            return np.column_stack([log_expit(-z[:, 0]), log_expit(z[:, 0])])
        return log_expit(z)

    # -- the parts BaseMLP asks for ----------------------------------------------------------
    @property
    def _multiclass(self) -> bool:
        return self._label_binarizer.y_type_ == "multiclass"

    @property
    def _loss(self) -> str:
        return "cross_entropy" if self._multiclass else "binary_cross_entropy"

    def _n_outputs(self, y) -> int:
        return len(self.classes_) if self._multiclass else y.shape[1]

    def _out_activation(self, n_outputs: int) -> str:
        return "softmax" if self._multiclass else "logistic"

    def _stratify(self, n_outputs: int) -> bool:
        return n_outputs == 1               # scikit-learn stratifies binary y only

    def _validate_input(self, X, y, incremental, reset):
        """(X in the model's dtype, fastnn targets, labels): scikit-learn's checks and its
        rules for when classes_ is (re)defined."""
        X, y = validate_data(self, X, y, multi_output=True, dtype=np.dtype(self.dtype),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        f"warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        if self._label_binarizer.y_type_ in ("binary", "multiclass"):
            # each label's place in the sorted classes_ (all of y's are there: checked above)
            # is the index of its 1 in LabelBinarizer's encoding, without building the sparse
            # one-hot matrix (half of a 200-row partial_fit call's time)
            index = np.searchsorted(self.classes_, y)
            targets = index if self._multiclass else index.reshape(-1, 1).astype(self.dtype)
        else:
            targets = self._label_binarizer.transform(y).astype(self.dtype)    # multilabel
        return X, targets, y

    def _sample_weight(self, sample_weight, X, y_labels, incremental):
        """sample_weight × the class weights of ``class_weight``."""
        weights = super()._sample_weight(sample_weight, X, y_labels, incremental)
        if self.class_weight is None:
            return weights
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel y; pass "
                             "sample_weight instead")
        if incremental and self.class_weight == "balanced":
            raise ValueError("class_weight 'balanced' is not supported for partial_fit: one "
                             "call's class frequencies are not the data's. Compute weights "
                             "with sklearn.utils.class_weight.compute_class_weight on the "
                             "full y and pass them as a dict.")
        class_weights = compute_sample_weight(self.class_weight, y_labels)
        return class_weights if weights is None else weights * class_weights

    def _predict(self, X, check_input: bool = True) -> np.ndarray:
        z = self._logits(X, check_input=check_input)
        if self._multiclass:
            return self._label_binarizer.inverse_transform(z)     # argmax, as probabilities
        p = expit(z)
        return self._label_binarizer.inverse_transform(p.ravel() if self.n_outputs_ == 1
                                                       else p)

    def _score(self, X, y, sample_weight=None) -> float:
        """Accuracy on already validated X (scikit-learn's early-stopping score)."""
        y_pred = self._predict(X, check_input=False)
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multilayer perceptron regressor trained by fastnn, with scikit-learn's API: squared
    error (½ mean over outputs, as scikit-learn reports it), y of shape (n,) or (n, k).
    """ + _SHARED_DOC + """
    loss : {"squared_error"}, default="squared_error"
        scikit-learn's "poisson" is not available.
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 batch_norm=False, residual=False, dropout=0.0, clip_norm=None,
                 backend="auto", dtype="float32"):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.batch_norm = batch_norm
        self.residual = residual
        self.dropout = dropout
        self.clip_norm = clip_norm
        self.backend = backend
        self.dtype = dtype

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> MLPRegressor:
        """Train on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_targets);
        returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None) -> MLPRegressor:
        """One epoch over (X, y)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predictions (n_samples,), or (n_samples, n_targets) for 2-D y."""
        check_is_fitted(self)
        return self._predict(X)

    def to_onnx(self, path, opset: int = 17) -> None:
        """Write the fitted regressor as ONNX: input ``input`` (rows, n_features) float32,
        output ``output`` (rows, n_outputs_), which is :meth:`predict` (as a column for 1-D
        y). Needs the ``onnx`` extra."""
        from .onnx_export import export_model
        check_is_fitted(self)
        export_model(self.model_, path, opset)

    # -- the parts BaseMLP asks for ----------------------------------------------------------
    _loss = "mse"

    def _n_outputs(self, y) -> int:
        return y.shape[1]

    def _loss_scale(self, n_outputs: int) -> float:
        return 1.0 / n_outputs    # fastnn sums ½(ŷ − y)² over outputs; scikit-learn averages

    def _out_activation(self, n_outputs: int) -> str:
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=np.dtype(self.dtype), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, np.ascontiguousarray(y.reshape(len(y), -1), dtype=self.dtype), y

    def _predict(self, X, check_input: bool = True) -> np.ndarray:
        z = self._logits(X, check_input=check_input)
        return z.ravel() if z.shape[1] == 1 else z

    def _score(self, X, y, sample_weight=None) -> float:
        """R² on already validated X (scikit-learn's early-stopping score)."""
        y_pred = self._predict(X, check_input=False)
        if not np.isfinite(y_pred).all():
            return np.nan
        return r2_score(y, y_pred, sample_weight=sample_weight)


__all__ = ["MLPClassifier", "MLPRegressor"]
