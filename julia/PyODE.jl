"""
    PyODE

The Julia side of pyode's Julia engine: a vector field built as a Lux model from pyode's
Python description, solved by OrdinaryDiffEq and differentiated by SciMLSensitivity.

Python (`pyode/backends/julia/`) loads this file into a fresh module with juliacall and calls
`build_model` once per model and `solve_forward` once per solve. Arrays cross the boundary
as flat vectors: θ, u0 and the save times arrive as PythonCall `PyArray`s (views of the
numpy buffers, no copy) and the results go back as Julia arrays that numpy views in place.

Written without a Julia runtime (none can be installed where pyode is developed); the
names used here are checked against an allow-list read from the packages' source
(`tests/julia/test_julia_sources.py`), and `tests_julia/` holds the runtime tests.
"""
module PyODE

using ChainRulesCore: ChainRulesCore
using ComponentArrays: ComponentArray, getaxes, getdata
using Logging: Logging
using Lux: Lux
using OrdinaryDiffEqHighOrderRK: DP8
using OrdinaryDiffEqLowOrderRK: BS3, DP5, Euler, Heun, Midpoint, RK4
using OrdinaryDiffEqTsit5: Tsit5
using Random: Random
using SciMLBase: SciMLBase, ODEFunction, ODEProblem, solve
using SciMLSensitivity: BacksolveAdjoint, GaussAdjoint, InterpolatingAdjoint, ReverseDiffAdjoint, ZygoteVJP
using Zygote: Zygote

# The Python side checks this against pyode.__version__, so a stale copy fails loudly.
const VERSION_TAG = "0.1.0"
version() = VERSION_TAG

# ---------------------------------------------------------------------------------------
# The one table from pyode's names to Julia's algorithms. The Python side keeps the same
# keys (pyode/backends/julia/_request.py); a test compares the two.
# ---------------------------------------------------------------------------------------

# OrdinaryDiffEq 7 no longer exports these from the umbrella package, hence the sublibraries.
# Midpoint and RK4 are adaptive in SciML (`<: OrdinaryDiffEqAdaptiveAlgorithm`,
# OrdinaryDiffEqLowOrderRK src/algorithms.jl:65, :86) but fixed-step in pyode, so Python sends
# `adaptive=false` for them, as for Euler. Heun is adaptive in both, with the same error
# estimate (dt/2·(k2 - k1), fixed_timestep_perform_step.jl:84-96): Python sends pyode's own
# `adaptive` flag, true unless the user asked for fixed steps.
const SOLVERS = Dict{String, Any}(
    "Euler" => Euler,
    "Midpoint" => Midpoint,
    "Heun" => Heun,
    "RK4" => RK4,
    "BS3" => BS3,
    "DP5" => DP5,
    "Tsit5" => Tsit5,
    "DP8" => DP8,
)

# Each entry takes the `checkpointing` flag. BacksolveAdjoint defaults to checkpointing=true
# in SciMLSensitivity; pyode's BacksolveAdjoint is the plain one, so it is switched off.
# InterpolatingAdjoint's checkpointing re-solves each interval between save points forward
# with only reltol and abstol (SciMLSensitivity 7.112.3 src/interpolating_adjoint.jl:89-92,
# 246-251): no `adaptive=false`, and no dt for the first interval. So it is only sent with
# adaptive steps (Python maps it off for fixed steps; `solve_forward` refuses the rest).
# DirectAdjoint (differentiate the solver's own operations) is ReverseDiffAdjoint: CPU only.
const SENSEALGS = Dict{String, Any}(
    "DirectAdjoint" => (checkpointing -> ReverseDiffAdjoint()),
    "BacksolveAdjoint" => (checkpointing -> BacksolveAdjoint(; autojacvec = ZygoteVJP(), checkpointing = false)),
    "InterpolatingAdjoint" => (checkpointing -> InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing)),
    "GaussAdjoint" => (checkpointing -> GaussAdjoint(; autojacvec = ZygoteVJP())),
)

# Where the parameter-adjoint block sits in each reverse state (read from SciMLSensitivity:
# backsolve_adjoint.jl `split_states`, interpolating_adjoint.jl). GaussAdjoint integrates the
# parameter adjoint in a callback, outside the stepped state, so it has nothing to drop.
const SEMINORM_LAYOUTS = Dict{String, Symbol}(
    "BacksolveAdjoint" => :backsolve,
    "InterpolatingAdjoint" => :interpolating,
)

