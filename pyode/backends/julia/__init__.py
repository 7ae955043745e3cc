"""The Julia engine: pyode over OrdinaryDiffEq, SciMLSensitivity and Lux through juliacall.

The only part of pyode that imports juliacall (in `_runtime`, lazily). Importing this package
imports neither juliacall nor torch, so `pyode/__init__.py` can start Julia before torch when
PYODE_JULIA=1 asks it to. The solve itself is in `_solve` (imported on first use by
`pyode.solve(..., backend="julia")`), the array exchange in `_marshal`, the checks in `_request`.
"""

from ._runtime import HOW_TO_GET_JULIA as HOW_TO_GET_JULIA
from ._runtime import JuliaImportOrderWarning as JuliaImportOrderWarning
from ._runtime import JuliaLogWarning as JuliaLogWarning
from ._runtime import JuliaUnavailable as JuliaUnavailable
from ._runtime import install as install
from ._runtime import load as load
