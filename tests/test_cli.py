"""The fastnn command: info and train, run as a user would (a subprocess)."""
import subprocess
import sys

import pytest


def fastnn(*args, timeout=300):
    result = subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True,
                            text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def test_info_lists_every_backend():
    code, out = fastnn("info")
    assert code == 0, out
    for name in ("numba_cuda", "numba_cpu", "cython", "reference"):
        assert name in out
    assert "threads" in out and "auto ->" in out


def test_info_says_which_build_of_the_cython_kernels_runs():
    from fastnn.backends import available_backends
    if not available_backends()["cython"].usable:
        pytest.skip("the cython extension is not built")
    from fastnn.kernels import cython
    code, out = fastnn("info")
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("cython build: ")]
    assert line.startswith(f"cython build: {cython.BUILD} (float32 matmuls: ")


def test_train_on_digits_prints_accuracy_and_time(tmp_path):
    saved = tmp_path / "digits.fnn"
    code, out = fastnn("train", "--epochs", "3", "--hidden", "32", "--backend", "reference",
                       "--verbose", "0", "--save", str(saved))
    assert code == 0, out
    assert "test accuracy 0." in out and "ms per epoch" in out
    assert saved.exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0", "--backend", "reference"], "epochs must be at least 1"),
    (["train", "--lr", "-1", "--backend", "reference"], "lr must be a finite positive"),
    (["train", "--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["train", "--dropout", "1.5", "--backend", "reference"], "p must be in [0, 1)"),
    (["train", "--weight-decay", "-0.1", "--backend", "reference"], "weight_decay must be"),
    (["train", "--clip-norm", "nan", "--backend", "reference"], "clip_norm must be"),
    (["train", "--class-weight", "even"], "invalid choice: 'even'"),
])
def test_train_reports_bad_options_clearly(args, message):
    code, out = fastnn(*args)
    assert code == 2 and message in out


def test_train_with_early_stopping_a_schedule_and_a_plot(tmp_path):
    plot = tmp_path / "history.png"
    code, out = fastnn("train", "--epochs", "300", "--hidden", "32", "--backend", "reference",
                       "--early-stopping", "3", "--lr-schedule", "cosine", "--lr", "0.01",
                       "--plot", str(plot), "--verbose", "0")
    assert code == 0, out
    assert "stopped early after epoch" in out and "test accuracy 0." in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_train_with_dropout_adamw_clipping_and_class_weights():
    code, out = fastnn("train", "--epochs", "3", "--hidden", "32", "32", "--backend", "cython",
                       "--dropout", "0.1", "--optimizer", "adamw", "--weight-decay", "0.02",
                       "--clip-norm", "5", "--class-weight", "balanced", "--verbose", "0")
    assert code == 0, out
    assert "dropout 0.1" in out and "AdamW(" in out and "test accuracy 0." in out
