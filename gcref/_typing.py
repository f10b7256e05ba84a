"""Type aliases of gcref's public signatures, for annotations only.

The modules import these names under ``typing.TYPE_CHECKING`` (with ``from __future__
import annotations``), so that nothing here runs when gcref is imported. The aliases say
what the numpydoc type lines say; framework arrays are ``Any``, since NumPy, torch and
JAX arrays have no common static type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from gcref.backends._base import Backend
    from gcref.backends.adapter import ModelAdapter
    from gcref.losses import Loss
    from gcref.mlp import MLP

#: A NumPy, torch or JAX array (or one boxed by autograd or traced by JAX).
NativeArray: TypeAlias = Any
#: An MLP's ``(W_i, b_i)`` pairs, one per layer, of NumPy or native arrays.
MLPParams: TypeAlias = Sequence[tuple[Any, Any]]
#: ``X``, ``(X, y)``, or an iterable of batches (see :mod:`gcref.data`).
Data: TypeAlias = Any
#: A backend name (``"numpy"``, ``"autograd"``, ``"jax"``, ``"torch"``) or instance.
BackendLike: TypeAlias = "str | Backend"
#: A loss name (``"squared"``, ``"logistic"``, ``"softmax_cross_entropy"``) or instance.
LossLike: TypeAlias = "str | Loss"
#: A gcref.MLP, a torch.nn.Module, a JAX ``apply(params, x)`` function or a ModelAdapter.
Model: TypeAlias = "MLP | ModelAdapter | Any"
#: An MLP's ``(W_i, b_i)`` pairs as NumPy arrays, as the MLP functions return them.
NumpyParams: TypeAlias = "tuple[tuple[NDArray[Any], NDArray[Any]], ...]"
