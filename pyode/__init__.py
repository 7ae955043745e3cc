"""pyode: fast training of neural differential equations in PyTorch."""

# The Julia engine's juliacall must be imported before torch (see `backends/julia/_runtime.py`). With
# PYODE_JULIA=1 it is, here; otherwise `import pyode` never starts Julia.
from .backends.julia import _runtime as _julia_runtime

if _julia_runtime.wanted_at_import():
    _julia_runtime.import_at_startup()

from . import brownian as brownian
from . import cde as cde
from . import julia as julia
from . import nn as nn
from . import terms as terms
from .brownian import BrownianInterval as BrownianInterval
from .brownian import VirtualBrownianTree as VirtualBrownianTree
from .compat import cdeint as cdeint
from .compat import odeint as odeint
from .compat import odeint_adjoint as odeint_adjoint
from .compat import odeint_event as odeint_event
from .compat import sdeint as sdeint
from .compat import sdeint_adjoint as sdeint_adjoint
from .integrate import AcceptedStep as AcceptedStep
from .integrate import Event as Event
from .integrate import Observer as Observer
from .norms import make_seminorm as make_seminorm
from .norms import max_norm as max_norm
from .norms import mixed_norm as mixed_norm
from .norms import rms_norm as rms_norm
from .problem import CDEProblem as CDEProblem
from .problem import ODEProblem as ODEProblem
from .problem import ReturnCode as ReturnCode
from .problem import SDEProblem as SDEProblem
from .problem import Solution as Solution
from .problem import SolveError as SolveError
from .problem import SplitODEProblem as SplitODEProblem
from .problem import Stats as Stats
from .regularizers import LocalRegularization as LocalRegularization
from .regularizers import Regularization as Regularization
from .sensitivity import AutoAdjoint as AutoAdjoint
from .sensitivity import BacksolveAdjoint as BacksolveAdjoint
from .sensitivity import DirectAdjoint as DirectAdjoint
from .sensitivity import GaussAdjoint as GaussAdjoint
from .sensitivity import InterpolatingAdjoint as InterpolatingAdjoint
from .sensitivity import QuadratureAdjoint as QuadratureAdjoint
from .sensitivity import ReversibleAdjoint as ReversibleAdjoint
from .solve import solve as solve
from .solvers import BS3 as BS3
from .solvers import DP5 as DP5
from .solvers import DP8 as DP8
from .solvers import RK4 as RK4
from .solvers import SRA1 as SRA1
from .solvers import AbstractExplicitRK as AbstractExplicitRK
from .solvers import AbstractImplicitSolver as AbstractImplicitSolver
from .solvers import AbstractReversibleSolver as AbstractReversibleSolver
from .solvers import AbstractSDESolver as AbstractSDESolver
from .solvers import AbstractSolver as AbstractSolver
from .solvers import AsyncLeapfrog as AsyncLeapfrog
from .solvers import AutoSwitch as AutoSwitch
from .solvers import ButcherTableau as ButcherTableau
from .solvers import Euler as Euler
from .solvers import EulerHeun as EulerHeun
from .solvers import EulerMaruyama as EulerMaruyama
from .solvers import Heun as Heun
from .solvers import KenCarp4 as KenCarp4
from .solvers import Kvaerno3 as Kvaerno3
from .solvers import Kvaerno5 as Kvaerno5
from .solvers import Midpoint as Midpoint
from .solvers import Milstein as Milstein
from .solvers import Reversible as Reversible
from .solvers import ReversibleHeun as ReversibleHeun
from .solvers import Rodas5P as Rodas5P
from .solvers import Rosenbrock23 as Rosenbrock23
from .solvers import ShARK as ShARK
from .solvers import Tsit5 as Tsit5
from .step_control import AbstractController as AbstractController
from .step_control import ConstantStepSize as ConstantStepSize
from .step_control import IController as IController
from .step_control import PIController as PIController
from .step_control import PIDController as PIDController

__version__ = "0.1.0"
