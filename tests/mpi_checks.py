"""Checks of fastnn.distributed, run on 2 ranks by tests/test_distributed.py:

    mpiexec -n 2 python -m mpi4py tests/mpi_checks.py equality
    mpiexec -n 2 python -m mpi4py tests/mpi_checks.py refuse-width   (and the other failures)

``equality`` trains every case data-parallel and, on rank 0, single-process on the global
data (the shards concatenated in rank order), and prints one line per case: ``CASE <name>
ok`` or ``CASE <name> FAIL <why>``. The failure modes print what each rank saw. The backend
is $FASTNN_MPI_BACKEND, else cython, else numba_cpu, else reference.
"""
from __future__ import annotations

import os
import sys
import traceback

import numpy as np
from mpi4py import MPI

import fastnn
from fastnn.backends import available_backends
from fastnn.callbacks import Callback, EarlyStopping

comm = MPI.COMM_WORLD
RANK, SIZE = comm.Get_rank(), comm.Get_size()


def say(line: str) -> None:
    """Print one line in one write: the ranks share mpiexec's stdout, and print's separate
    newline lets another rank's output land mid-line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def backend() -> str:
    if os.environ.get("FASTNN_MPI_BACKEND"):
        return os.environ["FASTNN_MPI_BACKEND"]
    usable = available_backends()
    return next(n for n in ("cython", "numba_cpu", "reference") if usable[n].usable)


BACKEND = backend()


def data(n=97, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1).astype(int)
    return X, y % classes


def dense(dtype, seed=1):
    return fastnn.Sequential([fastnn.Dense(8, 16, "tanh"), fastnn.Dense(16, 16, "relu"),
                              fastnn.Dense(16, 3)], backend=BACKEND, seed=seed, dtype=dtype)


def bn_residual(dtype):
    return fastnn.Sequential([fastnn.Dense(8, 16, "relu"), fastnn.BatchNorm(16),
                              fastnn.Residual([fastnn.Dense(16, 16, "relu"),
                                               fastnn.Dense(16, 16)]),
                              fastnn.Dense(16, 3)], backend=BACKEND, seed=2, dtype=dtype)


def with_dropout(dtype):
    return fastnn.Sequential([fastnn.Dense(8, 32, "relu"), fastnn.Dropout(0.3),
                              fastnn.Dense(32, 3)], backend=BACKEND, seed=3, dtype=dtype)


def tol(dtype) -> dict:
    """float64: 1e-12 (only the order of the sums differs); float32: DESIGN.md's bound."""
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-4,
                                                                      "atol": 1e-5}


def identical_across_ranks(model) -> bool:
    """Every rank's parameters and state equal rank 0's, bit for bit."""
    mine = np.concatenate([model._params.view(np.uint8), model._state.view(np.uint8)])
    root = comm.bcast(mine if RANK == 0 else None)
    return bool(comm.allreduce(int(np.array_equal(mine, root)), op=MPI.MIN))


def shard_bounds(n, sizes):
    edges = np.cumsum([0, *sizes])
    assert edges[-1] == n
    return slice(edges[RANK], edges[RANK + 1])


