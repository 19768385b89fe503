"""The Cython backend as the fallback where Numba is missing, and what is particular to it.

The kernel-by-kernel comparison with the reference is tests/test_kernels.py (it covers every
usable backend); here: fastnn without Numba picks cython and trains digits as well as the
reference, an install without the compiled extension still works and says why, the fused
whole-epoch trainer (on one thread and split across threads) computes what the layer-by-layer
path does, the AVX2 and AVX-512 builds agree with the baseline build (and the widest one the
CPU runs is the one in use), and bad arguments raise instead of reading or writing out of
bounds.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnn
from fastnn.backends import available_backends

pytestmark = pytest.mark.skipif(not available_backends()["cython"].usable,
                                reason=available_backends()["cython"].reason)

#: run before the script in a subprocess: makes every import of the named modules fail the way
#: a missing package does
BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _Block())
"""

DIGITS = """
import json, fastnn
from fastnn.datasets import load_digits_split
X_train, X_test, y_train, y_test = load_digits_split(seed=0)

def digits_accuracy(backend):
    model = fastnn.Sequential([fastnn.Dense(64, 128, "relu"), fastnn.Dense(128, 10)],
                              backend=backend, seed=0)
    model.fit(X_train, y_train, loss="cross_entropy", optimizer=fastnn.Adam(1e-3), epochs=30,
              batch_size=32, verbose=0)
    return model.backend, model.evaluate(X_test, y_test, loss="cross_entropy")["accuracy"]

auto, accuracy = digits_accuracy("auto")
print(json.dumps({
    "backends": {n: [i.usable, i.reason] for n, i in fastnn.available_backends().items()},
    "auto": auto, "accuracy": accuracy, "reference_accuracy": digits_accuracy("reference")[1],
}))
"""


