"""Tables on the command line: fastnn train DATA.csv / predict / evaluate / export, on CSV
files written here from scikit-learn's bundled iris and diabetes data with text columns added;
the encoding saved in the model file; bad input refused with the column and row, nothing
written."""
import csv
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

import fastnn
from fastnn import io, tabular
from fastnn.cli import main
from fastnn.encoding import UnseenCategoryWarning

SPECIES = np.array(["setosa", "versicolor", "virginica"])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def num(value) -> str:
    return repr(float(value))


def iris_rows(labels="names"):
    """Iris with a text column that carries signal (petal size) and one that is noise."""
    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    size = np.where(X[:, 2] < 2.5, "small", np.where(X[:, 2] < 5, "medium", "large"))
    site = rng.choice(["north", "south", "east"], len(X))
    target = SPECIES[y] if labels == "names" else y
    header = ["sepal_length", "sepal_width", "petal_length", "petal_width", "size", "site",
              "species"]
    rows = [[*map(num, x), s, t, str(c)] for x, s, t, c in zip(X, size, site, target)]
    return header, rows


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("iris") / "iris.csv", *iris_rows())


def fastnn_cli(*args):
    """The command as a user runs it (a subprocess): (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


TRAIN = ("--epochs", "40", "--hidden", "16", "--lr", "0.01", "--backend", "reference",
         "--verbose", "0")


@pytest.fixture(scope="module")
def iris_model(iris_csv, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "iris.fnn"
    code, out, err = fastnn_cli("train", iris_csv, "--target", "species", *TRAIN,
                                "--out", path)
    assert code == 0, out + err
    return path, out


def test_train_reports_the_task_encoding_and_held_out_split(iris_model):
    _, out = iris_model
    assert ("task: classification into 3 classes (auto: the target 'species' holds 3 "
            "distinct text labels)") in out
    assert "features: 4 numeric (standardised), 2 categorical (one-hot) -> 10 inputs" in out
    assert "rows: 120 train, 30 held out" in out
    held = [line for line in out.splitlines() if line.startswith("held-out 30 rows: loss ")]
    assert held and float(held[0].split("accuracy ")[1]) > 0.8


def test_predict_writes_original_labels_equal_to_the_loaded_network(iris_model, iris_csv,
                                                                    tmp_path):
    path, _ = iris_model
    preds = tmp_path / "preds.csv"
    code, out, err = fastnn_cli("predict", path, iris_csv, "--out", preds, "--proba",
                                "--backend", "reference")
    assert code == 0, out + err
    with open(preds, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["species", "proba_setosa", "proba_versicolor", "proba_virginica"]
    assert len(rows) == 151
    labels = np.array([r[0] for r in rows[1:]])
    proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]], np.float32)
    # the same rows, encoded with the file's encoding, through fastnn.load's network
    model = tabular.load(path, backend="reference")
    network = fastnn.load(path, backend="reference")
    X = model.encode(tabular.read_csv(iris_csv))
    np.testing.assert_array_equal(proba, network.predict(X))          # written exactly
    assert labels.tolist() == SPECIES[network.predict(X).argmax(axis=1)].tolist()
    assert (labels == SPECIES[load_iris().target]).mean() > 0.8


def test_predictions_follow_the_row_order(iris_model, tmp_path):
    path, _ = iris_model
    header, rows = iris_rows()
    order = np.random.default_rng(1).permutation(len(rows))
    shuffled = write_csv(tmp_path / "shuffled.csv", header, [rows[i] for i in order])
    code, out, err = fastnn_cli("predict", path, shuffled, "--backend", "reference")  # stdout
    assert code == 0, err
    got = [line for line in out.splitlines()[1:]]
    model = tabular.load(path, backend="reference")
    everything = model.predict(tabular.read_csv(write_csv(tmp_path / "all.csv", header, rows)))
    assert got == everything[order].tolist()


def test_evaluate_prints_loss_and_accuracy(iris_model, iris_csv):
    path, _ = iris_model
    code, out, err = fastnn_cli("evaluate", path, iris_csv, "--target", "species",
                                "--backend", "reference")
    assert code == 0, err
    model = tabular.load(path, backend="reference")
    scores = model.evaluate(tabular.read_csv(iris_csv))
    assert f"loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.4f}" in out


def test_the_encoding_is_in_the_file_without_pickle(iris_model):
    path, _ = iris_model
    with np.load(path, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
    assert architecture["version"] == io.VERSION == 2
    features = {f["name"]: f.get("categories") for f in
                architecture["tabular"]["encoder"]["features"]}
    assert features["size"] == ["large", "medium", "small"]
    assert features["site"] == ["east", "north", "south"]
    assert features["sepal_length"] is None
    assert architecture["tabular"]["target"] == {"name": "species", "task": "classification",
                                                 "classes": SPECIES.tolist()}
    assert architecture["layers"][0] == {"type": "Standardize", "num_features": 10}


def test_numeric_columns_are_standardised_and_one_hot_columns_kept(iris_model, iris_csv):
    model = tabular.load(iris_model[0], backend="reference")
    scale = model.network.layers[0]
    X = load_iris().data
    np.testing.assert_allclose(scale.mean[:4], X.mean(axis=0), rtol=0.05)   # training rows
    np.testing.assert_array_equal(scale.mean[4:], 0)
    np.testing.assert_array_equal(scale.std[4:], 1)
    encoded = model.encode(tabular.read_csv(iris_csv))
    assert encoded.shape == (150, 10)
    np.testing.assert_array_equal(encoded[:, 4:7].sum(axis=1), 1)    # one size each
    assert model.encoder.input_names()[4:7] == ["size=large", "size=medium", "size=small"]


def test_an_unseen_category_is_zeros_with_one_warning(iris_model, tmp_path):
    path, _ = iris_model
    header, rows = iris_rows()
    rows[3][5] = "west"
    rows[8][5] = "west"
    rows[9][4] = "huge"
    new = write_csv(tmp_path / "new.csv", header, rows)
    code, out, err = fastnn_cli("predict", path, new, "--backend", "reference")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "column 'size': 1 row(s), the first 'huge' at row 10 (line 11" in warnings[0]
    assert "column 'site': 2 row(s), the first 'west' at row 4 (line 5" in warnings[0]
    model = tabular.load(path, backend="reference")
    with pytest.warns(UnseenCategoryWarning):
        encoded = model.encode(tabular.read_csv(new))
    np.testing.assert_array_equal(encoded[3, 7:10], 0)
    np.testing.assert_array_equal(encoded[9, 4:7], 0)
    assert len(out.splitlines()) == 151


def test_integer_labels_keep_their_values(tmp_path):
    data = write_csv(tmp_path / "iris_int.csv", *iris_rows(labels="ints"))
    code, out, err = fastnn_cli("train", data, "--target", "species", *TRAIN, "--out",
                                tmp_path / "m.fnn")
    assert code == 0, err
    assert "holds 3 distinct integer labels" in out
    model = tabular.load(tmp_path / "m.fnn", backend="reference")
    assert model.target.classes.dtype == np.int64
    preds = model.predict(tabular.read_csv(data))
    assert set(preds.tolist()) <= {0, 1, 2} and preds.dtype == np.int64


def test_training_options_apply_to_a_csv(iris_csv, capsys):
    assert main(["train", str(iris_csv), "--target", "species", *TRAIN, "--epochs", "300",
                 "--early-stopping", "3", "--lr-schedule", "cosine", "--validation-split",
                 "0.3", "--optimizer", "sgd", "--momentum", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "rows: 105 train, 45 held out" in out and "SGD(lr=0.01" in out
    assert "stopped early after epoch" in out and "held-out 45 rows: loss" in out


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    X, y = load_diabetes(return_X_y=True, scaled=False)
    sex = np.where(X[:, 1] == 1, "F", "M")
    header = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "progression"]
    rows = [[num(x[0]), s, *map(num, x[2:]), num(t)] for x, s, t in zip(X, sex, y)]
    return write_csv(tmp_path_factory.mktemp("diabetes") / "diabetes.csv", header, rows)


def test_regression_end_to_end_in_the_target_units(diabetes_csv, tmp_path, capsys):
    path = tmp_path / "reg.fnn"
    assert main(["train", str(diabetes_csv), "--target", "progression", *TRAIN, "--epochs",
                 "60", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert "task: regression (auto: the target 'progression' holds 214 distinct numbers" in out
    r2 = float(out.split("R² ")[1].split()[0])
    assert r2 > 0.2                                  # on the held-out rows
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(path), str(diabetes_csv), "--out", str(preds), "--backend",
                 "reference"]) == 0
    with open(preds, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["progression"] and len(rows) == 443
    values = np.array([float(r[0]) for r in rows[1:]], np.float32)
    model = tabular.load(path, backend="reference")
    X = model.encode(tabular.read_csv(diabetes_csv))
    np.testing.assert_array_equal(values, fastnn.load(path, backend="reference").predict(X)[:, 0])
    assert 100 < values.mean() < 200                 # in the target's units (mean 152)
    assert main(["evaluate", str(path), str(diabetes_csv), "--target", "progression",
                 "--backend", "reference"]) == 0
    scores = model.evaluate(tabular.read_csv(diabetes_csv))
    assert f"loss {scores['loss']:.4f}, R² {scores['r2']:.4f}" in capsys.readouterr().out
    assert scores["r2"] > 0.3
    assert main(["predict", str(path), str(diabetes_csv), "--proba", "--backend",
                 "reference"]) == 2
    assert "--proba applies to classification models" in capsys.readouterr().err


@pytest.mark.parametrize("cells, task, expected", [
    (["1", "2", "3", "1"] * 5, "auto", "classification"),
    (["1.5", "2", "3", "1"] * 5, "auto", "regression"),
    ([str(i) for i in range(21)], "auto", "regression"),            # too many integers
    (["a", "b", "2.5", "a"] * 5, "auto", "classification"),
    (["1", "2", "3", "1"] * 5, "regression", "regression"),
    (["1.5", "2", "3", "1"] * 5, "classification", "classification"),
])
def test_task_detection(cells, task, expected, tmp_path):
    from fastnn.encoding import Target
    rows = [[str(i), c] for i, c in enumerate(cells)]
    table = tabular.read_csv(write_csv(tmp_path / "t.csv", ["x", "y"], rows))
    target, why = Target.fit(table, "y", task)
    assert target.task == expected and why.startswith(f"task: {expected}")


# -- bad input: the column and row named, nothing written -----------------------------------
def with_cell(rows, row, column, value):
    rows = [list(r) for r in rows]
    rows[row][column] = value
    return rows


BAD_TRAIN = [
    ("missing target", lambda h, r: (h, r), ["--target", "colour"],
     "the target column 'colour' is not in"),
    ("missing value", lambda h, r: (h, with_cell(r, 6, 1, "")), [],
     "missing values in {data}: column 'sepal_width' has 1 (the first at row 7 (line 8 of "
     "{data}): ''). fastnn does not impute: fill them in"),
    ("NA in a text column", lambda h, r: (h, with_cell(with_cell(r, 2, 4, "NA"), 9, 4, "NA")),
     [], "column 'size' has 2 (the first at row 3 (line 4"),
    ("missing label", lambda h, r: (h, with_cell(r, 11, 6, "")), [],
     "column 'species' has 1 (the first at row 12 (line 13"),
    ("declared numeric", lambda h, r: (h, r), ["--numeric", "site"],
     "column 'site' is declared numeric, but row 1 (line 2 of {data}) holds"),
    ("infinite number", lambda h, r: (h, with_cell(r, 4, 0, "inf")), [],
     "row 5 (line 6 of {data}) holds 'inf', which is not a finite number"),
    ("ragged row", lambda h, r: (h, r[:5] + [r[5][:-1]] + r[6:]), [],
     "row 6 (line 7 of {data}) has 6 fields but the header has 7"),
    ("header only", lambda h, r: (h, []), [], "{data} has a header but no data rows"),
    ("unknown column option", lambda h, r: (h, r), ["--ignore", "colour"],
     "ignore names column 'colour', which {data} does not have"),
]


@pytest.mark.parametrize("name, change, extra, message", BAD_TRAIN,
                         ids=[case[0] for case in BAD_TRAIN])
def test_bad_training_data_is_refused_naming_column_and_row(name, change, extra, message,
                                                            tmp_path, capsys):
    data = write_csv(tmp_path / "bad.csv", *change(*iris_rows()))
    out = tmp_path / "model.fnn"
    target = [] if "--target" in extra else ["--target", "species"]
    assert main(["train", str(data), *target, *extra, *TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.format(data=data) in err
    assert not out.exists()


def test_an_empty_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["train", str(empty), "--target", "y", "--out", str(tmp_path / "m.fnn")]) == 2
    assert f"{empty} is empty: a CSV file needs a header row" in capsys.readouterr().err
    assert not (tmp_path / "m.fnn").exists()


BAD_PREDICT = [
    ("a column missing", lambda h, r: ([c for c in h if c != "site"],
                                       [x[:5] + x[6:] for x in r]),
     "the columns of {data} differ from the training columns: it lacks 'site'"),
    ("a column too many", lambda h, r: (h + ["extra"], [x + ["1"] for x in r]),
     "it has 'extra', unknown to the model"),
    ("text in a numeric column", lambda h, r: (h, with_cell(r, 20, 2, "long")),
     "column 'petal_length' is numeric in the model, but row 21 (line 22 of {data}) holds "
     "'long'"),
    ("a missing value", lambda h, r: (h, with_cell(r, 30, 3, "null")),
     "column 'petal_width' has 1 (the first at row 31 (line 32 of {data}): 'null')"),
]


@pytest.mark.parametrize("name, change, message", BAD_PREDICT,
                         ids=[case[0] for case in BAD_PREDICT])
def test_bad_prediction_data_is_refused(name, change, message, iris_model, tmp_path, capsys):
    data = write_csv(tmp_path / "bad.csv", *change(*iris_rows()))
    out = tmp_path / "preds.csv"
    assert main(["predict", str(iris_model[0]), str(data), "--out", str(out), "--backend",
                 "reference"]) == 2
    assert message.format(data=data) in capsys.readouterr().err
    assert not out.exists()


def test_the_target_column_may_stay_in_the_prediction_file(iris_model, iris_csv, capsys):
    assert main(["predict", str(iris_model[0]), str(iris_csv), "--backend", "reference"]) == 0
    header, rows = iris_rows()
    no_target = write_csv(iris_csv.parent / "no_target.csv", header[:-1],
                          [r[:-1] for r in rows])
    assert main(["predict", str(iris_model[0]), str(no_target), "--backend", "reference"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:151] == out[151:]


def test_evaluate_refuses_an_unknown_label(iris_model, tmp_path, capsys):
    header, rows = iris_rows()
    data = write_csv(tmp_path / "new_label.csv", header, with_cell(rows, 40, 6, "daisy"))
    assert main(["evaluate", str(iris_model[0]), str(data), "--target", "species",
                 "--backend", "reference"]) == 2
    assert ("the target column 'species' holds the label 'daisy' at row 41 (line 42 of "
            f"{data}), which the model was not trained on") in capsys.readouterr().err


def test_csv_commands_refuse_a_model_not_trained_from_a_table(iris_csv, tmp_path, capsys):
    plain = tmp_path / "plain.fnn"
    fastnn.Sequential([fastnn.Dense(6, 3)], backend="reference").save(plain)
    assert main(["predict", str(plain), str(iris_csv), "--backend", "reference"]) == 2
    assert "was not trained from a table" in capsys.readouterr().err


def test_csv_options_need_a_csv_file(capsys):
    assert main(["train", "--target", "species", "--epochs", "1"]) == 2
    assert "--target applies to training on a CSV file" in capsys.readouterr().err


# -- the model file's version ----------------------------------------------------------------
def rewrite_version(path, out, version, drop_tabular=False):
    with zipfile.ZipFile(path) as src:
        parts = {name: src.read(name) for name in src.namelist()}
    with np.load(path, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        arrays = {k: archive[k] for k in ("params", "state")}
    architecture["version"] = version
    if drop_tabular:
        del architecture["tabular"]
    assert "architecture.npy" in parts
    with open(out, "wb") as fh:
        np.savez(fh, architecture=np.array(json.dumps(architecture)), **arrays)


def test_a_newer_file_names_both_versions_and_older_files_still_load(iris_model, tmp_path):
    newer = tmp_path / "newer.fnn"
    rewrite_version(iris_model[0], newer, 3)
    with pytest.raises(ValueError, match=r"has format version 3, written by a newer fastnn; "
                                         r"this fastnn \(0\.1\.0\) reads format versions 1 to 2"):
        fastnn.load(newer)
    old = tmp_path / "old.fnn"
    rewrite_version(iris_model[0], old, 1, drop_tabular=True)
    loaded = fastnn.load(old, backend="reference")
    np.testing.assert_array_equal(loaded.parameters(),
                                  fastnn.load(iris_model[0], backend="reference").parameters())
    for bad in (0, "2", True):
        rewrite_version(iris_model[0], tmp_path / "bad.fnn", bad)
        with pytest.raises(ValueError, match="malformed format version"):
            fastnn.load(tmp_path / "bad.fnn")


# -- ONNX export of a CSV model ----------------------------------------------------------------
def onnx_feeds(model, table):
    """One input per feature column: numbers as float32 (rows, 1), text as strings."""
    return {f.name: (table.numbers(f.name, "").astype(np.float32) if f.categories is None
                     else table.data[f.name]).reshape(-1, 1)
            for f in model.encoder.features}


@pytest.mark.parametrize("opset", [17, 19])
def test_fastnn_export_of_a_csv_classifier_matches_predict(opset, iris_model, tmp_path):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "iris.onnx"
    assert main(["export", str(iris_model[0]), str(path), "--opset", str(opset)]) == 0
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    op_types = {node.op_type for node in graph.graph.node}
    assert ("OneHotEncoder" in op_types) == (opset < 19)
    if opset >= 19:                                   # the categories are an initializer
        strings = [list(t.string_data) for t in graph.graph.initializer if t.data_type == 8]
        assert [b"east", b"north", b"south"] in strings
    header, rows = iris_rows()
    rows[3][5] = "west"                               # unseen: zeros in both
    table = tabular.read_csv(write_csv(tmp_path / "new.csv", header, rows))
    model = tabular.load(iris_model[0], backend="reference")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = session.run(["label", "probabilities"], onnx_feeds(model, table))
    with pytest.warns(UnseenCategoryWarning):
        want = model.predict_proba(table)
    np.testing.assert_allclose(proba, want, rtol=1e-5, atol=1e-6)
    assert label.tolist() == model.target.decode(want.argmax(axis=1)).tolist()
    one = session.run(["label"], {k: v[3:4] for k, v in onnx_feeds(model, table).items()})
    assert one[0].tolist() == [label[3]]


def test_fastnn_export_of_a_csv_regressor_matches_predict(diabetes_csv, tmp_path, capsys):
    import onnxruntime as ort

    path = tmp_path / "reg.fnn"
    assert main(["train", str(diabetes_csv), "--target", "progression", *TRAIN, "--epochs",
                 "5", "--out", str(path)]) == 0
    assert main(["export", str(path), str(tmp_path / "reg.onnx")]) == 0
    assert "outputs 'prediction'" in capsys.readouterr().out
    model = tabular.load(path, backend="reference")
    table = tabular.read_csv(diabetes_csv)
    session = ort.InferenceSession(str(tmp_path / "reg.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, onnx_feeds(model, table))[0]
    want = model.predict(table)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_dropout_and_class_weights_apply_to_a_csv(iris_csv, tmp_path, capsys):
    path = tmp_path / "dropout.fnn"
    assert main(["train", str(iris_csv), "--target", "species", *TRAIN, "--epochs", "20",
                 "--dropout", "0.2", "--class-weight", "balanced", "--out", str(path)]) == 0
    layers = fastnn.load(path).layers
    assert [type(l).__name__ for l in layers].count("Dropout") == 1
    assert "held-out" in capsys.readouterr().out