# -- the equality cases ----------------------------------------------------------------------
def case(build, dtype, optimizer, fit_kwargs=None, sizes=None, weights=False,
         compare_fused=False, validation=False, fuse=True):
    """Train ``build(dtype)`` on 2 ranks (shard sizes ``sizes``, else shard=True; ``fuse``
    False: the layer path, else the fused trainer where the backend has one) and compare
    with single-process training on rank 0. Returns (ok, why)."""
    X, y = data()
    fit_kwargs = {"loss": "cross_entropy", "epochs": 3, "batch_size": 16, "verbose": 0,
                  **(fit_kwargs or {})}
    w = None
    if weights:
        w = np.random.default_rng(5).uniform(0, 2, len(X))
        w[:10] = 0                                        # some rows weigh nothing
        fit_kwargs["sample_weight"] = w
    if validation:
        Xv, yv = data(41, seed=9)
        fit_kwargs["validation_data"] = (Xv, yv)
    model = build(dtype)
    model.fuse = fuse
    if sizes is None:
        hist = model.fit(X, y, optimizer=optimizer(), distributed="mpi", shard=True,
                         **fit_kwargs)
    else:
        rows = shard_bounds(len(X), sizes)
        kwargs = dict(fit_kwargs)
        if weights:
            kwargs["sample_weight"] = w[rows]
        if validation:
            vrows = shard_bounds(len(Xv), [20, 21])
            kwargs["validation_data"] = (Xv[vrows], yv[vrows])
        hist = model.fit(X[rows], y[rows], optimizer=optimizer(), distributed="mpi", **kwargs)
    why = []
    if not identical_across_ranks(model):
        why.append("parameters differ across ranks")
    fusible = BACKEND != "reference" and not fastnn.layers.layers_of(model.layers,
                                                                     fastnn.BatchNorm)
    if hist.fused != (fuse and fusible):
        why.append(f"history.fused is {hist.fused}")
    if RANK == 0:
        refs = [False] + ([True] if compare_fused else [])
        for fuse in refs:
            ref = build(dtype)
            ref.fuse = fuse
            ref_hist = ref.fit(X, y, optimizer=optimizer(), **fit_kwargs)
            t = tol(dtype) if not fuse else tol("float32")
            try:
                np.testing.assert_allclose(model._params, ref._params, **t)
                np.testing.assert_allclose(model._state, ref._state, **t)
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    if key in ref_hist.history:
                        np.testing.assert_allclose(hist[key], ref_hist[key], **t)
                if hist.stopped_epoch != ref_hist.stopped_epoch:
                    why.append(f"stopped at {hist.stopped_epoch}, single process at "
                               f"{ref_hist.stopped_epoch}")
            except AssertionError as exc:
                why.append(f"{'fused' if fuse else 'layer path'}: {str(exc).strip()[:400]}")
    return why


def world_size_one(build, dtype, optimizer):
    """On rank 0 alone (MPI.COMM_SELF): distributed fit on the layer path equals plain fit on
    the layer path, bit for bit."""
    X, y = data()
    if RANK != 0:
        return []
    a, b = build(dtype), build(dtype)
    a.fuse = b.fuse = False
    ha = a.fit(X, y, "cross_entropy", optimizer(), epochs=3, batch_size=16, verbose=0,
               distributed=MPI.COMM_SELF)
    hb = b.fit(X, y, "cross_entropy", optimizer(), epochs=3, batch_size=16, verbose=0)
    why = []
    if not (np.array_equal(a._params, b._params) and np.array_equal(a._state, b._state)):
        why.append("COMM_SELF fit differs from plain fit")
    if ha["loss"] != hb["loss"]:
        why.append(f"losses differ: {ha['loss']} vs {hb['loss']}")
    return why


def standardize_global(dtype):
    """fit(standardize=True) on uneven shards adapts on the global rows."""
    X, y = data()
    X = X * 3 + 1
    X[:, 5] = 2.0                                         # a constant feature
    def build():
        return fastnn.Sequential([fastnn.Standardize(8), fastnn.Dense(8, 3)],
                                 backend=BACKEND, seed=4, dtype=dtype)
    model = build()
    rows = shard_bounds(len(X), [60, 37])
    model.fit(X[rows], y[rows], "cross_entropy", fastnn.SGD(0.1), epochs=3, batch_size=10,
              verbose=0, standardize=True, distributed="mpi")
    why = [] if identical_across_ranks(model) else ["parameters differ across ranks"]
    if RANK == 0:
        ref = build()
        ref.fuse = False
        ref.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=3, batch_size=10, verbose=0,
                standardize=True)
        try:
            np.testing.assert_allclose(model._state, ref._state, **tol(dtype))
            np.testing.assert_allclose(model._params, ref._params, **tol(dtype))
        except AssertionError as exc:
            why.append(str(exc).strip()[:400])
    return why