const ACTIVATIONS = Dict{String, Any}(
    "identity" => identity,
    "tanh" => tanh,
    "relu" => Lux.relu,
    "sigmoid" => Lux.sigmoid,
    "softplus" => Lux.softplus,
    "swish" => Lux.swish,
)

function lookup(table::Dict, name::AbstractString, what::AbstractString)
    haskey(table, name) && return table[name]
    known = join(sort!(collect(keys(table))), ", ")
    throw(ArgumentError("PyODE: unknown $what \"$name\"; the Julia engine supports $known"))
end

algorithm(name::AbstractString) = lookup(SOLVERS, name, "solver")()
sensitivity(name::AbstractString, checkpointing::Bool) = lookup(SENSEALGS, name, "sensealg")(checkpointing)

# ---------------------------------------------------------------------------------------
# The model: a Lux Chain of Dense layers with flat parameters
# ---------------------------------------------------------------------------------------

"""
    Model

A Lux model with its (empty) state and the axes that turn a flat parameter vector into
Lux's nested parameters without copying. The flat order is Lux's: per layer the weight
(out × in, column-major), then the bias. pyode's Python description uses the same order.
"""
struct Model{L, S, A}
    lux::L
    st::S
    axes::A
    nin::Int
    nparams::Int
end

"""
    dense(nin, nout, activation, bias) -> Lux.Dense

One layer of the Python description `pyode.julia.Dense(nin, nout, activation, bias)`.
"""
function dense(nin::Integer, nout::Integer, activation::AbstractString, bias::Bool)
    act = lookup(ACTIVATIONS, activation, "activation")
    return Lux.Dense(Int(nin) => Int(nout), act; use_bias = bias)
end

"""
    build_model(nin, layers...) -> Model

A Lux Chain of the given layers. Its parameters are set up only to read their axes: the
values always come from Python, so the two engines evaluate the same function.
"""
function build_model(nin::Integer, layers...)
    isempty(layers) && throw(ArgumentError("PyODE.build_model: needs at least one layer"))
    lux = Lux.Chain(layers...)
    ps, st = Lux.setup(Random.Xoshiro(0), lux)
    flat = ComponentArray(ps)
    return Model(lux, st, getaxes(flat), Int(nin), length(flat))
end

nparams(m::Model) = m.nparams

# Every evaluation of the vector field, forward and backward (the primal calls of the VJPs
# included), is counted here: SciMLSensitivity drops its reverse solve's statistics.
const NFE = Ref(0)
count_evaluation() = (NFE[] += 1; nothing)

struct VectorField{M <: Model}
    model::M
end

# The state travels as a flat vector (ReverseDiffAdjoint requires a vector u0). A torch
# (B, D) batch, flattened in C order, is a column-major (D, B) matrix: Lux's layout.
function (f::VectorField)(u, p, t)
    ChainRulesCore.ignore_derivatives(count_evaluation)
    x = reshape(u, f.model.nin, :)
    y, _ = f.model.lux(x, p, f.model.st)
    return vec(y)
end

# ---------------------------------------------------------------------------------------
# The adjoint seminorm (Kidger, Chen & Lyons 2021) as an `internalnorm`
# ---------------------------------------------------------------------------------------

"""
    SemiNorm(layout, n, np)

An `internalnorm` that leaves the parameter-adjoint block out of the reverse solve's error
norm. It tells the reverse state from the forward one by length: `[λ_u; λ_p; u]` (2n + np)
for BacksolveAdjoint, `[λ_u; λ_p]` (n + np) for InterpolatingAdjoint; anything else, the
forward state included, gets the default RMS norm. OrdinaryDiffEq also calls the norm on
single entries (residual scaling, initial dt), hence the method for numbers.
"""
struct SemiNorm
    layout::Symbol
    n::Int
    np::Int
end

(s::SemiNorm)(u::Number, t) = abs(u)

function (s::SemiNorm)(u::AbstractArray, t)
    L = length(u)
    n, np = s.n, s.np
    if np > 0 && s.layout === :backsolve && L == 2n + np
        return sqrt((sum(abs2, view(u, 1:n)) + sum(abs2, view(u, (n + np + 1):L))) / (2n))
    elseif np > 0 && s.layout === :interpolating && L == n + np
        return sqrt(sum(abs2, view(u, 1:n)) / n)
    end
    return sqrt(sum(abs2, u) / max(L, 1))
