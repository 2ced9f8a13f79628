"""Layers. Each layer keeps forward and backward adjacent and calls kernels through the registry."""
from .activation import ELU, LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Tanh
from .conv import Conv2d
from .dropconnect import DropConnectLinear
from .dropout import Dropout
from .linear import Linear
from .module import Module, Residual, Sequential
from .norm import BatchNorm1d, BatchNorm2d
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .shape import Flatten
from .stochastic_depth import StochasticDepth, linear_decay

__all__ = ["Module", "Sequential", "Residual", "Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU",
           "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh", "Maxout", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
           "Flatten", "DropConnectLinear", "StochasticDepth", "linear_decay"]
