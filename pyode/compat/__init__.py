"""Other libraries' signatures on pyode's engine: torchdiffeq's `odeint`, `odeint_adjoint` and
`odeint_event` (see `torchdiffeq.py`); torchcde's `cdeint`, coefficients and paths (`torchcde.py`);
torchsde's `sdeint` and `sdeint_adjoint` (`torchsde.py`)."""

from ._options import _ADAPTIVE_OPTIONS as _ADAPTIVE_OPTIONS
from ._options import _FIXED_OPTIONS as _FIXED_OPTIONS
from ._options import FIXED_GRID as FIXED_GRID
from ._options import METHODS as METHODS
from ._options import SCIPY_METHOD as SCIPY_METHOD
from .torchcde import cdeint as cdeint
from .torchdiffeq import odeint as odeint
from .torchdiffeq import odeint_adjoint as odeint_adjoint
from .torchdiffeq import odeint_event as odeint_event
from .torchsde import sdeint as sdeint
from .torchsde import sdeint_adjoint as sdeint_adjoint
