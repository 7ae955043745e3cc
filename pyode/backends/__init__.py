"""Engines other than the native torch one. Only `pyode.backends.julia` exists so far."""
