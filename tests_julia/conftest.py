"""Decides, before any test module imports torch, whether Julia can run here (julia_status)."""

from . import julia_status  # noqa: F401