end

# ---------------------------------------------------------------------------------------
# Julia's log during a solve: captured, returned to Python, read for failures
# ---------------------------------------------------------------------------------------

"""
    CapturedLog()

A logger that keeps every message of level Warn and above instead of printing it. Python
calls into this module with the GIL released, and then Julia must not touch Python: in
Jupyter, Julia's stderr is a pipe that a PythonCall task copies into Python's sys.stderr
(PythonCall 0.9.34 pysrc/juliacall/ipython.py:70-87), so a printed warning could run Python
code without the GIL. The messages go back to Python, which re-emits them as warnings.
"""
struct CapturedLog <: Logging.AbstractLogger
    messages::Vector{String}
end
CapturedLog() = CapturedLog(String[])

Logging.min_enabled_level(::CapturedLog) = Logging.Warn
Logging.shouldlog(::CapturedLog, level, _module, group, id) = true
Logging.catch_exceptions(::CapturedLog) = true
function Logging.handle_message(log::CapturedLog, level, message, _module, group, id, file, line; kwargs...)
    push!(log.messages, string(message))
    return nothing
end

"Run `f()` with Julia's log captured; return `(f(), messages)`."
function captured(f)
    log = CapturedLog()
    value = Logging.with_logger(f, log)
    return value, log.messages
end

# Every failure `check_error` detects is reported through SciMLLogging as "Verbosity toggle:
# <reason> \n <text>" (DiffEqBase check_error.jl:16-24 and 76-115; SciMLLogging 2.0.3
# src/utils.jl:29-60), at Warn level by default (DiffEqBase verbosity.jl). The reverse solve's
# return code itself is dropped by SciMLSensitivity (sensitivity_interface.jl:487-525,
# gauss_adjoint.jl:847-869), so this log is the only place a failed reverse solve shows.
const FAILURE_TOGGLES = Dict{String, String}(
    "max_iters" => "MaxIters",
    "dt_min_unstable" => "DtLessThanMin",
    "dt_epsilon" => "Unstable",
    "instability" => "Unstable",
    "dt_NaN" => "DtNaN",
    "newton_convergence" => "ConvergenceFailure",
)

"The return code named by the first solver failure in `messages`, or \"Success\"."
function failure_in(messages::Vector{String})
    for message in messages
        m = match(r"^Verbosity toggle: (\w+)", message)
        m === nothing && continue
        code = get(FAILURE_TOGGLES, m.captures[1], nothing)
        code === nothing || return code
    end
    return "Success"
end

# ---------------------------------------------------------------------------------------
# Solve and pull back
# ---------------------------------------------------------------------------------------

function solve_keywords(
        ::Type{T}, tspan, rtol, atol, saveat, dt, adaptive::Bool, dtmin, dtmax, maxiters::Integer, tstops
    ) where {T}
    kw = (; reltol = T(rtol), abstol = T(atol), adaptive, maxiters = Int(maxiters))
    if saveat !== nothing
        # Saved exactly at `saveat`, as in pyode. Explicit because SciMLSensitivity's adjoint
        # methods default save_start and save_end to true (concrete_solve.jl:538).
        s = Vector{Float64}(saveat)
        kw = merge(kw, (; saveat = s, save_start = tspan[1] in s, save_end = tspan[2] in s))
    end
    if dt !== nothing
        kw = merge(kw, (; dt = Float64(dt)))
    end
    if dtmin !== nothing
        kw = merge(kw, (; dtmin = Float64(dtmin)))
    end
    if dtmax !== nothing
        kw = merge(kw, (; dtmax = Float64(dtmax)))
    end
    if tstops !== nothing
        kw = merge(kw, (; tstops = Vector{Float64}(tstops)))
    end
    return kw
end

statistic(stats, name::Symbol) = stats === nothing ? 0 : Int(getfield(stats, name))

# Cotangents come back from Zygote in several shapes; Python wants one flat vector.
flat_tangent(::Nothing, len::Int, ::Type{T}) where {T} = zeros(T, len)
flat_tangent(::ChainRulesCore.AbstractZero, len::Int, ::Type{T}) where {T} = zeros(T, len)
flat_tangent(g::ComponentArray, len::Int, ::Type{T}) where {T} = checked_length(Vector{T}(getdata(g)), len)
flat_tangent(g::AbstractArray, len::Int, ::Type{T}) where {T} = checked_length(Vector{T}(vec(g)), len)
function flat_tangent(g::NamedTuple, len::Int, ::Type{T}) where {T}
    return flat_tangent(hasproperty(g, :data) ? g.data : ComponentArray(g), len, T)
