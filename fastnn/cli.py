"""The ``fastnn`` command: ``fastnn info``, ``fastnn train`` (on digits, or on a CSV file),
``fastnn predict``, ``fastnn evaluate``, ``fastnn export``, ``fastnn bench`` and
``fastnn vanishing``."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from . import __version__, backends, benchmark, cli_tabular, schedules, vanishing
from .callbacks import LearningRateScheduler
from .layers import ACTIVATIONS, INITS, hidden_stack
from .optimizers import OPTIMIZERS


def thread_report() -> str:
    """The thread pools fastnn's compute may use (BLAS, and Numba where installed)."""
    from threadpoolctl import threadpool_info

    parts = [f"{os.cpu_count()} CPUs"]
    parts += [f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info()]
    try:
        import numba
        from numba.np.ufunc import parallel
    except ImportError:
        return ", ".join(parts)
    # numba.get_num_threads() would start Numba's threads, fixing its threading layer: a
    # report must not choose it
    threads = numba.get_num_threads() if parallel._is_initialized \
        else numba.config.NUMBA_NUM_THREADS
    parts.append(f"numba {threads} threads")
    return ", ".join(parts)


def numba_cache_report() -> str:
    """Whether numba_cpu's compiled kernels are in Numba's on-disk cache (warm start)."""
    from .kernels.numba_cpu import cache_status

    status = cache_status()
    if not status.compiled:
        state = "cold: its first fit compiles the kernels (15-30 s) and caches them"
    else:
        state = (f"fit {'warm' if status.trainer_warm else 'cold'}; "
                 f"{status.compiled}/{status.total} kernels cached")
    return (f"{state} ({status.signatures} signatures in "
            f"{status.directory or 'an unknown directory'})")


def cython_build_report() -> str:
    """Which build of the cython extension runs here, and its float32 matmuls."""
    from .kernels import cython

    return f"{cython.BUILD} (float32 matmuls: {benchmark.fastnn_matmul()})"


def cmd_info(args) -> int:
    print(f"fastnn {__version__} (Python {sys.version.split()[0]})")
    print(f"threads: {thread_report()}")
    print("backends (auto picks the first usable):")
    report = backends.available_backends()
    for name, info in report.items():
        print(f"  {name:<11} {info.reason}")
    if report["cython"].usable:
        print(f"cython build: {cython_build_report()}")
    if report["numba_cpu"].usable:
        print(f"numba_cpu JIT cache: {numba_cache_report()}")
    try:
        chosen, _ = backends.resolve("auto")
        print(f"auto -> {chosen}")
    except (RuntimeError, ValueError) as exc:
        print(f"auto -> error: {exc}")
        return 1
    return 0