def momentum():
    return fastnn.SGD(0.05, momentum=0.9)


def adam():
    return fastnn.Adam(3e-3)


CASES = {
    "dense_sgd_momentum_f64": lambda: case(dense, "float64", momentum),
    "dense_sgd_momentum_f32": lambda: case(dense, "float32", momentum, compare_fused=True),
    "dense_adam_f64": lambda: case(dense, "float64", adam),
    "dense_adam_f32": lambda: case(dense, "float32", adam, compare_fused=True),
    "dense_adam_layer_path_f64": lambda: case(dense, "float64", adam, sizes=[40, 57],
                                              fuse=False),
    "dense_adam_layer_path_f32": lambda: case(dense, "float32", adam, compare_fused=True,
                                              fuse=False),
    "uneven_shards_partial_batch_clip_f64": lambda: case(
        dense, "float64", momentum, sizes=[30, 67], fit_kwargs={"clip_norm": 0.5}),
    "one_rank_empty_in_many_batches_f64": lambda: case(
        dense, "float64", adam, sizes=[5, 92], fit_kwargs={"batch_size": 7}),
    "sample_weights_f64": lambda: case(dense, "float64", adam, sizes=[50, 47],
                                       weights=True),
    "sample_weights_shard_f32": lambda: case(dense, "float32", momentum, weights=True),
    "validation_early_stopping_f64": lambda: case(
        dense, "float64", adam, sizes=[40, 57], validation=True,
        fit_kwargs={"epochs": 30, "callbacks": [EarlyStopping(patience=2)]}),
    "mse_uneven_f64": lambda: mse_case(),
    "batchnorm_residual_f64": lambda: case(bn_residual, "float64", adam, sizes=[40, 57]),
    "batchnorm_residual_f32": lambda: case(bn_residual, "float32", momentum,
                                           compare_fused=True),
    "batchnorm_one_rank_empty_in_many_batches_f64": lambda: case(
        bn_residual, "float64", momentum, sizes=[5, 92], weights=True,
        fit_kwargs={"batch_size": 7}),
    "batchnorm_residual_world_size_1_f32": lambda: world_size_one(bn_residual, "float32",
                                                                  adam),
    "dropout_f64": lambda: case(with_dropout, "float64", adam, sizes=[30, 67]),
    "dropout_f32": lambda: case(with_dropout, "float32", momentum, compare_fused=True),
    "dropout_layer_path_f64": lambda: case(with_dropout, "float64", adam, sizes=[30, 67],
                                           fuse=False),
    "dropout_world_size_1_f32": lambda: world_size_one(with_dropout, "float32", adam),
    "standardize_global_adapt_f64": lambda: standardize_global("float64"),
}


def mse_case():
    """A regression (loss mse, no accuracy) on uneven shards."""
    X, _ = data()
    Y = np.stack([X[:, 0] * X[:, 1], np.sin(X[:, 2]), X[:, 3]], axis=1)
    def build():
        return fastnn.Sequential([fastnn.Dense(8, 16, "tanh"), fastnn.Dense(16, 3)],
                                 backend=BACKEND, seed=1, dtype="float64")
    model = build()
    rows = shard_bounds(len(X), [48, 49])
    hist = model.fit(X[rows], Y[rows], "mse", momentum(), epochs=3, batch_size=20, verbose=0,
                     distributed="mpi")
    why = [] if identical_across_ranks(model) else ["parameters differ across ranks"]
    if RANK == 0:
        ref = build()
        ref.fuse = False
        ref_hist = ref.fit(X, Y, "mse", momentum(), epochs=3, batch_size=20, verbose=0)
        try:
            np.testing.assert_allclose(model._params, ref._params, **tol("float64"))
            np.testing.assert_allclose(hist["loss"], ref_hist["loss"], **tol("float64"))
            assert "accuracy" not in hist.history
        except AssertionError as exc:
            why.append(str(exc).strip()[:400])
    return why