end
function flat_tangent(g, ::Int, ::Type)
    return error("PyODE: a gradient of unexpected type $(typeof(g)); please report it with this message")
end

function checked_length(v::Vector, len::Int)
    length(v) == len || error("PyODE: a gradient of length $(length(v)) where $len was expected")
    return v
end

"""
    Pullback

Zygote's pullback of one successful solve, kept by Python's autograd.Function until
backward, so the forward solve is not repeated. Called with the flat cotangent of the saved
states (C order of Python's (T, n), which is column-major (n, T)); returns
`(∂u0, ∂θ, evaluations of f, return code of the reverse pass, log messages)`. The return
code is "Success" unless a solve inside the pullback (the reverse solve, a checkpoint
re-solve) reported a failure in the log.
"""
struct Pullback{B, T, S}
    back::B
    ysize::Tuple{Int, Int}
    n::Int
    np::Int
end

function (pb::Pullback{B, T, S})(gY::AbstractVector) where {B, T, S}
    before = NFE[]
    # S is the element type of the differentiated output, which is not T when SciMLSensitivity
    # interpolated the save points in the Float64 time type (see `solve_forward`).
    G = reshape(Vector{S}(gY), pb.ysize)
    (gx, gp), messages = captured(() -> pb.back(G))
    return (
        flat_tangent(gx, pb.n, T), flat_tangent(gp, pb.np, T), NFE[] - before, failure_in(messages), messages,
    )
end

"""
    solve_forward(model, θ, u0, t0, t1, saveat; solver, sensealg, kwargs...)

Solve du/dt = model(u; θ) from t0 to t1 and return
`(Y, retcode, nf, naccept, nreject, t, pullback, messages)`: the states at the save times as
an (n, T) matrix of u0's element type, the return code's name ("Success", "MaxIters", ...),
the forward statistics, the times saved, a `Pullback` (`nothing` when `differentiate=false`
or the solve did not succeed) and Julia's log messages (warnings) during the solve.

`saveat === nothing` saves every step. `seminorm=true` drops the parameter adjoint from the
reverse solve's step control (BacksolveAdjoint and InterpolatingAdjoint).
"""
function solve_forward(
        model::Model, θ::AbstractVector, u0::AbstractVector, t0::Real, t1::Real, saveat;
        solver::AbstractString, sensealg::AbstractString, seminorm::Bool = false,
        checkpointing::Bool = false, rtol::Real = 1.0e-6, atol::Real = 1.0e-8, dt = nothing,
        adaptive::Bool = true, dtmin = nothing, dtmax = nothing, maxiters::Integer = 100_000,
        tstops = nothing, differentiate::Bool = true
    )
    T = eltype(u0)
    eltype(θ) == T || throw(ArgumentError("PyODE: θ is $(eltype(θ)) but u0 is $T; pass one dtype"))
    length(θ) == model.nparams ||
        throw(ArgumentError("PyODE: θ has $(length(θ)) entries; the model has $(model.nparams)"))
    rem(length(u0), model.nin) == 0 ||
        throw(ArgumentError("PyODE: u0 has $(length(u0)) entries, not a multiple of the input size $(model.nin)"))
    check_request(sensealg, checkpointing, adaptive, t1, saveat)
    alg = algorithm(solver)
    sense = sensitivity(sensealg, checkpointing)
    # One copy of θ and u0 into native Vectors: a PyArray is not a DenseArray, and BLAS is.
    p = ComponentArray(Vector{T}(θ), model.axes...)
    x0 = Vector{T}(u0)
    n = length(x0)
    tspan = (Float64(t0), Float64(t1))
    kw = solve_keywords(T, tspan, rtol, atol, saveat, dt, adaptive, dtmin, dtmax, maxiters, tstops)
    if seminorm && haskey(SEMINORM_LAYOUTS, sensealg)
        kw = merge(kw, (; internalnorm = SemiNorm(SEMINORM_LAYOUTS[sensealg], n, length(p))))
    end
    f = ODEFunction{false}(VectorField(model))
    info = Ref{Any}(nothing)
    function run(x, q)
        prob = ODEProblem{false}(f, x, tspan, q)
        sol = solve(prob, alg; sensealg = sense, kw...)
        ChainRulesCore.ignore_derivatives() do
            info[] = (sol.retcode, sol.stats, Vector{Float64}(sol.t))
        end
        return Array(sol)
    end
    (Y, pullback), messages = captured() do
        differentiate || return (run(x0, p), nothing)
        try
            out, back = Zygote.pullback(run, x0, p)
            # No pullback of a failed solve: SciMLSensitivity would differentiate whatever
            # was saved (a ReverseDiff tape; sol.u for Backsolve, and for every continuous
            # adjoint without saveat, concrete_solve.jl:713-717, 740-750) and return a wrong
            # gradient, or fail to extrapolate. SciMLSensitivity checks no return code there.
            SciMLBase.successful_retcode(first(info[])) || return (out, nothing)
            return (out, Pullback{typeof(back), T, eltype(out)}(back, size(out), n, length(p)))
        catch
            # The continuous adjoints evaluate the forward solution at the save times, which
            # fails when the solve stopped early. Solve again without AD: a failed solve is
            # reported with its return code and partial states (and no gradient); anything
            # else is a real error.
            out = run(x0, p)
            SciMLBase.successful_retcode(first(info[])) && rethrow()
            return (out, nothing)
        end
    end
    retcode, stats, ts = info[]
    return (
        as_eltype(T, Y), String(Symbol(retcode)), statistic(stats, :nf), statistic(stats, :naccept),
        statistic(stats, :nreject), ts, pullback, messages,
    )
