"""The integration loop and what plugs into it; imports nothing from `sensitivity/`,
`backends/` or `solve.py`."""

from .events import Event as Event
from .loop import StepHook as StepHook
from .loop import integrate as integrate
from .options import SolveOptions as SolveOptions
from .options import make_options as make_options
from .record import AcceptedStep as AcceptedStep
from .record import Observer as Observer
from .state import StateLayout as StateLayout
from .state import flow_shift as flow_shift
