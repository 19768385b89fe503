"""The table commands: ``fastnn train DATA.csv --target COLUMN``, ``fastnn predict``,
``fastnn evaluate`` and ``fastnn export``. Nothing is written when a command fails."""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

from . import io, tabular
from .csvfile import read_csv, write_csv


def add_train_arguments(train) -> None:
    """The ``fastnn train`` options that apply to a CSV file."""
    train.add_argument("data", nargs="?", metavar="DATA.csv",
                       help="train on this CSV file (header row, one sample per row); "
                            "without it, on scikit-learn's digits")
    train.add_argument("--target", metavar="COLUMN", help="the column to predict (with DATA)")
    train.add_argument("--task", choices=["auto", "classification", "regression"],
                       default="auto", help="auto: classification for text or integer "
                       "targets with at most 20 distinct values, regression otherwise")
    train.add_argument("--ignore", nargs="+", default=[], metavar="COLUMN",
                       help="columns to leave out (identifiers, ...)")
    train.add_argument("--numeric", nargs="+", default=[], metavar="COLUMN",
                       help="columns that must be numbers (a cell that is not is an error)")
    train.add_argument("--categorical", nargs="+", default=[], metavar="COLUMN",
                       help="columns to one-hot encode even though they hold numbers")


def add_commands(sub) -> None:
    """``fastnn predict``, ``fastnn evaluate`` and ``fastnn export``."""
    predict = sub.add_parser("predict", help="predict the target of each row of a CSV file "
                                             "with a model from fastnn train DATA.csv")
    predict.add_argument("model", metavar="MODEL.fnn")
    predict.add_argument("data", metavar="DATA.csv")
    predict.add_argument("--out", metavar="FILE", help="write the predictions here (CSV; "
                                                       "default: standard output)")
    predict.add_argument("--proba", action="store_true",
                         help="also write each class's probability (classification)")
    predict.add_argument("--backend", default="auto")
    predict.set_defaults(run=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="score a model from fastnn train DATA.csv on "
                                               "a labelled CSV file")
    evaluate.add_argument("model", metavar="MODEL.fnn")
    evaluate.add_argument("data", metavar="DATA.csv")
    evaluate.add_argument("--target", required=True, metavar="COLUMN",
                          help="the column holding the true labels or values")
    evaluate.add_argument("--backend", default="auto")
    evaluate.set_defaults(run=cmd_evaluate)

    export = sub.add_parser("export", help="write a saved model as ONNX (needs the onnx "
                                           "extra)")
    export.add_argument("model", metavar="MODEL.fnn")
    export.add_argument("onnx", metavar="MODEL.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.set_defaults(run=cmd_export)


@contextlib.contextmanager
def _warnings_to_stderr(command: str):
    """Print the warnings raised inside (an unseen category, ...) as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"fastnn {command}: warning: {w.message}", file=sys.stderr)


def cmd_train_csv(args, optimizer, callbacks) -> int:
    """``fastnn train DATA.csv --target COLUMN``: train, report the held-out split, save."""
    if args.target is None:
        raise ValueError(f"--target COLUMN is required with {args.data}: name the column "
                         f"to predict")
    table = read_csv(args.data)
    print(f"{args.data}: {len(table)} rows, {len(table.columns)} columns")
    split = 0.2 if args.validation_split is None else args.validation_split
    chosen = repr(optimizer)                    # before a schedule changes its learning rate
    start = time.perf_counter()
    with _warnings_to_stderr("train"):
        model = tabular.train(
            table, args.target, task=args.task, hidden=args.hidden, activation=args.activation,
            init=args.init, validation_split=split, ignore=args.ignore, numeric=args.numeric,
            categorical=args.categorical, backend=args.backend, seed=args.seed,
            dtype=args.dtype, optimizer=optimizer, epochs=args.epochs,
            batch_size=args.batch_size, callbacks=callbacks, clip_norm=args.clip_norm,
            dropout=args.dropout, class_weight=args.class_weight,
            early_stopping=False if args.early_stopping is None else args.early_stopping,
            verbose=args.verbose)
    elapsed = time.perf_counter() - start
    for line in model.summary:
        print(line)
    network, history = model.network, model.history
    widths = [layer.out_features for layer in network.layers]
    print(f"model: {' -> '.join(map(str, [network.in_features, *widths[1:]]))} "
          f"({args.activation}), backend {network.backend}, {chosen}")
    train_scores = ", ".join(f"{k} {history[k][-1]:.4f}" for k in ("loss", "accuracy")
                             if k in history.history)
    scale = "" if model.task == "classification" else " (of the standardised target)"
    print(f"train {train_scores}{scale}; {elapsed:.2f} s for {len(history['loss'])} epochs")
    report_early_stop(history)
    if model.validation is not None:
        print(f"held-out {model.rows['held_out']} rows: {format_scores(model.validation)}")
    plot_and_save(history, model, args)
    return 0


def report_early_stop(history) -> None:
    """Say where training stopped early and which epoch's weights were kept, if it did."""
    if history.stopped_epoch is not None:
        print(f"stopped early after epoch {history.stopped_epoch + 1}; best epoch "
              f"{history.best_epoch + 1} (val_loss {history['val_loss'][history.best_epoch]:.4f})")


def plot_and_save(history, model, args) -> None:
    """``--plot FILE`` and ``--save FILE`` of ``fastnn train``, after training."""
    if args.plot:
        from .plots import plot_history
        plot_history(history, args.plot)
        print(f"history plotted to {args.plot}")
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")


def format_scores(scores: dict) -> str:
    """'loss 0.1234, accuracy 0.9500' or 'loss 12.3, R² 0.8765'."""
    names = {"loss": "loss", "accuracy": "accuracy", "r2": "R²"}
    return ", ".join(f"{names[k]} {v:.4f}" for k, v in scores.items())


def cmd_predict(args) -> int:
    model = tabular.load(args.model, backend=args.backend)
    table = read_csv(args.data)
    with _warnings_to_stderr("predict"):
        header, columns = model.prediction_columns(table, proba=args.proba)
    try:
        write_csv(args.out, header, columns, stream=sys.stdout)
    except BrokenPipeError:                 # `fastnn predict ... | head`: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.out:
        print(f"{len(table)} predictions written to {args.out}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    model = tabular.load(args.model, backend=args.backend)
    table = read_csv(args.data)
    with _warnings_to_stderr("evaluate"):
        scores = model.evaluate(table, target=args.target)
    print(f"{args.data}: {len(table)} rows, {model.task} of {args.target!r}")
    print(format_scores(scores))
    return 0


def cmd_export(args) -> int:
    from .onnx_export import export_model

    network, table_config = io.read(args.model, backend="reference")
    if table_config is None:
        export_model(network, args.onnx, opset=args.opset)
        what = f"input 'input' ({network.in_features} floats), output 'output'"
    else:
        model = tabular.TabularModel.from_config(network, table_config)
        model.to_onnx(args.onnx, opset=args.opset)
        outputs = "'label', 'probabilities'" if model.task == "classification" \
            else "'prediction'"
        what = f"{len(model.encoder.features)} inputs (one per column), outputs {outputs}"
    print(f"wrote {args.onnx} (opset {args.opset}): {what}")
    return 0