def api_checks():
    """Argument errors, the rank helpers and the per-rank thread default."""
    from fastnn import distributed as dist
    X, y = data()
    why = []
    for bad, kind in (("nccl", ValueError), (3, TypeError)):
        try:
            dense("float64").fit(X, y, "cross_entropy", epochs=1, verbose=0, distributed=bad)
            why.append(f"distributed={bad!r} accepted")
        except kind:
            pass
    for kwargs in ({"shard": "yes"}, {"track_gradients": True}):
        try:
            dense("float64").fit(X, y, "cross_entropy", epochs=1, verbose=0,
                                 distributed="mpi", **kwargs)
            why.append(f"{kwargs} accepted")
        except (TypeError, ValueError):
            pass
    if (dist.rank(), dist.world_size(), dist.is_main()) != (RANK, SIZE, RANK == 0):
        why.append("rank/world_size/is_main wrong")
    expected = max(1, (os.cpu_count() or 1) // 2)      # both ranks run on this node
    if dist.default_threads(comm) != expected or fastnn.get_num_threads() != expected:
        why.append(f"threads {fastnn.get_num_threads()}, expected {expected} per rank")
    return why


CASES["api_and_threads"] = api_checks


def run_equality(names) -> int:
    failed = 0
    for name in names:
        try:
            why = CASES[name]()
        except Exception:                                  # report, keep the ranks in step
            why = ["raised: " + traceback.format_exc().strip().splitlines()[-1]]
        why = comm.allreduce(why)                          # lists concatenate across ranks
        if RANK == 0:
            say(f"CASE {name} " + ("ok" if not why else "FAIL " + "; ".join(why)))
        failed += bool(why)
    return 1 if failed else 0


# -- the failure modes -----------------------------------------------------------------------
def refused(X, y, **kwargs):
    """Fit on 2 ranks where rank 1's inputs are odd; print what each rank raised."""
    model = dense("float64")
    try:
        model.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=2, batch_size=16, verbose=0,
                  distributed="mpi", **kwargs)
    except ValueError as exc:
        say(f"RANK {RANK} REFUSED {' | '.join(str(exc).splitlines())}")
        say(f"RANK {RANK} steps {int(model._steps[0])}")
        return 0
    say(f"RANK {RANK} TRAINED")
    return 1


class RaiseOnRank1(Callback):
    def on_epoch_begin(self, epoch, logs):
        if epoch == 1 and RANK == 1:
            raise RuntimeError("rank 1 fails in epoch 2 on purpose")


def failure(mode: str) -> int:
    X, y = data()
    if mode == "refuse-width":
        return refused(X if RANK == 0 else X[:, :5], y)
    if mode == "refuse-dtype":
        return refused(X if RANK == 0 else X.astype(np.float32), y)
    if mode == "refuse-labels":
        return refused(X, y if RANK == 0 else y + 5)
    if mode == "refuse-nan":
        X = X.copy()
        if RANK == 1:
            X[3, 2] = np.nan
        return refused(X, y)
    if mode == "refuse-batch-size":
        model = dense("float64")
        try:
            model.fit(X, y, "cross_entropy", epochs=1, batch_size=16 + RANK, verbose=0,
                      distributed="mpi")
        except ValueError as exc:
            say(f"RANK {RANK} REFUSED {' | '.join(str(exc).splitlines())}")
            return 0
        return 1
    if mode == "raise-mid-epoch":
        model = dense("float64")
        model.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=50, batch_size=4, verbose=0,
                  distributed="mpi", callbacks=[RaiseOnRank1()])
        say(f"RANK {RANK} FINISHED (should not happen)")
        return 0
    raise SystemExit(f"unknown mode {mode}")


def main(argv) -> int:
    if SIZE != 2:
        raise SystemExit(f"run on 2 ranks, not {SIZE}")
    what = argv[1] if len(argv) > 1 else "equality"
    if what == "equality":
        return run_equality(argv[2:] or list(CASES))
    return failure(what)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
