"""Benchmarks of one training step, shared by ``pytest bench/`` and ``fastnn bench``.

What is timed, for every configuration of :data:`CONFIGS` and every contender:

* a fastnn backend: ``model.fit(X, y, epochs=1, batch_size=B, shuffle=False, verbose=0)`` over
  ``config.steps`` minibatches, divided by the number of minibatches, i.e. one training step
  (forward, loss, backward, SGD update) through exactly the path ``fit`` takes, fused trainer
  included. A warm-up fit runs first, so JIT compilation is not timed.
* PyTorch (the peer, when installed): the loop a PyTorch user writes over the same minibatches
  (``zero_grad``, forward, loss, ``backward``, ``SGD.step``) on an ``nn.Sequential`` holding the
  same initial weights, timed the same way.

Every contender gets the same number of threads (:func:`pin_threads`) and computes in the run's
dtype (:data:`DTYPES`, float32 by default): the fastnn models, the data, the peers' tensors and
the matmul peak. Each step's GFLOP/s is reported as a fraction of that peak, measured in the
same run (NumPy sgemm or dgemm on the CPU, cuBLAS with TF32 off on a GPU). Backends come from
the registry, so a backend becomes a contender as soon as it is usable.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__, backends, validation
from .model import DTYPES
from .optimizers import SGD

#: learning rate of every contender: small enough that repeated rounds over random data never
#: diverge (the speed of a step does not depend on it)
LR = 1e-4
#: samples per predict batch in the inference benchmark (``Sequential.predict``'s default),
#: and batches per timed predict call
PREDICT_BATCH = 1024
PREDICT_BATCHES = 8


@dataclass(frozen=True)
class Config:
    """A benchmark network: Dense layers of ``widths``, hidden activation, loss, batch size."""

    name: str
    widths: tuple[int, ...]
    batch: int
    activation: str          # of the hidden layers; the last layer is linear
    loss: str                # "mse" or "cross_entropy"
    steps: int               # minibatches per timed fit: enough to amortise fit's fixed cost
    predict: bool = False    # also time inference throughput

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.widths[:-1], self.widths[1:]))

    @property
    def forward_flops(self) -> int:
        """2·B·in·out per layer: one matmul each."""
        return sum(2 * self.batch * i * o for i, o in self.layer_shapes)

    @property
    def step_flops(self) -> int:
        """Forward, plus backward's dW and dX matmuls (no dX for the first layer)."""
        i0, o0 = self.layer_shapes[0]
        return 3 * self.forward_flops - 2 * self.batch * i0 * o0


CONFIGS = {c.name: c for c in (
    Config("tiny", (32, 64, 64, 1), 32, "relu", "mse", steps=256),
    Config("small", (64, 128, 128, 10), 64, "relu", "cross_entropy", steps=128),
    Config("mnist", (784, 256, 256, 10), 128, "relu", "cross_entropy", steps=32, predict=True),
    Config("wide", (1024, 2048, 2048, 1024), 512, "relu", "mse", steps=4),
    Config("deep", (64,) * 22, 64, "sigmoid", "mse", steps=64),
)}

#: speed targets from the issues, per dtype: (contender, config) -> (× faster than reference,
#: × faster than PyTorch on the same device); None where an issue sets no target
TARGETS = {
    "float32": {
        **{("numba_cpu", c): t for c, t in {"tiny": (4, 15), "small": (1.8, 4.5),
                                            "mnist": (1.0, 1.2), "wide": (0.95, 1.5),
                                            "deep": (2.5, 6)}.items()},
        **{("cython", c): (1.0, None) for c in CONFIGS},
        **{("numba_cuda", c): (None, t) for c, t in {"tiny": 3, "small": 3, "mnist": 1.0}.items()},
    },
    "float64": {("numba_cpu", c): (1.0, None) for c in CONFIGS},     # issue 14
}

TORCH_PEERS = ("torch_cpu", "torch_cuda")
#: framework peers whose network is built from the reference backend's initial weights
PEERS = (*TORCH_PEERS, "jax_cpu")


# -- contenders ----------------------------------------------------------------------------
def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def jax_installed() -> bool:
    return importlib.util.find_spec("jax") is not None


