"""The training plan (fastnn/plan.py) and what rests on it: its op table, kernels that import no
model code, hyper-parameters as data (a new learning rate recompiles nothing), inputs that never
trigger a new compilation, models that pickle, and a process left as fastnn found it."""
import ast
import copy
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import SGD, Adam, BatchNorm, Dense, Residual, Sequential, losses, plan
from fastnn.backends import available_backends
from fastnn.kernels import (ADD, BATCHNORM, DENSE, DSKIP, DX, GRAD_ADD, GRAD_SKIP, GRAD_WRITE,
                            IN, KIND, OUT, POFF, ROWS, SKIP, SOFF, WHOLE_BATCH)

ROOT = Path(__file__).resolve().parents[1]
USABLE = [name for name, info in available_backends().items() if info.usable]


def nested_model(backend="reference", dtype="float64"):
    return Sequential([Dense(4, 6, "relu"), BatchNorm(6),
                       Residual([Dense(6, 6, "tanh"), Residual(Dense(6, 6, "relu"))]),
                       Dense(6, 3)], backend=backend, seed=1, dtype=dtype)


# -- the op table ----------------------------------------------------------------------------
def test_op_table_of_a_nested_model():
    model = nested_model()
    p = plan.build(model, losses.get("cross_entropy"), batch=5)
    ops = p.ops
    assert list(ops[:, KIND]) == [DENSE, BATCHNORM, DENSE, DENSE, ADD, ADD, DENSE]
    assert ops[0, IN] == 0 and all(ops[i, IN] == ops[i - 1, OUT] for i in (1, 2, 3, 4))
    # inner residual: y = x + dense(x) with x the outer block's first Dense output
    assert ops[4, SKIP] == ops[2, OUT] and ops[5, SKIP] == ops[1, OUT]
    assert ops[5, IN] == ops[4, OUT] and ops[6, IN] == ops[5, OUT]
    # offsets are where the layers' views sit in the flat buffers
    layer_params = [model.layers[0].weight, model.layers[1].gamma,
                    model.layers[2].block[0].weight, model.layers[2].block[1].block[0].weight,
                    None, None, model.layers[3].weight]
    for row, view in zip(ops, layer_params):
        if view is not None:
            assert row[POFF] == plan._offset(view, model.parameters())
    assert ops[1, SOFF] == 0
    # the data needs no gradient; a block read by a skip and by an op gets both added
    assert ops[0, DX] == GRAD_SKIP
    assert ops[6, DX] == GRAD_WRITE and ops[5, DX] == GRAD_WRITE and ops[5, DSKIP] == GRAD_WRITE
    assert ops[4, DSKIP] == GRAD_WRITE and ops[3, DX] == GRAD_ADD and ops[2, DX] == GRAD_ADD
    # BatchNorm passes are whole-batch stages between row stages
    assert [kind for kind, _, _ in p.stages] == [ROWS, WHOLE_BATCH, ROWS, WHOLE_BATCH, ROWS]
    assert p.act_size == 5 * (4 + 6 + 6 + 6 + 6 + 6 + 6 + 3)


def test_a_layer_without_op_form_trains_layer_by_layer():
    class Scale(fastnn.layers.Layer):
        in_features = out_features = 3

        def _forward(self, k, X, ws, training, logits=False):
            ws["out"] = 2 * X
            return ws["out"]

        def _backward(self, k, dOut, ws, need_dX):
            return 2 * dOut

    model = Sequential([Dense(2, 3), Scale(), Dense(3, 1)], backend="reference")
    assert plan.build(model, losses.get("mse"), 4) is None


# -- kernels are leaves ------------------------------------------------------------------------
def kernel_imports(path: Path) -> list[str]:
    """Absolute names of the modules a kernel source imports (relative imports resolved as
    installed: kernels/ is fastnn.kernels)."""
    package = ["fastnn", "kernels", *path.relative_to(ROOT / "kernels").parent.parts]
    text = path.read_text()
    if path.suffix == ".py":
        names = []
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                names.append(".".join(base + ([node.module] if node.module else [])))
        return names
    names = []
    for level, module in re.findall(r"^\s*(?:from|c?import)\s+(\.*)([\w.]*)", text, re.M):
        base = package[:len(package) - len(level) + 1] if level else []
        names.append(".".join(base + ([module] if module else [])))
    return names


def model_level(name: str) -> bool:
    return name.split(".")[0] == "fastnn" and not name.startswith("fastnn.kernels")


