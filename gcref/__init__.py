"""gcref: reference implementations of the geometric complexity of neural networks.

``import gcref`` imports NumPy and nothing heavier; each framework loads when its backend
is first asked for.
"""

from gcref.activations import (
    Activation,
    activation_names,
    get_activation,
    leaky_relu,
    register_activation,
)
from gcref.backends import (
    BackendNotAvailableError,
    available_backends,
    backend_names,
    get_backend,
)
from gcref.losses import get_loss, loss_names
from gcref.mlp import MLP, flatten_params, unflatten_params
from gcref.primitives import (
    GradNorms,
    forward,
    hidden_jacobians,
    input_jacobian,
    input_vjp,
    loss_grad,
    loss_grad_sq_norms,
    loss_hvp,
    loss_sensitivities,
    mean_loss,
    param_grad_sq_norms,
    param_jacobian,
    per_example_loss,
    predict,
    residuals,
    sensitivities,
)
from gcref.tolerances import tolerance

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "BackendNotAvailableError",
    "GradNorms",
    "MLP",
    "activation_names",
    "available_backends",
    "backend_names",
    "flatten_params",
    "forward",
    "get_activation",
    "get_backend",
    "get_loss",
    "hidden_jacobians",
    "input_jacobian",
    "input_vjp",
    "leaky_relu",
    "loss_grad",
    "loss_grad_sq_norms",
    "loss_hvp",
    "loss_names",
    "loss_sensitivities",
    "mean_loss",
    "param_grad_sq_norms",
    "param_jacobian",
    "per_example_loss",
    "predict",
    "register_activation",
    "residuals",
    "sensitivities",
    "tolerance",
    "unflatten_params",
]
