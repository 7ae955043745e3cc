"""Sensitivity algorithms: how gradients flow back through a solve (see README.md here)."""

from .adjoint import AbstractAdjoint as AbstractAdjoint
from .auto import AutoAdjoint as AutoAdjoint
from .backsolve import BacksolveAdjoint as BacksolveAdjoint
from .base import AbstractSensitivityAlgorithm as AbstractSensitivityAlgorithm
from .direct import DirectAdjoint as DirectAdjoint
from .gauss import GaussAdjoint as GaussAdjoint
from .interpolating import InterpolatingAdjoint as InterpolatingAdjoint
from .quadrature import QuadratureAdjoint as QuadratureAdjoint
from .reversible import ReversibleAdjoint as ReversibleAdjoint