def test_the_import_checker_sees_violations(tmp_path, monkeypatch):
    fake = ROOT / "kernels" / "numba_cpu" / "fake.py"
    monkeypatch.setattr(Path, "read_text", lambda self: "from ...layers import Dense\n"
                        "import fastnn.optimizers\nfrom .. import IDENTITY\n")
    assert [model_level(n) for n in kernel_imports(fake)] == [True, True, False]


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in
                                        (ROOT / "kernels").rglob("*")
                                        if p.suffix in (".py", ".pyx")))
def test_kernels_import_no_model_code(path):
    bad = [name for name in kernel_imports(ROOT / path) if model_level(name)]
    assert not bad, f"{path} imports {bad}: kernels take the plan's arrays, never model code"


# -- hyper-parameters are plan data ------------------------------------------------------------
@pytest.mark.parametrize("backend", [b for b in USABLE if b in ("numba_cpu", "cython")])
def test_a_new_learning_rate_rebuilds_and_recompiles_nothing(backend):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 4)), rng.integers(0, 3, 64)
    model = nested_model(backend, "float32")
    opt = SGD(0.1, momentum=0.9)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16, verbose=0)
    (first,) = model._plans.values()
    signatures = _compiled_signatures(backend)
    opt.lr = 0.01
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16, verbose=0)
    (second,) = model._plans.values()
    assert second is first and first.hyper[0] == 0.01
    assert _compiled_signatures(backend) == signatures


def _compiled_signatures(backend):
    if backend != "numba_cpu":
        return None
    from fastnn.kernels.numba_cpu import trainer
    return len(trainer.epoch_kernel.signatures), len(trainer._row_actions.signatures)


@pytest.mark.skipif("numba_cpu" not in USABLE, reason="numba_cpu is not usable here")
def test_no_input_layout_or_label_width_triggers_a_compilation():
    from fastnn.kernels.numba_cpu import interface, trainer

    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = Sequential([Dense(4, 5, "relu"), Dense(5, 3)], backend="numba_cpu")
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    model.predict(X)
    kernels = (trainer.epoch_kernel, trainer._row_actions, interface.dense_forward_kernel)
    before = [len(k.signatures) for k in kernels]
    read_only = X.copy()
    read_only.setflags(write=False)
    wide = np.zeros((40, 8), np.float32)
    wide[:, ::2] = X
    variants = [read_only, np.asfortranarray(X), wide[:, ::2], X.astype(np.float64)]
    for Xv in variants:
        for labels in (y.astype(np.int8), y.astype(np.uint16), y.astype(np.int32)):
            model.fit(Xv, labels, loss="cross_entropy", epochs=1, verbose=0)
        model.predict(Xv)
    assert [len(k.signatures) for k in kernels] == before


# -- pickling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", USABLE)
@pytest.mark.parametrize("clone", ["pickle", "deepcopy"])
def test_models_pickle_and_go_on_training(backend, clone):
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    model = nested_model(backend)
    model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=1, verbose=0)
    other = pickle.loads(pickle.dumps(model)) if clone == "pickle" else copy.deepcopy(model)
    assert (other.backend, other.dtype, other.seed) == (model.backend, model.dtype, model.seed)
    assert repr(other) == repr(model)
    np.testing.assert_array_equal(other.parameters(), model.parameters())
    np.testing.assert_array_equal(other._state, model._state)
    np.testing.assert_array_equal(other.predict(X), model.predict(X))
    kept = other.parameters()[0]                           # independent buffers
    other.parameters()[0] = kept + 1
    assert other.parameters()[0] != model.parameters()[0]
    other.parameters()[0] = kept
    for m in (model, other):                               # the same next epoch
        m.fit(X, y, loss="cross_entropy", optimizer=SGD(0.1), epochs=1, verbose=0)
    np.testing.assert_array_equal(other.parameters(), model.parameters())


def test_unpickling_names_the_backend_it_cannot_use():
    unusable = [n for n, i in available_backends().items() if not i.usable]
    if not unusable:
        pytest.skip("every backend is usable here")
    function, args = nested_model().__reduce__()
    with pytest.raises(RuntimeError, match=f"backend '{unusable[0]}' is not"):
        function(args[0], unusable[0], *args[2:])


