"""Sensitivity algorithms: how gradients flow back through a solve (see README.md here)."""

from .base import AbstractSensitivityAlgorithm as AbstractSensitivityAlgorithm
from .direct import DirectAdjoint as DirectAdjoint
