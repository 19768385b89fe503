"""Export to ONNX, for onnxruntime and the serving stacks that load it.

The graph computes in float32, whatever the model's dtype:

* Dense is ``Gemm`` (W is (in, out), so no transpose), followed by its activation: ``Sigmoid``,
  ``Tanh``, ``Relu``, ``LeakyRelu`` (α 0.01), ``Softmax`` (axis 1), ``Elu`` (α 1), ``Selu``
  (PyTorch's constants), ``Softplus`` (above fastnn's threshold of 20 both equal z in
  float32), SiLU as z·``Sigmoid``(z), GELU as z·½(1 + ``Erf``(z/√2)) below opset 20 and the
  ``Gelu`` op from 20 (also for gelu_tanh, with approximate="tanh"; below 20 its tanh formula);
* BatchNorm is ``BatchNormalization`` in inference form (the running statistics);
* Residual is ``Add`` of the input and the block's output; Dropout is left out (the identity
  at inference); Standardize is ``Sub`` then ``Div``;
* a model trained from a CSV file (:mod:`fastnn.tabular`) takes one input per feature
  column, numbers as float (rows, 1) and categories as string (rows, 1), and one-hot encodes
  the strings in the graph: ``Equal`` against the categories stored as an initializer from
  opset 19, ``ai.onnx.ml`` ``OneHotEncoder`` below (an unseen category gives zeros, as in
  fastnn);
* a classifier's outputs are ``label`` (the original labels: strings, integers...) and
  ``probabilities`` (rows, classes), without ZipMap.

The IR version is the lowest that carries the opset, so every onnxruntime release that runs
the opset loads the file (opset 17, the default: IR 8, onnxruntime 1.12 and later).
"""
from __future__ import annotations

import os

import numpy as np

from . import __version__
from .kernels import GELU_TANH_C, GELU_TANH_K, LEAKY_SLOPE, SELU_ALPHA, SELU_SCALE

#: the oldest opset exported (Softmax over one axis, Squeeze/Unsqueeze axes as inputs)
MIN_OPSET = 13
#: opset of the ai.onnx.ml domain (OneHotEncoder) where a graph uses it
ML_OPSET = 1
_FLOAT = np.float32


