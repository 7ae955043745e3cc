"""Controls for controlled differential equations: continuous paths through observed data.

`natural_cubic_spline`, `hermite_cubic_backward`, `linear` and `rectilinear` turn observations
(t, x) with x of shape (..., length, channels), NaN for missing values, into a path with
`evaluate(t)`, `derivative(t)` and `knots`; `pyode.CDEProblem(f, X, z0, tspan)` is driven by it.
"""

from .interpolate import hermite_cubic_backward as hermite_cubic_backward
from .interpolate import linear as linear
from .interpolate import natural_cubic_spline as natural_cubic_spline
from .interpolate import observation_counts as observation_counts
from .interpolate import rectilinear as rectilinear
from .interpolate import with_observation_counts as with_observation_counts
from .paths import AbstractPath as AbstractPath
from .paths import CubicPath as CubicPath
from .paths import LinearPath as LinearPath
