"""Networks defined in the project for validation and benchmarks (no torchvision).

``gcref.nets.torch``: a CIFAR ResNet-18 and a small CNN as ``torch.nn.Module``;
``gcref.nets.jax``: an MLP and a small CNN as ``(init, apply)`` pairs. Importing this
package imports no framework; importing a submodule imports its framework.
"""