def _onnx():
    """The onnx package, or an ImportError naming the extra that installs it."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'fastnn[onnx]' "
                          "(the onnx extra: onnx and onnxruntime)") from None
    return onnx


def export_model(model, path: str | os.PathLike, opset: int = 17) -> None:
    """Write ``model`` (a :class:`~fastnn.Sequential`) as ONNX: input ``input`` (rows, in)
    float32, output ``output`` (rows, out), which equals ``model.predict``."""
    g = _Graph(opset)
    x = g.input("input", "float", model.in_features)
    g.output(_network(g, model.layers, x), "output", "float", model.out_features)
    g.save(path)


def export_classifier(model, classes, path: str | os.PathLike, opset: int = 17,
                      multilabel: bool = False) -> None:
    """Write a classifier as ONNX with outputs ``label`` and ``probabilities``, no ZipMap.

    ``model`` outputs, for the rows of input ``input`` (rows, in) float32, either logits
    (last activation identity) or probabilities (softmax, or sigmoid):

    * ``multilabel``: one sigmoid output per label; ``probabilities`` (rows, labels),
      ``label`` int64 (rows, labels), 1 where the probability exceeds 0.5 (``classes`` unused);
    * one output: binary; ``probabilities`` (rows, 2) = (1 − p, p) with p = P(classes[1]);
      ``label`` (rows,) = classes[1] where p > 0.5, else classes[0];
    * k ≥ 2 outputs: softmax; ``label`` (rows,) = classes[argmax] (the first on ties).

    ``classes``: the labels in output order (strings, integers, floats or booleans), as
    scikit-learn's ``classes_``; ``label`` has their type.
    """
    g = _Graph(opset)
    x = g.input("input", "float", model.in_features)
    z = _network(g, model.layers, x, logits=model.last_activation in ("sigmoid", "softmax"))
    _classifier_outputs(g, z, model, classes, multilabel)
    g.save(path)


def export_tabular(tabular, path: str | os.PathLike, opset: int = 17) -> None:
    """Write a :class:`fastnn.tabular.TabularModel` as ONNX, its column encoding included:
    one input per feature column, named as the column; outputs ``label`` and
    ``probabilities``, or ``prediction`` (rows, 1) for a regression."""
    outputs = ("label", "probabilities") if tabular.task == "classification" else \
        ("prediction",)
    names = [f.name for f in tabular.encoder.features]
    clash = sorted(set(names) & set(outputs))
    if clash:
        raise ValueError(f"a feature column is named {clash[0]!r}, the name of an output of "
                         f"the exported graph; rename the column")
    g = _Graph(opset, taken=names)
    parts = []
    for f in tabular.encoder.features:
        if f.categories is None:
            parts.append(g.input(f.name, "float", 1))
        else:
            parts.append(_one_hot(g, g.input(f.name, "string", 1), f.categories))
    x = parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=1)
    network = tabular.network
    if tabular.task == "classification":
        z = _network(g, network.layers, x, logits=True)       # the last layer is softmax
        _classifier_outputs(g, z, network, tabular.target.classes, multilabel=False)
    else:
        g.output(_network(g, network.layers, x), "prediction", "float",
                 network.out_features)
    g.save(path)


# -- the network -------------------------------------------------------------------------------
def _network(g: _Graph, layers, x: str, logits: bool = False) -> str:
    """Emit ``layers`` applied to ``x``; with ``logits`` the last Dense's activation is left
    out (the caller applies softmax or sigmoid itself)."""
    for i, layer in enumerate(layers):
        x = _layer(g, layer, x, logits and i == len(layers) - 1)
    return x


def _layer(g: _Graph, layer, x: str, logits: bool) -> str:
    kind = layer.get_config()["type"]
    if kind == "Dense":
        z = g.node("Gemm", [x, g.const(layer.weight, "W"), g.const(layer.bias, "b")])
        return z if logits else _activation(g, layer.activation, z)
    if kind == "BatchNorm":
        return g.node("BatchNormalization",
                      [x, g.const(layer.gamma, "gamma"), g.const(layer.beta, "beta"),
                       g.const(layer.running_mean, "mean"), g.const(layer.running_var, "var")],
                      epsilon=float(layer.eps))
    if kind == "Residual":
        return g.node("Add", [x, _network(g, layer.block, x)])   # y = x + block(x)
    if kind == "Dropout":
        return x                                                   # identity at inference
    if kind == "Standardize":
        centred = g.node("Sub", [x, g.const(layer.mean, "mean")])
        return g.node("Div", [centred, g.const(layer.std, "std")])
    raise ValueError(f"cannot export layer {layer!r} to ONNX: no ONNX form for {kind!r}")


def _activation(g: _Graph, name: str, z: str) -> str:
    simple = {"sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}), "relu": ("Relu", {}),
              "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_SLOPE}),
              "softmax": ("Softmax", {"axis": 1}), "elu": ("Elu", {"alpha": 1.0}),
              "selu": ("Selu", {"alpha": SELU_ALPHA, "gamma": SELU_SCALE}),
              "softplus": ("Softplus", {})}
    if name == "identity":
        return z
    if name in simple:
        op, attrs = simple[name]
        return g.node(op, [z], **attrs)
    if name == "silu":                                             # z σ(z)
        return g.node("Mul", [z, g.node("Sigmoid", [z])])
    if name in ("gelu", "gelu_tanh") and g.opset >= 20:
        return g.node("Gelu", [z], approximate="none" if name == "gelu" else "tanh")
    if name == "gelu":                                             # ½ z (1 + erf(z/√2))
        inner = g.node("Erf", [g.node("Mul", [z, g.scalar(np.sqrt(0.5))])])
    elif name == "gelu_tanh":                                      # ½ z (1 + tanh(c(z + k z³)))
        cube = g.node("Mul", [g.node("Mul", [z, z]), z])
        u = g.node("Add", [z, g.node("Mul", [cube, g.scalar(GELU_TANH_K)])])
        inner = g.node("Tanh", [g.node("Mul", [u, g.scalar(GELU_TANH_C)])])
    else:
        raise ValueError(f"cannot export activation {name!r} to ONNX")
    half_z = g.node("Mul", [z, g.scalar(0.5)])
    return g.node("Mul", [half_z, g.node("Add", [inner, g.scalar(1.0)])])


# -- heads and encodings -------------------------------------------------------------------
def _classifier_outputs(g: _Graph, z: str, model, classes, multilabel: bool) -> None:
    """``probabilities`` and ``label`` from the network's last output ``z`` (logits, unless
    the model ends in sigmoid/softmax and z is already that)."""
    last, n = model.last_activation, model.out_features
    if last not in ("identity", "sigmoid", "softmax"):
        raise ValueError(f"a classifier's last activation must be identity (logits), sigmoid "
                         f"or softmax, not {last!r}")
    if multilabel:
        p = g.node("Sigmoid", [z])
        g.output(p, "probabilities", "float", n)
        label = g.node("Cast", [g.node("Greater", [p, g.scalar(0.5)])], to="int64")
        g.output(label, "label", "int64", n)
        return
    classes = _labels(classes, 2 if n == 1 else n)
    if n == 1:                                                     # binary: (1 − p, p)
        p1 = g.node("Sigmoid", [z])
        p = g.node("Concat", [g.node("Sub", [g.scalar(1.0), p1]), p1], axis=1)
    else:
        p = g.node("Softmax", [z], axis=1)
    g.output(p, "probabilities", "float", max(n, 2))
    index = g.node("ArgMax", [p], axis=1, keepdims=0)
    g.output(g.node("Gather", [g.const(classes, "classes", cast=False), index]), "label",
             _ELEMENT[classes.dtype.kind], None)


_ELEMENT = {"U": "string", "O": "string", "i": "int64", "f": "double", "b": "bool"}


def _labels(classes, n: int) -> np.ndarray:
    """The class labels as an initializer's array: str, int64, float64 or bool."""
    arr = np.asarray(classes)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"classes must list the {n} labels in output order, got "
                         f"{len(arr) if arr.ndim == 1 else arr.shape}")
    kind = arr.dtype.kind
    if kind in "US" or (kind == "O" and all(isinstance(c, str) for c in arr)):
        return np.array([str(c) for c in arr], dtype=object)
    if kind in "iu":
        return arr.astype(np.int64)
    if kind in "fb":
        return arr.astype(np.float64 if kind == "f" else bool)
    raise TypeError(f"classes must be strings, integers, floats or booleans, got dtype "
                    f"{arr.dtype}")


