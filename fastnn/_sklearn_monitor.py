"""scikit-learn's per-epoch bookkeeping and stopping rules for its MLP, as a fastnn callback.

After every epoch scikit-learn's ``_fit_stochastic`` counts the epoch (``n_iter_``) and the
samples seen (``t_``), appends the epoch's loss with its L2 term to ``loss_curve_``, scores the
validation rows when early stopping, counts epochs without an improvement of ``tol``, rescales
the learning rate (invscaling, adaptive) and stops after ``n_iter_no_change`` such epochs.
:class:`SklearnMonitor` does the same between fastnn's epochs (where callbacks run), on the
estimator's attributes, so the compiled epoch itself is untouched.
"""
from __future__ import annotations

from ._sklearn_network import squared_weights
from .callbacks import Callback

#: scikit-learn's adaptive schedule stops instead of dividing the rate below this
ADAPTIVE_MIN_LR = 1e-6


class SklearnMonitor(Callback):
    """Updates ``estimator``'s fitted attributes after each epoch and stops training by
    scikit-learn's rules.

    ``loss_scale`` converts fastnn's epoch loss into scikit-learn's (the regressor's squared
    error is averaged over outputs there, summed here); ``l2_per_epoch`` is the factor that
    turns Σ‖W‖² into the epoch's mean L2 term (½·λ·batches·batch_size/rows, see
    :func:`fastnn._sklearn_network.weight_decay`); the term uses the weights as they were at
    the start of the epoch (exactly scikit-learn's with one batch per epoch; with several, it
    sums the norm before each batch). ``validation`` is (X_val, y_val, weights) when early
    stopping, else None.
    """

    def __init__(self, estimator, n_samples: int, loss_scale: float, l2_per_epoch: float,
                 validation, incremental: bool):
        self.estimator = estimator
        self.n_samples = n_samples
        self.loss_scale = loss_scale
        self.l2_per_epoch = l2_per_epoch
        self.validation = validation
        self.incremental = incremental
        self.converged = False
        self._l2 = 0.0

    def on_epoch_begin(self, epoch, logs):
        if self.l2_per_epoch:
            self._l2 = self.l2_per_epoch * squared_weights(self.model)

    def on_epoch_end(self, epoch, logs):
        est = self.estimator
        est.n_iter_ += 1
        est.t_ += self.n_samples
        est.loss_ = float(logs["loss"]) * self.loss_scale + self._l2
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        self._count_no_improvement()
        optimizer = self.model.optimizer
        if est._schedules_lr and est.learning_rate == "invscaling":
            optimizer.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = ("Validation score" if self.validation is not None
                    else "Training loss")
            message = (f"{what} did not improve more than tol={est.tol:f} for "
                       f"{est.n_iter_no_change} consecutive epochs.")
            if (est._schedules_lr and est.learning_rate == "adaptive"
                    and optimizer.lr > ADAPTIVE_MIN_LR):
                optimizer.lr = optimizer.lr / 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{message} Setting learning rate to {optimizer.lr:f}")
            else:
                if est.verbose:
                    print(f"{message} Stopping.")
                self.converged = True
                self.model.stop_training = True

    def _count_no_improvement(self) -> None:
        """scikit-learn's ``_update_no_improvement_count``: on the validation score with
        early stopping (keeping the best weights), else on the training loss."""
        est = self.estimator
        if self.validation is not None:
            X_val, y_val, w_val = self.validation
            score = est._score(X_val, y_val, sample_weight=w_val)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = self.model.get_weights()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]


def l2_factor(alpha: float, decay: float, n_rows: int, batch_size: int) -> float:
    """½·λ·(number of batches)·batch_size/rows: times Σ‖W‖², the L2 term of an epoch's mean
    loss as scikit-learn accumulates it (½·alpha·‖W‖²/batch rows per batch, weighted by the
    batch's rows)."""
    if not alpha:
        return 0.0
    batches = -(-n_rows // batch_size)
    return 0.5 * decay * batches * batch_size / n_rows


__all__ = ["SklearnMonitor", "l2_factor"]