def _cuda_simulated() -> bool:
    """True when Numba's CUDA simulator stands in for a GPU: timing it is meaningless."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def contenders() -> dict[str, str]:
    """Every backend and PyTorch peer -> "usable" or why it is left out.

    Ordered so that each device's baselines (reference, then PyTorch) come before the backends
    compared with them.
    """
    found = {name: info.reason for name, info in backends.available_backends().items()}
    if found.get("numba_cuda") == "usable" and _cuda_simulated():
        found["numba_cuda"] = "left out: NUMBA_ENABLE_CUDASIM=1 simulates the GPU"
    if torch_installed():
        import torch
        found["torch_cpu"] = "usable"
        found["torch_cuda"] = ("usable" if torch.cuda.is_available() and
                               found.get("numba_cuda") == "usable" else
                               "left out: needs a CUDA GPU and a usable numba_cuda")
    else:
        found["torch_cpu"] = found["torch_cuda"] = "not installed (pip install 'fastnn[bench]')"
    found["jax_cpu"] = ("usable" if jax_installed()
                        else "not installed (pip install 'fastnn[bench]')")
    order = ("reference", "torch_cpu", "jax_cpu", "cython", "numba_cpu", "torch_cuda",
             "numba_cuda")
    return {name: found[name] for name in sorted(found, key=lambda n: (
        order.index(n) if n in order else len(order)))}


def usable_contenders() -> list[str]:
    return [name for name, why in contenders().items() if why == "usable"]


def usable(contender: str) -> bool:
    return contenders().get(contender) == "usable"


def device_of(contender: str) -> str:
    return "cuda" if contender in ("numba_cuda", "torch_cuda") else "cpu"


def pin_threads(n: int, torch: bool = False) -> None:
    """Give every contender the same ``n`` threads: Numba, BLAS, OpenMP (and PyTorch)."""
    from threadpoolctl import threadpool_limits

    from .threads import set_num_threads
    set_num_threads(n)                        # Numba's pool and the BLAS libraries, together
    threadpool_limits(n, user_api="openmp")   # OpenMP pools: cython's prange, PyTorch's
    if torch:
        import torch as th
        th.set_num_threads(n)


def thread_state() -> str:
    """The thread pools as they are now (after :func:`pin_threads`), PyTorch's included."""
    from .cli import thread_report
    state = thread_report()
    if "torch" in sys.modules:
        state += f", torch {sys.modules['torch'].get_num_threads()} threads"
    return state


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- the timed work ------------------------------------------------------------------------
def make_data(config: Config, steps: int, seed: int = 0,
              dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """``steps`` minibatches of random ``dtype`` inputs (and regression targets) for
    ``config``'s loss; class labels are integers."""
    dtype = validation.choice(dtype, "dtype", DTYPES)
    rng = np.random.default_rng(seed)
    n, n_in, n_out = steps * config.batch, config.widths[0], config.widths[-1]
    X = rng.standard_normal((n, n_in), dtype=dtype)
    if config.loss == "cross_entropy":
        return X, rng.integers(0, n_out, n)
    return X, rng.standard_normal((n, n_out), dtype=dtype)


def build_model(config: Config, backend: str, seed: int = 0, dtype: str = "float32"):
    """The fastnn model of ``config`` in ``dtype``: Dense layers with default init, last one
    linear."""
    from .layers import Dense
    from .model import Sequential
    last = len(config.layer_shapes) - 1
    return Sequential([Dense(i, o, "identity" if k == last else config.activation)
                       for k, (i, o) in enumerate(config.layer_shapes)],
                      backend=backend, seed=seed, dtype=dtype)


class Contest:
    """One contender's work on one configuration, built once and then called per round.

    ``train()`` runs ``steps`` training steps; ``predict()`` runs inference on
    ``predict_samples`` samples; all of it in ``dtype`` ("float32" or "float64").
    ``parameters()`` returns the weights as fastnn's flat vector (in the dtype the contender
    computes in), so a test can check that training changed them.
    """

    def __init__(self, config: Config, contender: str, steps: int, predict_samples: int = 0,
                 seed: int = 0, dtype: str = "float32"):
        self.config, self.contender, self.steps = config, contender, steps
        self.X, self.y = make_data(config, steps, seed, dtype)
        self.X_predict = self.X[:0]
        if predict_samples:
            self.X_predict = make_data(config, -(-predict_samples // config.batch), seed + 1,
                                       dtype)[0][:predict_samples]
        # a framework peer copies the initial weights of the reference backend's model
        backend = "reference" if contender in PEERS else contender
        self.model = build_model(config, backend, seed, dtype)
        self.optimizer = SGD(LR)
        self.peer = (_TorchNet(self) if contender in TORCH_PEERS else
                     _JaxNet(self) if contender == "jax_cpu" else None)

    def train(self) -> None:
        if self.peer is not None:
            return self.peer.train()
        self.model.fit(self.X, self.y, loss=self.config.loss, optimizer=self.optimizer,
                       epochs=1, batch_size=self.config.batch, shuffle=False, verbose=0)

    def predict(self) -> np.ndarray:
        if self.peer is not None:
            return self.peer.predict()
        return self.model.predict(self.X_predict, batch_size=PREDICT_BATCH)

    def parameters(self) -> np.ndarray:
        return self.peer.parameters() if self.peer is not None \
            else self.model.parameters().copy()


class _TorchNet:
    """The PyTorch peer: nn.Sequential with the fastnn model's initial weights and dtype, SGD,
    and the usual training loop over pre-sliced minibatches (on the GPU for torch_cuda)."""

    def __init__(self, contest: Contest):
        import torch
        from torch import nn
        self.torch, self.config, self.dtype = torch, contest.config, contest.model.dtype
        config = contest.config
        self.device = torch.device("cuda" if contest.contender == "torch_cuda" else "cpu")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[config.activation]
        modules = []
        for layer in contest.model.layers:
            linear = nn.Linear(layer.in_features, layer.out_features,
                               dtype=getattr(torch, self.dtype.name))
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.weight.T.copy()))
                linear.bias.copy_(torch.from_numpy(layer.bias))
            modules += [linear, act()]
        self.net = nn.Sequential(*modules[:-1]).to(self.device)
        self.loss = nn.CrossEntropyLoss() if config.loss == "cross_entropy" else nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR)
        X = torch.from_numpy(contest.X).to(self.device)
        y = torch.from_numpy(contest.y).to(self.device)
        B = config.batch
        self.batches = [(X[s:s + B], y[s:s + B]) for s in range(0, len(X), B)]
        self.X_predict = torch.from_numpy(contest.X_predict)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train(self) -> None:
        for xb, yb in self.batches:
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.net(xb), yb).backward()
            self.optimizer.step()
        self._sync()

    def predict(self) -> np.ndarray:
        out = np.empty((len(self.X_predict), self.config.widths[-1]), self.dtype)
        with self.torch.inference_mode():
            for s in range(0, len(out), PREDICT_BATCH):
                chunk = self.X_predict[s:s + PREDICT_BATCH].to(self.device)
                out[s:s + PREDICT_BATCH] = self.net(chunk).cpu().numpy()
        return out

    def parameters(self) -> np.ndarray:
        linears = [m for m in self.net if hasattr(m, "weight")]
        return np.concatenate([np.concatenate([m.weight.detach().cpu().numpy().T.ravel(),
                                               m.bias.detach().cpu().numpy()])
                               for m in linears])


