"""From table cells to the network's inputs and targets, and back to labels.

:class:`TableEncoder` turns feature columns into one float matrix: a numeric column is one
input (standardised later, by the network's :class:`~fastnn.Standardize` layer), a
categorical column one input per category seen in training (one-hot; a category not seen
then is all zeros, with a warning). :class:`Target` turns the target column into class
indices or numbers and predictions back into the original labels. Both are described by
plain JSON (``to_config``) saved in the model file, so predict encodes exactly as training did.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .csvfile import Table, parse_numbers

#: auto task: an integer-valued target with at most this many distinct values is a class label
MAX_AUTO_CLASSES = 20
#: a categorical column with more categories than this is refused (an identifier column?)
MAX_CATEGORIES = 1000
_NO_IMPUTE = ("fastnn does not impute: fill them in (a number, or a category such as "
              "'unknown') or drop those rows")


class UnseenCategoryWarning(UserWarning):
    """A categorical cell held a category not seen in training; it was encoded as zeros."""


@dataclass
class Feature:
    """One feature column: numeric (``categories`` None) or categorical (one-hot over
    ``categories``, sorted, as the training data spelled them)."""

    name: str
    categories: list[str] | None = None

    @property
    def width(self) -> int:
        return 1 if self.categories is None else len(self.categories)


class TableEncoder:
    """Feature columns -> the network's input matrix (rows, :attr:`width`), in column order.

    ``known`` is every column the model's files may hold (features, target, ignored columns):
    a table with another column, or lacking a feature, is refused.
    """

    def __init__(self, features: list[Feature], known: list[str]):
        self.features = features
        self.known = known

    @classmethod
    def fit(cls, table: Table, target: str, ignore=(), numeric=(),
            categorical=(), max_categories: int = MAX_CATEGORIES) -> TableEncoder:
        """Choose each feature column's encoding from the training table: numeric when every
        cell is a number (or when named in ``numeric``: then a cell that is not is an error),
        categorical otherwise (or when named in ``categorical``)."""
        for option, names in (("ignore", ignore), ("numeric", numeric),
                              ("categorical", categorical)):
            for name in names:
                if name not in table.data:
                    raise ValueError(f"{option} names column {name!r}, which {table.source} "
                                     f"does not have (its columns: {_names(table.columns)})")
        both = set(numeric) & set(categorical)
        if both:
            raise ValueError(f"column {sorted(both)[0]!r} is declared both numeric and "
                             f"categorical")
        names = [c for c in table.columns if c != target and c not in ignore]
        if not names:
            raise ValueError(f"{table.source} has no feature column besides the target "
                             f"{target!r}")
        check_missing(table, names)
        features = []
        for name in names:
            if name in numeric:
                table.numbers(name, "is declared numeric")
                features.append(Feature(name))
            elif name not in categorical and parse_numbers(table.data[name]) is not None:
                table.numbers(name, "holds numbers")              # refuses inf
                features.append(Feature(name))
            else:
                categories = sorted(set(table.data[name]))
                if len(categories) > max_categories:
                    raise ValueError(
                        f"column {name!r} holds {len(categories)} distinct text values; "
                        f"one-hot encoding it would add that many inputs (an identifier?). "
                        f"Leave it out with --ignore {name}, or declare it --numeric")
                features.append(Feature(name, categories))
        return cls(features, list(table.columns))

    @property
    def width(self) -> int:
        """Number of encoded inputs."""
        return sum(f.width for f in self.features)

    def numeric_inputs(self) -> np.ndarray:
        """Boolean mask over the encoded inputs: True where the input is a numeric column."""
        return np.concatenate([np.full(f.width, f.categories is None) for f in self.features])

    def input_names(self) -> list[str]:
        """The encoded inputs' names: a numeric column's own, 'column=category' for one-hot."""
        return [f.name if f.categories is None else f"{f.name}={c}"
                for f in self.features for c in (f.categories or [None])]

    def check_columns(self, table: Table, also=()) -> None:
        """ValueError unless the table has every feature column and no column the model
        does not know (``also``: further columns allowed, such as an evaluation target)."""
        missing = [f.name for f in self.features if f.name not in table.data]
        unknown = [c for c in table.columns if c not in self.known and c not in also]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"it lacks {_names(missing)}")
            if unknown:
                parts.append(f"it has {_names(unknown)}, unknown to the model")
            raise ValueError(f"the columns of {table.source} differ from the training "
                             f"columns: {'; '.join(parts)} (the model's feature columns: "
                             f"{_names([f.name for f in self.features])})")

    def transform(self, table: Table, dtype=np.float64, also=()) -> np.ndarray:
        """The table's feature columns encoded as (rows, width). One
        :class:`UnseenCategoryWarning` for all the categories not seen in training."""
        self.check_columns(table, also)
        check_missing(table, [f.name for f in self.features])
        out = np.zeros((len(table), self.width), dtype)
        unseen, col = [], 0
        for f in self.features:
            cells = table.data[f.name]
            if f.categories is None:
                out[:, col] = table.numbers(f.name, "is numeric in the model")
            else:
                index = {c: i for i, c in enumerate(f.categories)}
                codes = np.fromiter((index.get(c, -1) for c in cells), np.int64, len(cells))
                rows = np.flatnonzero(codes >= 0)
                out[rows, col + codes[rows]] = 1
                if len(rows) < len(cells):
                    first = int(np.flatnonzero(codes < 0)[0])
                    unseen.append(f"column {f.name!r}: {len(cells) - len(rows)} row(s), the "
                                  f"first {cells[first]!r} at {table.where(first)}")
            col += f.width
        if unseen:
            warnings.warn(f"categories not seen in training, encoded as all zeros: "
                          f"{'; '.join(unseen)}", UnseenCategoryWarning, stacklevel=2)
        return out

    def to_config(self) -> dict:
        return {"features": [{"name": f.name} if f.categories is None else
                             {"name": f.name, "categories": f.categories}
                             for f in self.features],
                "columns": self.known}

    @classmethod
    def from_config(cls, config: dict) -> TableEncoder:
        return cls([Feature(f["name"], f.get("categories")) for f in config["features"]],
                   list(config["columns"]))


class Target:
    """The target column: ``task`` "classification" (``classes``: the sorted original labels,
    int64 when every label is an integer, else str) or "regression" (numbers)."""

    def __init__(self, name: str, task: str, classes: np.ndarray | None = None):
        self.name, self.task, self.classes = name, task, classes

    @classmethod
    def fit(cls, table: Table, name: str, task: str = "auto") -> tuple[Target, str]:
        """(target, why): the target read from the training table and a sentence saying which
        task it is and, for "auto", why (see :data:`MAX_AUTO_CLASSES`)."""
        if name not in table.data:
            raise ValueError(f"the target column {name!r} is not in {table.source} (its "
                             f"columns: {_names(table.columns)})")
        if task not in ("auto", "classification", "regression"):
            raise ValueError(f"unknown task {task!r}; choose 'auto', 'classification' or "
                             f"'regression'")
        check_missing(table, [name])
        numbers = parse_numbers(table.data[name])
        integral = numbers is not None and bool(np.all(np.isfinite(numbers))) and bool(
            np.all(numbers == np.round(numbers))) and bool(np.all(np.abs(numbers) < 2 ** 53))
        if task == "regression":
            table.numbers(name, "is the target of a regression")
            return cls(name, task), f"task: regression on {name!r}"
        classes = np.unique(numbers.astype(np.int64)) if integral else \
            np.unique(table.data[name].astype(str))
        if task == "auto":
            if numbers is not None and not (integral and len(classes) <= MAX_AUTO_CLASSES):
                table.numbers(name, "is the target of a regression")
                n = len(np.unique(numbers))
                return cls(name, "regression"), (
                    f"task: regression (auto: the target {name!r} holds {n} distinct "
                    f"numbers; classification is chosen for integers with at most "
                    f"{MAX_AUTO_CLASSES} values or for text)")
            kind = "integer" if integral else "text"
            why = f" (auto: the target {name!r} holds {len(classes)} distinct {kind} labels)"
        else:
            why = f" on {name!r}"
        if len(classes) < 2:
            raise ValueError(f"the target column {name!r} holds a single label "
                             f"({classes.tolist()[0]!r}): classification needs at least two")
        return cls(name, "classification", classes), \
            f"task: classification into {len(classes)} classes{why}"

    @property
    def n_outputs(self) -> int:
        return 1 if self.classes is None else len(self.classes)

    def encode(self, table: Table, column: str | None = None) -> np.ndarray:
        """The target column (``column``, default the training one) as class indices (n,)
        or numbers (n, 1); ValueError for a label the model does not know."""
        column = self.name if column is None else column
        if column not in table.data:
            raise ValueError(f"the target column {column!r} is not in {table.source} (its "
                             f"columns: {_names(table.columns)})")
        check_missing(table, [column])
        if self.classes is None:
            return table.numbers(column, "is the target of a regression").reshape(-1, 1)
        if self.classes.dtype.kind == "i":
            values = table.numbers(column, "holds the model's integer class labels")
            integral = values == np.round(values)
            labels = np.where(integral, values, np.nan)
        else:
            labels = table.data[column].astype(str)
        index = np.searchsorted(self.classes, labels)
        index = np.minimum(index, len(self.classes) - 1)
        known = self.classes[index] == labels
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise ValueError(f"the target column {column!r} holds the label "
                             f"{table.data[column][i]!r} at {table.where(i)}, which the model "
                             f"was not trained on (its classes: {_names(self.classes.tolist())})")
        return index.astype(np.int64)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> the original labels."""
        return self.classes[indices]

    def to_config(self) -> dict:
        config = {"name": self.name, "task": self.task}
        if self.classes is not None:
            config["classes"] = self.classes.tolist()
        return config

    @classmethod
    def from_config(cls, config: dict) -> Target:
        classes = config.get("classes")
        if classes is not None:
            integer = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
            classes = np.array(classes, np.int64 if integer else str)
        return cls(config["name"], config["task"], classes)


def check_missing(table: Table, columns: list[str]) -> None:
    """ValueError naming each column with missing cells, its count and its first row."""
    found = []
    for name in columns:
        mask = table.missing(name)
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            found.append(f"column {name!r} has {int(mask.sum())} (the first at "
                         f"{table.where(first)}: {table.data[name][first]!r})")
    if found:
        raise ValueError(f"missing values in {table.source}: {'; '.join(found)}. {_NO_IMPUTE}")


def _names(names) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