def cmd_train(args) -> int:
    import fastnn

    from .datasets import load_digits_split

    optimizer = make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    callbacks = [] if args.lr_schedule == "constant" else [
        LearningRateScheduler(lr_schedule(args.lr_schedule, args.epochs))]
    if args.data is not None:
        if args.distributed:
            raise ValueError("--distributed trains on the digits data in this version, not "
                             "on a CSV file")
        return cli_tabular.cmd_train_csv(args, optimizer, callbacks)
    for option in ("target", "ignore", "numeric", "categorical"):
        if getattr(args, option):
            raise ValueError(f"--{option} applies to training on a CSV file: fastnn train "
                             f"DATA.csv --target COLUMN ...")
    X_train, X_test, y_train, y_test = load_digits_split(seed=args.seed)
    widths = [X_train.shape[1], *args.hidden]
    layers = hidden_stack(widths, args.activation, args.init, args.dropout)
    layers.append(fastnn.Dense(widths[-1], 10))
    model = fastnn.Sequential(layers, backend=args.backend, seed=args.seed, dtype=args.dtype)
    print(f"digits: {len(X_train)} train / {len(X_test)} test samples, 64 features, 10 classes")
    dropout = f", dropout {args.dropout}" if args.dropout else ""
    print(f"model: {' -> '.join(map(str, widths + [10]))} ({args.activation}{dropout}), "
          f"backend {model.backend}, {optimizer!r}")
    held_out = args.validation_split is not None or args.early_stopping is not None
    parallel = {}
    if args.distributed:                # every rank loads digits and takes its share
        from .distributed import world_size
        parallel = {"distributed": "mpi", "shard": True}
        print(f"data-parallel on {world_size()} ranks over MPI (global batch "
              f"{args.batch_size}; rank 0 prints)")
    start = time.perf_counter()
    history = model.fit(X_train, y_train, loss="cross_entropy", optimizer=optimizer,
                        epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=None if held_out else (X_test, y_test),
                        validation_split=args.validation_split or 0.0,
                        early_stopping=False if args.early_stopping is None
                        else args.early_stopping, callbacks=callbacks,
                        clip_norm=args.clip_norm, class_weight=args.class_weight,
                        verbose=args.verbose, **parallel)
    elapsed = time.perf_counter() - start
    result = model.evaluate(X_test, y_test, loss="cross_entropy")
    print(f"train loss {history['loss'][-1]:.4f}, train accuracy {history['accuracy'][-1]:.4f}")
    print(f"test accuracy {result['accuracy']:.4f} (test loss {result['loss']:.4f})")
    first, *rest = history["epoch_time"]
    steady = f", then {1e3 * statistics.median(rest):.1f} ms per epoch" if rest else ""
    print(f"{elapsed:.2f} s for {len(history['loss'])} epochs (with any JIT compilation before the "
          f"first): first epoch {1e3 * first:.1f} ms{steady}")
    cli_tabular.report_early_stop(history)
    cli_tabular.plot_and_save(history, model, args)
    return 0


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    """The optimizer --optimizer names; --momentum applies to sgd and rmsprop, and
    --weight-decay is L2 in the gradient except for adamw (decoupled; default 0.01 there)."""
    cls = OPTIMIZERS[name]
    if weight_decay is None:
        weight_decay = 0.01 if name == "adamw" else 0.0
    if name in ("sgd", "rmsprop"):
        return cls(lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        raise ValueError(f"--momentum applies to sgd and rmsprop, not {name}")
    return cls(lr, weight_decay=weight_decay)


#: --lr-schedule choices -> the schedule for a run of n epochs
LR_SCHEDULES = {
    "cosine": schedules.cosine,
    "step": lambda n: schedules.step(max(1, n // 3), 0.1),
    "exponential": lambda n: schedules.exponential(0.95),
}


def lr_schedule(name: str, epochs: int):
    """The schedule --lr-schedule names, for a run of ``epochs`` epochs."""
    return LR_SCHEDULES[name](epochs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="version, backends and threads").set_defaults(run=cmd_info)

    train = sub.add_parser("train", help="train an MLP on a CSV file, or on scikit-learn's "
                                         "digits dataset")
    cli_tabular.add_train_arguments(train)
    train.add_argument("--hidden", type=int, nargs="+", default=[128],
                       help="hidden layer widths (default: 128)")
    train.add_argument("--activation", choices=[a for a in ACTIVATIONS if a != "softmax"],
                       default="relu")
    train.add_argument("--init", choices=list(INITS), default=None,
                       help="weight init (default: He for relu, Xavier otherwise)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    train.add_argument("--momentum", type=float, default=0.0,
                       help="momentum (sgd, rmsprop)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="weight decay: L2 in the gradient (sgd, adam, rmsprop), decoupled "
                            "for adamw (default 0, adamw 0.01)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--backend", choices=["auto", *backends.BACKENDS], default="auto")
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--validation-split", type=float, default=None, metavar="FRACTION",
                       help="hold out this fraction of the training rows for validation "
                            "(default: digits validate on the test split, a CSV holds out "
                            "0.2)")
    train.add_argument("--early-stopping", type=int, nargs="?", const=10, default=None,
                       metavar="PATIENCE", help="stop when val_loss has not improved for "
                       "PATIENCE epochs (default 10) and keep the best weights; validates on "
                       "a 0.1 split of the training rows unless --validation-split is given")
    train.add_argument("--lr-schedule", choices=["constant", *LR_SCHEDULES], default="constant",
                       help="cosine: to 0 over the epochs; step: ×0.1 every third of them; "
                            "exponential: ×0.95 per epoch")
    train.add_argument("--clip-norm", type=float, default=None, metavar="C",
                       help="rescale each step's gradient to a global L2 norm of at most C")
    train.add_argument("--dropout", type=float, default=0.0, metavar="P",
                       help="Dropout(P) after each hidden layer (default 0: none)")
    train.add_argument("--class-weight", choices=["balanced"], default=None,
                       help="weight each class by n / (classes · its count)")
    train.add_argument("--plot", metavar="FILE", help="plot the history to FILE (a .png; "
                                                      "needs matplotlib)")
    train.add_argument("--save", "--out", dest="save", metavar="FILE",
                       help="save the trained model here (a .fnn file)")
    train.add_argument("--verbose", type=int, default=1, help="0 hides the progress bar")
    train.add_argument("--distributed", action="store_true",
                       help="train data-parallel over MPI: mpiexec -n 2 fastnn train "
                            "--distributed (needs the mpi extra; rank 0 prints)")
    train.set_defaults(run=cmd_train)

    cli_tabular.add_commands(sub)

    bench = sub.add_parser("bench", help="time a training step on every usable backend and "
                                         "PyTorch; print the table")
    benchmark.add_arguments(bench)
    bench.set_defaults(run=benchmark.cmd_bench)

    lab = sub.add_parser("vanishing", help="the vanishing-gradient lab: per-layer gradient "
                                           "norms and accuracy of deep networks, six variants")
    vanishing.add_arguments(lab)
    lab.set_defaults(run=vanishing.cmd_vanishing)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "distributed", False):
        return run_distributed(args)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError, ImportError, OSError, ArithmeticError) as exc:
        print(f"fastnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run_distributed(args) -> int:
    """Run a ``--distributed`` command on every MPI rank: rank 0 prints, the others are
    silent; an error on any rank is printed and ends the whole job (``comm.Abort``), so no
    rank is left waiting in a collective."""
    import contextlib
    import io

    from .distributed import communicator

    comm = communicator("mpi")
    quiet = contextlib.nullcontext() if comm.Get_rank() == 0 \
        else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        try:
            return args.run(args)
        except (ValueError, TypeError, RuntimeError, ImportError, OSError,
                ArithmeticError) as exc:
            print(f"fastnn {args.command}: error (rank {comm.Get_rank()}): {exc}",
                  file=sys.stderr, flush=True)
            if comm.Get_size() > 1:
                comm.Abort(2)
            return 2