class _JaxNet:
    """The JAX peer: the same network, initial weights, data and SGD, with the whole timed call
    (all of the contest's minibatches) as one ``jax.jit``-compiled ``lax.scan`` over
    minibatches: the fastest form a JAX user writes, fused as fastnn's epoch is. The loss is
    fastnn's (mse = ½Σ over outputs, averaged over the batch), so both take the same step.
    XLA's CPU thread pool is sized by the cores (JAX has no setting for it).

    A float64 contest sets ``jax_enable_x64`` for the whole process (JAX would otherwise turn
    float64 arrays into float32); only then, so a float32-only process keeps JAX's defaults.
    float32 arrays stay float32 with it on."""

    def __init__(self, contest: Contest):
        import jax
        import jax.numpy as jnp
        if contest.model.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.jax, self.config = jax, contest.config
        config = contest.config
        act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[
            config.activation]

        def forward(params, x):
            for W, b in params[:-1]:
                x = act(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def loss(params, x, y):
            z = forward(params, x)
            if config.loss == "cross_entropy":
                return jnp.mean(jax.nn.logsumexp(z, axis=1)
                                - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])
            return 0.5 * jnp.mean(jnp.sum((z - y) ** 2, axis=1))

        def step(params, batch):
            grads = jax.grad(loss)(params, *batch)
            return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), None

        self.epoch = jax.jit(lambda params, X, Y: jax.lax.scan(step, params, (X, Y))[0])
        self.forward = jax.jit(forward)
        self.params = [(jnp.asarray(layer.weight), jnp.asarray(layer.bias))
                       for layer in contest.model.layers]
        B = config.batch
        y = contest.y.astype(np.int32) if config.loss == "cross_entropy" else contest.y
        self.X = jnp.asarray(contest.X.reshape(-1, B, contest.X.shape[1]))
        self.Y = jnp.asarray(y.reshape(-1, B, *y.shape[1:]))
        self.X_predict = jnp.asarray(contest.X_predict)

    def train(self) -> None:
        self.params = self.jax.block_until_ready(self.epoch(self.params, self.X, self.Y))

    def predict(self) -> np.ndarray:
        return np.asarray(self.jax.block_until_ready(self.forward(self.params,
                                                                  self.X_predict)))

    def parameters(self) -> np.ndarray:
        return np.concatenate([np.concatenate([np.asarray(W).ravel(), np.asarray(b)])
                               for W, b in self.params])


