"""Time-stepping methods: tableaus as data, one generic Runge–Kutta stepper."""

from .auto_switch import AutoSwitch as AutoSwitch
from .base import AbstractSolver as AbstractSolver
from .explicit import BS3 as BS3
from .explicit import DP5 as DP5
from .explicit import DP8 as DP8
from .explicit import RK4 as RK4
from .explicit import Euler as Euler
from .explicit import Heun as Heun
from .explicit import Midpoint as Midpoint
from .explicit import Tsit5 as Tsit5
from .implicit import AbstractImplicitSolver as AbstractImplicitSolver
from .implicit import KenCarp4 as KenCarp4
from .implicit import Kvaerno3 as Kvaerno3
from .implicit import Kvaerno5 as Kvaerno5
from .implicit import Rodas5P as Rodas5P
from .implicit import Rosenbrock23 as Rosenbrock23
from .reversible import AbstractReversibleSolver as AbstractReversibleSolver
from .reversible import AsyncLeapfrog as AsyncLeapfrog
from .reversible import Reversible as Reversible
from .reversible import ReversibleHeun as ReversibleHeun
from .runge_kutta import AbstractExplicitRK as AbstractExplicitRK
from .tableau import ButcherTableau as ButcherTableau
