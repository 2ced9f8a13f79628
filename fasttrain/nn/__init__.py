"""Layers. Each layer keeps forward and backward adjacent and calls kernels through the registry."""
from .module import Module, Residual, Sequential