#: seconds to let the previous contender's thread pools go idle before the next is timed:
#: OpenBLAS's workers keep spinning on a core for ~0.1 s after a threaded call (measured:
#: 0.10 s of CPU in the 2 s after one 2048² sgemm), longer than a small network's whole
#: timed run, which then shares its second core with them
SETTLE_SECONDS = 0.25


def settle() -> None:
    """Wait for the thread pools of whatever ran last (the peak's sgemm, the reference's
    BLAS calls, a peer's workers) to stop spinning before the next contender's timing."""
    time.sleep(SETTLE_SECONDS)


#: seconds that each contender's timed calls last at least (calls are repeated past
#: ``rounds`` until then): 5 calls of tiny's 3.5 ms fit sampled 17 ms of a noisy VM, whose
#: fastest step then ranged 13.8-17.4 µs from run to run (2026-12-03); fastest of 0.5 s of
#: calls, 12.3-13.5
MIN_TIMED_SECONDS = 0.5


def time_call(fn: Callable[[], object], rounds: int, min_seconds: float = 0.0) -> float:
    """Fastest of ``rounds`` timed calls, or of as many as ``min_seconds`` takes if that is
    more, in seconds: on a shared machine, noise only adds."""
    best, began, calls = float("inf"), time.perf_counter(), 0
    while calls < rounds or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return best


# -- matmul peaks --------------------------------------------------------------------------
def gemm_gflops(threads: int, n: int = 2048, rounds: int = 3, dtype: str = "float32") -> float:
    """NumPy ``dtype`` matmul n×n·n×n (sgemm or dgemm) with ``threads`` BLAS threads, in
    GFLOP/s."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((n, n), dtype=dtype) for _ in range(2))
    C = np.empty_like(A)
    with threadpool_limits(threads, user_api="blas"):
        np.matmul(A, B, out=C)
        return 2 * n ** 3 / time_call(lambda: np.matmul(A, B, out=C), rounds) / 1e9


def numpy_blas() -> str:
    """NumPy's BLAS and the kernel family it runs, e.g. "openblas, Haswell kernels": the "cpu"
    peak is that library's, so an ``OPENBLAS_CORETYPE`` set on the machine (Haswell: AVX2 on a
    CPU with AVX-512) caps it, and peers with their own matmul (JAX) can exceed it."""
    from threadpoolctl import threadpool_info
    blas = sorted((i for i in threadpool_info() if i["user_api"] == "blas"),
                  key=lambda i: "numpy" not in i["filepath"])       # NumPy's own first
    found = [f"{i['internal_api']}, {i.get('architecture') or 'unknown'} kernels"
             for i in blas]
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    return (found[0] if found else "unknown") + (f"; OPENBLAS_CORETYPE={coretype}"
                                                 if coretype else "")


def cublas_gflops(n: int = 2048, rounds: int = 5, dtype: str = "float32") -> float:
    """PyTorch ``dtype`` CUDA matmul n×n (cuBLAS, TF32 off), in GFLOP/s."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    A, B, C = (torch.randn(n, n, device="cuda", dtype=getattr(torch, dtype)) for _ in range(3))

    def matmul():
        torch.matmul(A, B, out=C)
        torch.cuda.synchronize()
    matmul()
    return 2 * n ** 3 / time_call(matmul, rounds) / 1e9