end

# With saveat, InterpolatingAdjoint and GaussAdjoint return `sol(ts)` (SciMLSensitivity
# concrete_solve.jl:751-757), interpolated in the time type: Θ = (t - t₋)/dt is Float64
# (OrdinaryDiffEqCore dense/generic_dense.jl:833-870), so Tsit5's y₀ + dt·Σ kᵢ·bᵢ(Θ)
# (OrdinaryDiffEqTsit5 interpolants.jl:42-53) is Float64 for a Float32 state. The states go
# back in u0's type; the Pullback converts the cotangent to the differentiated output's type.
as_eltype(::Type{T}, Y::AbstractArray{T}) where {T} = Y
as_eltype(::Type{T}, Y::AbstractArray) where {T} = convert(Array{T}, Y)

"""
    check_request(sensealg, checkpointing, adaptive, t1, saveat)

Refuse the requests SciMLSensitivity would answer wrongly. Python's side
(`pyode/backends/julia/_request.py`) never sends them; this is the contract's second line.
"""
function check_request(sensealg::AbstractString, checkpointing::Bool, adaptive::Bool, t1::Real, saveat)
    if sensealg == "InterpolatingAdjoint" && checkpointing && !adaptive
        throw(
            ArgumentError(
                "PyODE: InterpolatingAdjoint with checkpointing needs adaptive steps: SciMLSensitivity " *
                    "re-solves each checkpoint interval with only reltol and abstol, so fixed steps would " *
                    "error (Euler) or be re-solved adaptively. Send checkpointing=false for fixed steps"
            )
        )
    end
    # BacksolveAdjoint starts the reverse solve at t1 from the last saved state (SciMLSensitivity
    # adjoint_common.jl:91 `y = copy(state_values(sol)[end])`, backsolve_adjoint.jl:173, 229-231),
    # which is y(t1) only when t1 is saved (concrete_solve.jl:689-694 passes save_end through).
    if sensealg == "BacksolveAdjoint" && saveat !== nothing && !(Float64(t1) in Vector{Float64}(saveat))
        throw(
            ArgumentError(
                "PyODE: BacksolveAdjoint needs t1 among the save times (its reverse solve starts at t1 " *
                    "from the last saved state); add t1 to saveat and drop that column"
            )
        )
    end
    return nothing
end

# ---------------------------------------------------------------------------------------
# Probes for the runtime tests of the array exchange
# ---------------------------------------------------------------------------------------

"The type a Python argument arrives as (a PyArray for numpy buffers: no copy)."
argument_type(x) = string(typeof(x))

"Write v into x[i] (1-based): a PyArray view writes through to the numpy buffer."
function write_entry!(x::AbstractVector, i::Integer, v)
    x[i] = v
    return nothing
end

end # module PyODE