def run_blocked(blocked: tuple[str, ...], script: str) -> dict:
    """Run ``script`` in a fresh interpreter where importing ``blocked`` modules fails; return
    the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    code = f"BLOCKED = {blocked!r}\n{BLOCKER}\n{textwrap.dedent(script)}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_numba_auto_picks_cython_and_trains_digits_like_the_reference():
    result = run_blocked(("numba", "numba_cuda"), DIGITS)
    numba_usable, numba_reason = result["backends"]["numba_cpu"]
    assert not numba_usable and "numba" in numba_reason.lower()
    assert result["backends"]["cython"] == [True, "usable"]
    assert result["auto"] == "cython"
    assert result["accuracy"] >= 0.97
    assert abs(result["accuracy"] - result["reference_accuracy"]) <= 0.01


def test_without_the_compiled_extension_fastnn_still_works_and_says_why():
    result = run_blocked(("numba", "numba_cuda", "fastnn.kernels.cython._kernels"), DIGITS)
    usable, reason = result["backends"]["cython"]
    assert not usable
    assert "fastnn.kernels.cython._kernels is missing: reinstall fastnn with a C compiler" \
        in reason
    assert result["auto"] == "reference" and result["accuracy"] >= 0.97


def data(loss, n=50, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    if loss == "cross_entropy":
        return X, rng.integers(0, n_out, n)
    if loss == "binary_cross_entropy":
        return X, rng.integers(0, 2, (n, n_out))
    return X, rng.standard_normal((n, n_out))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("optimizer", [lambda: fastnn.SGD(0.05),
                                       lambda: fastnn.SGD(0.05, momentum=0.9),
                                       lambda: fastnn.Adam(1e-2)],
                         ids=["sgd", "momentum", "adam"])
def test_fused_trainer_matches_the_layer_by_layer_path(dtype, loss, optimizer):
    X, y = data(loss)
    runs = []
    for fuse in (True, False):
        model = fastnn.Sequential([fastnn.Dense(5, 7, "tanh"), fastnn.Dense(7, 6, "relu"),
                                   fastnn.Dense(6, 3)], backend="cython", seed=1, dtype=dtype)
        model.fuse = fuse
        opt = optimizer()
        history = model.fit(X, y, loss=loss, optimizer=opt, epochs=3, batch_size=16, verbose=0)
        runs.append((model, history, opt))
    (fused, h_fused, opt_fused), (layered, h_layered, opt_layered) = runs
    assert fused._make_trainer(fastnn.losses.get(loss), opt_fused, 16) is not None
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(fused.parameters(), layered.parameters(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(fused.gradients(), layered.gradients(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(h_fused["loss"], h_layered["loss"], rtol=rtol)
    assert h_fused.history.get("accuracy") == h_layered.history.get("accuracy")
    assert getattr(opt_fused, "t", None) == getattr(opt_layered, "t", None)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_trainer_split_across_threads_matches_the_layer_by_layer_path(loss):
    # big enough that each minibatch is split into per-thread bands whose gradients are added
    X, y = data(loss, n=300, n_in=64, n_out=10)
    runs = []
    for fuse in (True, False):
        with threadpool_limits(3, user_api="openmp"):
            model = fastnn.Sequential([fastnn.Dense(64, 512, "tanh"),
                                       fastnn.Dense(512, 512, "sigmoid"), fastnn.Dense(512, 10)],
                                      backend="cython", dtype="float64")
            model.fuse = fuse
            opt = fastnn.Adam(1e-3)
            history = model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=64,
                                verbose=0)
            if fuse:
                assert model._make_trainer(fastnn.losses.get(loss), opt, 64).split == "bands"
        runs.append((model.parameters(), history))
    (p_fused, h_fused), (p_layered, h_layered) = runs
    np.testing.assert_allclose(p_fused, p_layered, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_fused["loss"], h_layered["loss"], rtol=1e-12)
    assert h_fused.history.get("accuracy") == h_layered.history.get("accuracy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_big_layers_train_as_one_band_on_blas_threads_like_the_layer_path(dtype):
    """1 M parameters and 128 × 1024 × 1024 multiply-adds a minibatch: the trainer's minibatch
    is one band, its big matmuls on BLAS's threads (not two bands adding their gradients)."""
    X, y = data("cross_entropy", n=320, n_in=1024, n_out=4)
    runs = []
    for fuse in (True, False):
        with threadpool_limits(2, user_api="openmp"):
            model = fastnn.Sequential([fastnn.Dense(1024, 1024, "relu"), fastnn.Dense(1024, 4)],
                                      backend="cython", dtype=dtype, seed=2)
            model.fuse = fuse
            opt = fastnn.SGD(0.01, momentum=0.9)
            history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2,
                                batch_size=128, verbose=0)
            if fuse:
                trainer = model._make_trainer(fastnn.losses.get("cross_entropy"), opt, 128)
                assert trainer.split == "threaded blas"
        runs.append((model.parameters(), history))
    (p_fused, h_fused), (p_layered, h_layered) = runs
    rtol = 2e-5 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(p_fused, p_layered, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(h_fused["loss"], h_layered["loss"], rtol=rtol)


@pytest.mark.parametrize("build", ["avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_simd_build_computes_what_the_baseline_build_does(build, dtype):
    """The same kernels compiled with wider vectors: dense forward and backward for each
    activation (odd sizes: the vector loops' remainders), a loss and an Adam step."""
    from fastnn.kernels.cython import SIMD_BUILDS
    from fastnn.kernels.cython import _kernels as baseline
    simd = pytest.importorskip(f"fastnn.kernels.cython._kernels_{build}")
    if not SIMD_BUILDS[build]:
        pytest.skip(f"this CPU does not run the {build} build")
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((37, 29)).astype(dtype), rng.standard_normal((29, 71)).astype(dtype)
    b, dA = rng.standard_normal(71).astype(dtype), rng.standard_normal((37, 71)).astype(dtype)
    labels, grad = rng.integers(0, 71, 37), rng.standard_normal(W.size).astype(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for act in range(6):
        outs = []
        for k in (baseline, simd):
            out, dZ = np.empty((37, 71), dtype), dA.copy()
            dX, dW, db = np.empty_like(X), np.empty_like(W), np.empty_like(b)
            k.dense_forward(X, W, b, act, out)
            k.dense_backward(dZ, X, W, out, act, dX, dW, db)
            outs.append((out, dZ, dX, dW, db))
        for got, want in zip(*outs):
            np.testing.assert_allclose(got, want, **tol, err_msg=f"act {act}")
    steps = []
    for k in (baseline, simd):
        dZ = np.empty_like(dA)
        loss = k.softmax_cross_entropy(dA, labels, dZ)
        p, m, v = W.ravel().copy(), np.zeros(W.size, dtype), np.zeros(W.size, dtype)
        for t in (1, 2):
            k.adam(p, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, t)
        steps.append((np.array(loss), dZ, p, m, v))
    for got, want in zip(*steps):
        np.testing.assert_allclose(got, want, **tol)


def test_the_widest_build_the_cpu_runs_is_the_one_in_use():
    import importlib.util

    from fastnn.kernels import cython
    installed = [b for b, runs in cython.SIMD_BUILDS.items()
                 if runs and importlib.util.find_spec(f"fastnn.kernels.cython._kernels_{b}")]
    assert cython.BUILD == (installed[0] if installed else "baseline")
    assert cython._kernels.__name__.endswith(
        "_kernels" if cython.BUILD == "baseline" else f"_kernels_{cython.BUILD}")


def test_bad_shapes_raise_instead_of_reading_out_of_bounds():
    k = fastnn.backends.resolve("cython")[1]
    X, W, b = np.ones((4, 3), np.float32), np.ones((5, 2), np.float32), np.ones(2, np.float32)
    with pytest.raises(ValueError, match="dense_forward needs X"):
        k.dense_forward(X, W, b, 0, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="not a class index"):
        k.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]), np.empty((2, 3)))
    with pytest.raises(TypeError, match="out must be float32 or float64"):
        k.dense_forward(X, W[:3], b, 0, np.empty((4, 2), np.int32))
    with pytest.raises(ValueError, match="unknown activation code 12"):
        k.dense_forward(X, W[:3], b, 12, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="needs the pre-activation buffer Z"):
        k.dense_forward(X, W[:3], b, 9, np.empty((4, 2), np.float32))
    with pytest.raises(TypeError, match="optimizer state"):
        k.sgd_momentum(np.ones(3), np.ones(3), None, 0.1, 0.9)
    model = fastnn.Sequential([fastnn.Dense(3, 2)], backend="cython")
    trainer = model._make_trainer(fastnn.losses.get("mse"), fastnn.SGD(0.1), 2)
    with pytest.raises(ValueError, match="is not a row of X"):
        trainer.run_epoch(X, np.ones((4, 2), np.float32), np.array([0, 1, 2, 4]))


def test_set_num_threads_before_the_first_cython_fit_limits_its_openmp():
    """threadpoolctl limits only the OpenMP runtimes already loaded: set_num_threads loads
    the cython kernels' first, so one called at the top of a script still holds when the
    first fit imports the extension."""
    script = textwrap.dedent("""
        import json, fastnn
        from threadpoolctl import threadpool_info
        fastnn.set_num_threads(1)
        model = fastnn.Sequential([fastnn.Dense(3, 2)], backend="cython")
        model.fit([[1.0, 2.0, 3.0]] * 4, [0, 1, 0, 1], loss="cross_entropy", epochs=1,
                  verbose=0)
        print(json.dumps([d["num_threads"] for d in threadpool_info()
                          if d["user_api"] == "openmp"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts and set(counts) == {1}