def numba_cuda_matmul_gflops(n: int = 2048, dtype: str = "float32") -> float | None:
    """The numba_cuda backend's own matmul kernel, if it exposes ``matmul_tflops(n, dtype)``."""
    measure = getattr(backends.resolve("numba_cuda")[1], "matmul_tflops", None)
    return None if measure is None else 1e3 * float(measure(n, dtype))


def measure_peaks(threads: int, devices: set[str], quick: bool = False,
                  dtype: str = "float32") -> dict[str, float]:
    """Matmul GFLOP/s in ``dtype`` per key: "cpu" (NumPy), and when a GPU contender runs
    "cuda" (cuBLAS) and "numba_cuda_matmul" (where the backend exposes its kernel); ``quick``
    uses 256² for a smoke test."""
    dtype = validation.choice(dtype, "dtype", DTYPES)
    n = 256 if quick else 2048
    peaks = {"cpu": gemm_gflops(threads, n, 1 if quick else 5, dtype)}
    if "cuda" in devices:
        if torch_installed():
            import torch
            if torch.cuda.is_available():
                peaks["cuda"] = cublas_gflops(n, 1 if quick else 5, dtype)
        own = numba_cuda_matmul_gflops(n, dtype) if usable("numba_cuda") else None
        if own is not None:
            peaks["numba_cuda_matmul"] = own
    return peaks


# -- results -------------------------------------------------------------------------------
@dataclass
class Row:
    """One timed (configuration, task, contender)."""

    config: str
    task: str                # "train" (one step) or "predict" (one batch of PREDICT_BATCH)
    contender: str
    seconds: float           # per step or per predict batch
    samples: int             # samples per step or batch
    flops: int               # per step or batch
    vs_reference: float | None = None
    vs_torch: float | None = None
    vs_jax: float | None = None
    peak_fraction: float | None = None

    @property
    def label(self) -> str:
        return self.config if self.task == "train" else f"{self.config} predict"

    @property
    def us(self) -> float:
        return 1e6 * self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9

    def extra_info(self) -> dict:
        """The figures pytest-benchmark stores with the run."""
        return {"us_per_step": self.us, "samples_per_s": self.samples_per_s,
                "gflops": self.gflops, "vs_reference": self.vs_reference,
                "vs_torch": self.vs_torch, "vs_jax": self.vs_jax,
                "peak_fraction": self.peak_fraction}