def _one_hot(g: _Graph, x: str, categories: list[str]) -> str:
    """(rows, 1) strings -> (rows, categories) float one-hot; unseen -> zeros."""
    if g.opset >= 19:                                              # Equal takes strings
        cats = g.const(np.array([categories], dtype=object), "categories", cast=False)
        return g.node("Cast", [g.node("Equal", [x, cats])], to="float")
    g.ml = True
    onehot = g.node("OneHotEncoder", [x], domain="ai.onnx.ml", cats_strings=list(categories),
                    zeros=1)                                       # (rows, 1, categories)
    return g.node("Flatten", [onehot], axis=1)


# -- the graph builder ---------------------------------------------------------------------
class _Graph:
    """Nodes, initializers, inputs and outputs of one graph, with unique tensor names."""

    def __init__(self, opset: int, taken=()):
        onnx = _onnx()
        newest = onnx.defs.onnx_opset_version()
        if isinstance(opset, bool) or not isinstance(opset, int) or \
                not MIN_OPSET <= opset <= newest:
            raise ValueError(f"opset must be an integer from {MIN_OPSET} to {newest} (the "
                             f"newest that the installed onnx {onnx.__version__} knows), got "
                             f"{opset!r}")
        self.onnx, self.opset, self.ml = onnx, opset, False
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self._taken, self._count = set(taken), 0

    def _name(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def input(self, name: str, elem: str, width: int) -> str:
        self.inputs.append(self._value(name, elem, width))
        self._taken.add(name)
        return name

    def output(self, tensor: str, name: str, elem: str, width: int | None) -> None:
        self.nodes.append(self.onnx.helper.make_node("Identity", [tensor], [name]))
        self.outputs.append(self._value(name, elem, width))

    def _value(self, name, elem, width):
        shape = ["N"] if width is None else ["N", width]
        return self.onnx.helper.make_tensor_value_info(name, _TYPES[elem], shape)

    def const(self, array, hint: str, cast: bool = True) -> str:
        """An initializer holding ``array`` (as float32 unless ``cast`` is False)."""
        name = self._name(hint)
        arr = np.asarray(array, _FLOAT) if cast else np.asarray(array)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, _FLOAT), "c")

    def node(self, op: str, inputs: list[str], domain: str = "", **attrs) -> str:
        if "to" in attrs:
            attrs["to"] = _TYPES[attrs["to"]]
        out = self._name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], domain=domain or None,
                                                     **attrs))
        return out

    def save(self, path) -> None:
        """Check the model (full check, with shape inference) and write it to ``path``."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, "fastnn", self.inputs, self.outputs, self.inits)
        imports = [helper.make_opsetid("", self.opset)]
        if self.ml:
            imports.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
        model = helper.make_model(graph, opset_imports=imports, producer_name="fastnn",
                                  producer_version=__version__,
                                  ir_version=_ir_version(self.onnx, self.opset))
        self.onnx.checker.check_model(model, full_check=True)
        self.onnx.save(model, os.fspath(path))


def _ir_version(onnx, opset: int) -> int:
    """The IR version of the first onnx release that carries ``opset``: the oldest runtime
    able to run the graph can also read the file."""
    for _release, ir, ai_onnx, ai_onnx_ml, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset and ai_onnx_ml >= ML_OPSET:
            return ir
    return onnx.IR_VERSION


_TYPES = {"float": 1, "int64": 7, "string": 8, "bool": 9, "double": 11}   # onnx.TensorProto
