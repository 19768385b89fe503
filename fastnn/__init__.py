"""fastnn: dense neural networks whose compute lives in compiled kernels.

>>> import fastnn
>>> model = fastnn.Sequential([fastnn.Dense(64, 128, "relu"), fastnn.Dense(128, 10)])
>>> history = model.fit(X, y, loss="cross_entropy", optimizer=fastnn.Adam(1e-3), epochs=20)

The model API lives here; the kernels that do the arithmetic live in ``fastnn.kernels``, one
module per backend (see :func:`available_backends`).
"""
__version__ = "0.1.0"

# kernels/ is a top-level folder of the repository, installed as fastnn.kernels. Python run in a
# clone finds this source folder first, shadowing the installed package, and kernels/ is not
# inside it; extending the package path to every fastnn folder on sys.path lets fastnn.kernels
# (compiled extensions included) come from the installed copy. (Editable installs map
# fastnn.kernels to kernels/ themselves.) Installed, this finds only this folder.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from . import callbacks, diagnostics, distributed, schedules
from .backends import available_backends, set_backend
from .io import load
from .layers import BatchNorm, Dense, Dropout, Residual
from .model import History, Sequential
from .optimizers import SGD, Adam, AdamW, RMSprop
from .plots import plot_history
from .preprocessing import Standardize
from .threads import get_num_threads, set_num_threads

__all__ = ["Adam", "AdamW", "BatchNorm", "Dense", "Dropout", "History", "Residual", "SGD",
           "Sequential", "Standardize", "available_backends", "callbacks", "diagnostics",
           "distributed", "get_num_threads", "load", "plot_history", "RMSprop", "schedules",
           "set_backend", "set_num_threads", "__version__"]