@dataclass
class Results:
    """Rows of one run plus the conditions they were measured under (threads, the dtype every
    contender computed in, the matmul peaks in that dtype)."""

    threads: int
    peaks: dict[str, float] = field(default_factory=dict)
    thread_state: str = ""
    rows: list[Row] = field(default_factory=list)
    dtype: str = "float32"

    def add(self, config: Config, task: str, contender: str, seconds: float) -> Row:
        """Record a timing; its ratios use the rows of the same config and task so far."""
        samples = config.batch if task == "train" else PREDICT_BATCH
        flops = config.step_flops if task == "train" \
            else config.forward_flops // config.batch * PREDICT_BATCH
        row = Row(config.name, task, contender, seconds, samples, flops)
        self.rows.append(row)
        self._ratios()
        return row

    def update_peaks(self, peaks: dict[str, float]) -> None:
        """Keep the higher of each peak: measured again after the contenders, it is less
        likely to have been taken during a burst of load from other processes."""
        for key, value in peaks.items():
            self.peaks[key] = max(value, self.peaks.get(key, 0.0))
        self._ratios()

    def _ratios(self) -> None:
        times = {(r.config, r.task, r.contender): r.seconds for r in self.rows}
        for r in self.rows:
            peer = "torch_cuda" if device_of(r.contender) == "cuda" else "torch_cpu"
            ref = times.get((r.config, r.task, "reference"))
            torch_time = times.get((r.config, r.task, peer))
            r.vs_reference = None if ref is None else ref / r.seconds
            r.vs_torch = None if torch_time is None else torch_time / r.seconds
            jax_time = times.get((r.config, r.task, "jax_cpu"))
            r.vs_jax = None if jax_time is None or device_of(r.contender) != "cpu" \
                else jax_time / r.seconds
            peak = self.peaks.get(device_of(r.contender))
            r.peak_fraction = None if peak is None else r.gflops / peak

    def table(self) -> str:
        """Aligned text table, one line per row, with the issue targets where there are."""
        head = ("config", "backend", "µs/step", "samples/s", "×ref", "×torch", "×jax",
                "of peak", "target ×ref / ×torch")
        lines = [head]
        for r in self.rows:
            lines.append((r.label, r.contender, f"{r.us:,.1f}", f"{r.samples_per_s:,.0f}",
                          _ratio(r.vs_reference), _ratio(r.vs_torch), _ratio(r.vs_jax),
                          "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f}%",
                          _target(r, TARGETS[self.dtype])))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = ["  ".join(c.ljust(w) if i < 2 or i == 8 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in self.peaks.items())
        if "cuda" in self.peaks and "numba_cuda_matmul" in self.peaks:
            peaks += (f" (numba_cuda matmul = "
                      f"{100 * self.peaks['numba_cuda_matmul'] / self.peaks['cuda']:.0f}% of "
                      f"cuBLAS)")
        return "\n".join([*text[:1], "-" * len(text[0]), *text[1:],
                          f"dtype: {self.dtype} (every contender, the data, the peaks)",
                          f"threads: {self.threads} ({self.thread_state})",
                          f"matmul peaks: {peaks} (cpu: NumPy's {numpy_blas()})"])

    def to_json(self) -> dict:
        return {"machine": machine(), "dtype": self.dtype, "threads": self.threads,
                "thread_state": self.thread_state, "peaks": self.peaks,
                "rows": [{**asdict(r), **r.extra_info()} for r in self.rows]}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _target(row: Row, targets: dict) -> str:
    """e.g. "≥4 ok / ≥15 MISS" from ``targets`` (one dtype's :data:`TARGETS`); training
    targets only."""
    target = targets.get((row.contender, row.config)) if row.task == "train" else None
    if target is None:
        return ""
    parts = []
    for goal, got in zip(target, (row.vs_reference, row.vs_torch)):
        if goal is None:
            parts.append("-")
        else:
            verdict = "?" if got is None else "ok" if got >= goal else "MISS"
            parts.append(f"≥{goal:g} {verdict}")
    return " / ".join(parts)


def fastnn_matmul() -> str:
    """Which float32 matmuls fastnn's CPU backends run on: its own AVX-512 or AVX2 kernel
    (MLP-sized ones; BLAS past its limits, see kernels/cython/_kernels.pyx), or BLAS for all."""
    try:
        from .kernels.cython import _kernels
    except ImportError:
        return "BLAS (the cython extension is not built)"
    kernel = _kernels.own_gemm_kernel()
    return "BLAS" if kernel is None else f"own {kernel} kernel up to MLP sizes, then BLAS"


def machine() -> dict:
    """CPU model, cores and the versions that decide the timings."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "fastnn": __version__, "numpy": np.__version__, "numpy_blas": numpy_blas(),
            "fastnn_matmul": fastnn_matmul()}
    for name in ("numba", "torch"):
        if importlib.util.find_spec(name) is not None:
            info[name] = importlib.import_module(name).__version__
    if "torch" in info:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


# -- a whole run (the CLI's) ---------------------------------------------------------------
def run(configs: list[str], names: list[str], threads: int, rounds: int,
        dtype: str = "float32", progress: Callable[[str], None] = lambda line: None) -> Results:
    """Time every (config, contender) in one process with the same threads, in ``dtype``.

    Each contender's rounds (at least ``rounds`` calls, and at least
    :data:`MIN_TIMED_SECONDS` of them) run back to back after a pause (:func:`settle`) and
    its own warm-up call: taking contenders in turns, or straight after each other, would let the
    previous one's thread pools (OpenBLAS, OpenMP workers busy-wait after a call) steal cores
    from the next.
    """
    dtype = validation.choice(dtype, "dtype", DTYPES)
    devices = {device_of(c) for c in names}
    pin_threads(threads, torch=any(c in TORCH_PEERS for c in names))
    results = Results(threads, measure_peaks(threads, devices, dtype=dtype), thread_state(),
                      dtype=dtype)
    for config in map(CONFIGS.__getitem__, configs):
        for contender in names:
            contest = Contest(config, contender, config.steps,
                              PREDICT_BATCH * PREDICT_BATCHES if config.predict else 0,
                              dtype=dtype)
            tasks = [("train", contest.train, config.steps)]
            if config.predict:
                tasks.append(("predict", contest.predict, PREDICT_BATCHES))
            for task, call, per_call in tasks:
                settle()
                call()
                row = results.add(config, task, contender,
                                  time_call(call, rounds, MIN_TIMED_SECONDS) / per_call)
                progress(f"{row.label:<14} {contender:<11} {row.us:>12,.1f} µs")
    results.update_peaks(measure_peaks(threads, devices, dtype=dtype))
    return results


def write_json(results: Results, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results.to_json(), f, indent=1)


# -- the ``fastnn bench`` command ----------------------------------------------------------
#: timed rounds of ``fastnn bench`` unless --rounds says otherwise
DEFAULT_ROUNDS = 3


def add_arguments(parser) -> None:
    """Options of ``fastnn bench``."""
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configurations to time (default: all)")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        choices=[*backends.BACKENDS, *PEERS],
                        help="fastnn backends and framework peers (torch_cpu, torch_cuda, "
                             "jax_cpu) to time (default: every usable one)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads for every contender (default: all cores: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="what every contender, the data and the matmul peak compute in "
                             "(default: float32)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="timed rounds after a warm-up, repeated for at least "
                             f"{MIN_TIMED_SECONDS:g} s; the fastest counts "
                             f"(default: {DEFAULT_ROUNDS})")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    from ._sklearn_bench import CASES
    parser.add_argument("--sklearn", action="store_true",
                        help="instead: scikit-learn's MLPClassifier/MLPRegressor and "
                             "fastnn.sklearn's side by side (fit time, test score)")
    parser.add_argument("--sklearn-cases", nargs="+", choices=list(CASES), metavar="CASE",
                        help=f"with --sklearn: cases to run ({', '.join(CASES)}; default all)")


def _reject_unused_options(args) -> None:
    """Options that the chosen mode would ignore are an error, not silently dropped: the
    scikit-learn side by side has fixed cases, data (float64 in, fastnn computing in
    float32) and one fit each, and prints no JSON; ``--sklearn-cases`` needs ``--sklearn``."""
    if not args.sklearn:
        if args.sklearn_cases:
            raise ValueError("--sklearn-cases needs --sklearn")
        return
    unused = [option for option, given in (
        ("--configs", args.configs != list(CONFIGS)), ("--backends", args.backends),
        ("--dtype", args.dtype != "float32"), ("--rounds", args.rounds != DEFAULT_ROUNDS),
        ("--json", args.json)) if given]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not used with --sklearn, whose options are "
                         "--threads and --sklearn-cases")


def cmd_bench(args) -> int:
    """Time the configurations, print the table (and write JSON if asked); with
    ``--sklearn`` the scikit-learn side by side instead."""
    _reject_unused_options(args)
    if args.sklearn:
        from . import _sklearn_bench
        return _sklearn_bench.cmd(args)
    from .validation import positive_int
    threads, rounds = positive_int(args.threads, "threads"), positive_int(args.rounds, "rounds")
    found = contenders()
    for name in args.backends or ():
        if found[name] != "usable":
            raise RuntimeError(f"--backends {name}: {found[name]}")
    names = [n for n, why in found.items()
             if (n in args.backends if args.backends else why == "usable")]
    info = machine()
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    left_out = [f"{n} ({'not selected' if why == 'usable' else why})"
                for n, why in found.items() if n not in names]
    if left_out:
        print(f"not timed: {'; '.join(left_out)}")
    results = run(args.configs, names, threads, rounds, args.dtype,
                  progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    print(results.table())
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    return 0
