"""save/load: exact round trips, clear errors for damaged files, pickles refused."""
import io
import zipfile

import numpy as np
import pytest

import fastnn


@pytest.fixture
def trained(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)
    model = fastnn.Sequential([
        fastnn.Dense(5, 8, "relu", init="he_uniform"), fastnn.BatchNorm(8),
        fastnn.Residual([fastnn.Dense(8, 8, "tanh"), fastnn.Dense(8, 8, "leaky_relu")]),
        fastnn.Dense(8, 3, "softmax")], backend="reference", seed=7, dtype="float64")
    model.fit(X, y, loss="cross_entropy", optimizer=fastnn.Adam(1e-2), epochs=3, verbose=0)
    path = tmp_path / "model.fnn"
    model.save(path)
    return model, X, path


def test_round_trip_is_exact(trained):
    model, X, path = trained
    loaded = fastnn.load(path, backend="reference")
    assert loaded.get_config() == model.get_config()
    assert [repr(l) for l in loaded.layers] == [repr(l) for l in model.layers]
    np.testing.assert_array_equal(loaded.parameters(), model.parameters())
    np.testing.assert_array_equal(loaded.layers[1].running_var, model.layers[1].running_var)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.dtype == np.float64
    assert path.exists() and not path.with_suffix(".fnn.npz").exists()


def test_truncated_file_is_a_clear_error(trained, tmp_path):
    _, _, path = trained
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.fnn"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid fastnn model file"):
            fastnn.load(bad)


def test_corrupted_bytes_are_a_clear_error(trained, tmp_path):
    _, _, path = trained
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64
    bad = tmp_path / "corrupt.fnn"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a valid fastnn model file"):
        fastnn.load(bad)


def test_other_files_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a valid fastnn model file"):
        fastnn.load(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, params=np.zeros(3), state=np.zeros(0), architecture=np.array("{}"))
    with pytest.raises(ValueError, match="not a fastnn model file"):
        fastnn.load(plain)
    with pytest.raises(FileNotFoundError):
        fastnn.load(tmp_path / "missing.fnn")


class Boom:
    def __reduce__(self):
        return (pytest.fail, ("the pickle was executed",))


def test_a_pickled_object_is_refused_never_unpickled(trained, tmp_path):
    _, _, path = trained
    evil = tmp_path / "evil.fnn"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            if name != "params.npy":
                dst.writestr(name, src.read(name))
        buf = io.BytesIO()
        np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
        dst.writestr("params.npy", buf.getvalue())
    with pytest.raises(ValueError, match="pickled object"):
        fastnn.load(evil)


def test_mismatched_arrays_are_refused(trained, tmp_path):
    _, _, path = trained
    with np.load(path) as archive:
        parts = dict(archive)
    parts["params"] = parts["params"][:-1]
    bad = tmp_path / "short.fnn"
    with open(bad, "wb") as fh:
        np.savez(fh, **parts)
    with pytest.raises(ValueError, match="params has shape"):
        fastnn.load(bad)