# -- no side effects ---------------------------------------------------------------------------
SNAPSHOT = """
import json, os, sys
import numpy, scipy.linalg  # both BLAS libraries loaded before fastnn
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(int(sys.argv[1]))      # the user's own choice, which fastnn must keep
def snapshot():
    import numba
    return {"threads": sorted((p["filepath"], p["num_threads"]) for p in threadpool_info()),
            "environ": dict(os.environ), "layer": numba.config.THREADING_LAYER}
before = snapshot()
import fastnn, fastnn.cli
for name, info in fastnn.available_backends().items():
    if info.usable:
        fastnn.Sequential([fastnn.Dense(3, 4, "relu"), fastnn.BatchNorm(4), fastnn.Dense(4, 2)],
                          backend=name)
fastnn.cli.main(["info"])
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.parametrize("limit", [1, 2])
def test_import_models_backends_and_info_leave_the_process_as_they_found_it(limit):
    """BLAS and OpenMP thread counts (as threadpoolctl reports them), the environment and the
    Numba threading layer, before and after importing fastnn, building a model on every usable
    backend, available_backends() and `fastnn info`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", SNAPSHOT, str(limit)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    for key in ("environ", "layer"):
        assert after[key] == before[key], key
    # every library loaded before keeps its limit (those fastnn loads, such as the cython
    # extension's OpenMP runtime, start at their own defaults)
    kept = dict(map(tuple, before["threads"]))
    assert {path: n for path, n in after["threads"] if path in kept} == kept
    assert len(kept) >= 2


@pytest.mark.parametrize("backend", [b for b in USABLE if b in ("numba_cpu", "cython")])
def test_fit_restores_thread_limits_on_return_and_on_errors(backend, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    def limits():
        return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())

    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((256, 64)), rng.standard_normal((256, 2))
    with threadpool_limits(2):
        before = limits()
        for width in (8, 512):          # one thread, then row chunks or threaded BLAS
            model = Sequential([Dense(64, width, "relu"), Dense(width, 2)], backend=backend)
            model.fit(X, y, loss="mse", epochs=1, batch_size=128, verbose=0)
            model.predict(X)
            assert limits() == before


def test_kernel_blas_limits_are_restored_on_errors():
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastnn.kernels._threads import kernel_blas_threads

    with threadpool_limits(2):
        before = threadpool_info()
        with pytest.raises(FloatingPointError), kernel_blas_threads(1):
            assert threadpool_info() != before
            raise FloatingPointError
        assert threadpool_info() == before


@pytest.mark.skipif("numba_cpu" not in USABLE, reason="numba_cpu is not usable here")
def test_a_failing_fused_epoch_restores_the_limits(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastnn.kernels.numba_cpu import trainer

    def fail(*args):
        raise FloatingPointError("injected")

    monkeypatch.setattr(trainer, "epoch_kernel", fail)
    model = Sequential([Dense(3, 2)], backend="numba_cpu")
    with threadpool_limits(2):
        before = threadpool_info()
        with pytest.raises(FloatingPointError, match="injected"):
            model.fit(np.ones((4, 3)), np.ones((4, 2)), loss="mse", epochs=1, verbose=0)
        assert threadpool_info() == before


# -- the first run -------------------------------------------------------------------------------
def test_imports_from_the_repository_root():
    """Python started in the clone finds the source fastnn/ first; fastnn.kernels must resolve
    all the same (here through the editable install; tests/test_wheel.py checks a plain one)."""
    done = subprocess.run([sys.executable, "-c", "import fastnn.kernels.reference, fastnn; "
                           "print(fastnn.Sequential([fastnn.Dense(2, 1)]).backend)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif("numba_cpu" not in USABLE, reason="numba_cpu is not usable here")
def test_a_slow_compile_is_announced_once_before_the_progress_bar(monkeypatch, capsys):
    import time

    from fastnn import model as model_module
    from fastnn import training
    from fastnn.kernels.numba_cpu import trainer

    calls = []
    monkeypatch.setattr(model_module, "COMPILE_NOTICE_S", 0.05)
    monkeypatch.setattr(trainer.Trainer, "prepare",
                        lambda self, X, y: (calls.append("prepare"), time.sleep(0.3)))
    real_tqdm = training.tqdm                             # the epoch loop's progress bar
    monkeypatch.setattr(training, "tqdm",
                        lambda *a, **k: (calls.append("bar"), real_tqdm(*a, **k))[1])
    model = Sequential([Dense(3, 2)], backend="numba_cpu")
    model.fit(np.ones((8, 3)), np.ones((8, 2)), loss="mse", epochs=3, verbose=1)
    err = capsys.readouterr().err
    assert err.count("numba_cpu: compiling kernels for this model") == 1
    assert calls == ["prepare", "bar"]                    # compiled before the bar's clock
    model.fit(np.ones((8, 3)), np.ones((8, 2)), loss="mse", epochs=1, verbose=0)
    assert "compiling" not in capsys.readouterr().err   # verbose=0: silent
