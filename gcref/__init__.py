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
from gcref.mlp import MLP
from gcref.params import flatten_params, unflatten_params
from gcref.results import GradNorms, IGRTerms
from gcref.primitives import (
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

# The measures, written once on the primitives above; none imports a framework.
from gcref.backward_error import BackwardError, gd_backward_error, sgd_backward_error
from gcref.complexity import (
    Complexity,
    ComplexityEstimate,
    dirichlet_energy,
    estimate_geometric_complexity,
    geometric_complexity,
    geometric_complexity_native,
)
from gcref.geometry import (
    ArcLength,
    GraphVolume,
    arc_length,
    graph_volume,
    hull_volume,
    polyline_length,
    sample_in_hull,
)
from gcref.igr import (
    modified_loss_gd,
    modified_loss_gd_grad,
    modified_loss_per_example,
    modified_loss_per_example_grad,
    modified_loss_sgd,
    modified_loss_sgd_grad,
    pressure_transfer,
    residual_factorisation,
)
from gcref.norms import (
    group_norm,
    layer_norms,
    margin,
    margins,
    normalized_params,
    path_norm,
    product_norm,
)
from gcref.optimizers import NMGD, GradientDescent, PathSGD, UnitNormGD, minimize
from gcref.rescaling import balanced_rescaling, random_rescaling, rescale, rescale_node
from gcref.training import (
    GCPenalty,
    IGRPenalty,
    L2Penalty,
    PerExampleIGRPenalty,
    SpectralPenalty,
    TrainingDiverged,
    TrainResult,
    train,
)
from gcref.transfer import TransferTerms, spectral_norms, transfer_ratio, transfer_terms

# Measures on users' own models (torch modules, JAX apply functions): gcref.models.*
from gcref import models, nets  # noqa: E402  (import no framework)

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "activation_names",
    "arc_length",
    "ArcLength",
    "available_backends",
    "backend_names",
    "BackendNotAvailableError",
    "BackwardError",
    "balanced_rescaling",
    "Complexity",
    "ComplexityEstimate",
    "dirichlet_energy",
    "estimate_geometric_complexity",
    "flatten_params",
    "forward",
    "GCPenalty",
    "gd_backward_error",
    "geometric_complexity",
    "geometric_complexity_native",
    "get_activation",
    "get_backend",
    "get_loss",
    "GradientDescent",
    "GradNorms",
    "IGRTerms",
    "graph_volume",
    "GraphVolume",
    "group_norm",
    "hidden_jacobians",
    "hull_volume",
    "IGRPenalty",
    "input_jacobian",
    "input_vjp",
    "L2Penalty",
    "layer_norms",
    "leaky_relu",
    "loss_grad",
    "loss_grad_sq_norms",
    "loss_hvp",
    "loss_names",
    "loss_sensitivities",
    "margin",
    "margins",
    "mean_loss",
    "minimize",
    "MLP",
    "modified_loss_gd",
    "modified_loss_gd_grad",
    "modified_loss_per_example",
    "modified_loss_per_example_grad",
    "modified_loss_sgd",
    "modified_loss_sgd_grad",
    "NMGD",
    "normalized_params",
    "param_grad_sq_norms",
    "param_jacobian",
    "path_norm",
    "PathSGD",
    "per_example_loss",
    "PerExampleIGRPenalty",
    "polyline_length",
    "predict",
    "pressure_transfer",
    "product_norm",
    "random_rescaling",
    "register_activation",
    "rescale",
    "rescale_node",
    "residual_factorisation",
    "residuals",
    "sample_in_hull",
    "sensitivities",
    "sgd_backward_error",
    "spectral_norms",
    "SpectralPenalty",
    "tolerance",
    "train",
    "TrainingDiverged",
    "TrainResult",
    "transfer_ratio",
    "transfer_terms",
    "TransferTerms",
    "unflatten_params",
    "UnitNormGD",
]
