# Load-time checks and the solve matrix of PyODE.jl, run in Julia alone (no Python):
#   julia --project=$(python -c 'import juliapkg; print(juliapkg.project())') julia/test/runtests.jl
# The parity tests against pyode's torch engine are in tests_julia/ (Python).
using LinearAlgebra: LinearAlgebra
using Test

include(joinpath(@__DIR__, "..", "PyODE.jl"))
using .PyODE

# dy/dt = W y with one Dense layer (2 => 2, identity, no bias): y(t) = exp(W t) y0. Lux's flat
# order is the weight, column-major, so θ = vec(W).
const W = [-0.5 1.0; -1.0 -0.5]
const THETA = vec(W)
const U0 = [1.0, 0.5]
const MODEL = PyODE.build_model(2, PyODE.dense(2, 2, "identity", false))

exact(θ, u0, t) = LinearAlgebra.exp(reshape(θ, 2, 2) * t) * u0
unit(i, n) = [j == i ? 1.0 : 0.0 for j in 1:n]

# Central differences of the exact loss, in Float64: with h = 1e-6 their error is near
# h²·|L'''| + eps/h ≈ 1e-10, far below every tolerance below.
function central_difference(L, x::Vector{Float64}; h = 1.0e-6)
    return [(L(x + h * unit(i, length(x))) - L(x - h * unit(i, length(x)))) / (2h) for i in eachindex(x)]
end

"(∂L/∂θ, ∂L/∂u0) of L = Σₖ w[:, k]·y(tₖ) for the exact solution."
function reference_gradient(ts, w)
    L(θ, u0) = sum(sum(w[:, k] .* exact(θ, u0, ts[k])) for k in eachindex(ts))
    return central_difference(θ -> L(θ, U0), THETA), central_difference(u0 -> L(THETA, u0), U0)
end

# Loss weights of O(1) in total, whatever the number of saved columns m.
weights(n, m) = [(1 + 0.25 * i - 0.1 * k / m) / m for i in 1:n, k in 1:m]

# pyode's fixed steps are `adaptive=false` with a dt on the save grid; Tsit5 is adaptive.
const STEPPING = Dict(
    "Euler" => (; adaptive = false, dt = 1 / 1024),
    "RK4" => (; adaptive = false, dt = 1 / 64),
    "Tsit5" => (; adaptive = true),
)
tolerances(::Type{Float64}) = (; rtol = 1.0e-10, atol = 1.0e-12)
tolerances(::Type{Float32}) = (; rtol = 1.0e-6, atol = 1.0e-7)

# Gradient error against the exact (continuous) gradient, relative to its size. Euler at
# dt = 1/1024 is first order: the states' global error is about dt/2·|W²y|·t ≈ 6e-4, and the
# adjoint's the same, so 1e-2 leaves room. RK4 at dt = 1/64 (dt⁴ ≈ 6e-8, times 1/120 from the
# error constant) and Tsit5 at rtol 1e-10 are near 1e-8: 1e-6. In Float32, rounding over up
# to a thousand steps and rtol 1e-6 give about 1e-5: 1e-3.
gradient_tolerance(T, solver) = max(solver == "Euler" ? 1.0e-2 : 1.0e-6, T == Float32 ? 1.0e-3 : 0.0)

const SENSEALG_CASES = (
    ("DirectAdjoint", false),
    ("BacksolveAdjoint", false),
    ("InterpolatingAdjoint", false),
    ("GaussAdjoint", false),
    ("InterpolatingAdjoint", true),
)
const SAVEATS = (
    ("with the endpoints", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("without the endpoints", [0.25, 0.5, 0.75]),
    ("none (every step)", nothing),
)

# What pyode's Python side sends (pyode/backends/julia/_request.py): BacksolveAdjoint gets t1
# added to the save times, and that column's cotangent is zero.
function saveat_sent(sensealg, saveat)
    if sensealg == "BacksolveAdjoint" && saveat !== nothing && !(1.0 in saveat)
        return vcat(saveat, 1.0), true
    end
    return saveat, false
end

@testset "PyODE" begin
    @test PyODE.version() isa String
    @test PyODE.nparams(MODEL) == 4

    @testset "forward accuracy of $solver" for solver in ("Heun", "BS3", "DP5", "DP8")
        ts = collect(range(0.0, 1.0; length = 5))
        Y, rc, nf, na, _, t, pb, _ = PyODE.solve_forward(
            MODEL, THETA, U0, 0.0, 1.0, ts; solver, sensealg = "GaussAdjoint", rtol = 1.0e-10, atol = 1.0e-12,
            differentiate = false
        )
        @test rc == "Success" && pb === nothing
        @test t == ts
        @test nf > 0 && na > 0
        @test maximum(abs, Y[:, end] - exact(THETA, U0, 1.0)) < 1.0e-7
    end

    # dtype × solver × sensealg × saveat × outcome: the element type and size of the states,
    # the gradient against the exact one, and no pullback from a failed solve.
    for T in (Float32, Float64), solver in ("Euler", "RK4", "Tsit5"), (sensealg, checkpointing) in SENSEALG_CASES,
            (label, saveat) in SAVEATS, outcome in (:success, :failure)

        name = "$T $solver $sensealg$(checkpointing ? " (checkpointing)" : "") saveat $label: $outcome"
        @testset "$name" begin
            options = merge(tolerances(T), STEPPING[solver], outcome === :failure ? (; maxiters = 3) : (;))
            call(s) = PyODE.solve_forward(
                MODEL, T.(THETA), T.(U0), 0.0, 1.0, s; solver, sensealg, checkpointing, seminorm = true, options...
            )
            if checkpointing && !STEPPING[solver].adaptive
                # SciMLSensitivity's checkpoint re-solve drops dt and adaptive=false; refused.
                @test_throws ArgumentError call(saveat)
            else
                s, added = saveat_sent(sensealg, saveat)
                added && @test_throws ArgumentError call(saveat)  # t1 unsaved: refused
                Y, rc, nf, na, nr, t, pb, messages = call(s)
                @test eltype(Y) == T
                @test size(Y) == (2, length(t))
                if outcome === :failure
                    @test rc == "MaxIters"
                    @test pb === nothing
                    @test PyODE.failure_in(messages) == "MaxIters"  # the log capture sees SciML's report
                    @test t[end] < 1.0
                else
                    @test rc == "Success" && nf > 0 && na > 0 && nr >= 0
                    @test t == (s === nothing ? t : s) && t[1] == (s === nothing ? 0.0 : s[1]) && t[end] == 1.0
                    @test size(Y, 2) == (s === nothing ? na + 1 : length(s))
                    w = weights(size(Y)...)
                    added && (w[:, end] .= 0)
                    gu0, gθ, nfe_back, rc_back, _ = pb(vec(T.(w)))
                    @test rc_back == "Success"
                    @test eltype(gθ) == T && eltype(gu0) == T
                    ref_θ, ref_u0 = reference_gradient(t, w)
                    tol = gradient_tolerance(T, solver) * max(1.0, maximum(abs, ref_θ), maximum(abs, ref_u0))
                    @test maximum(abs, Float64.(gθ) - ref_θ) <= tol
                    @test maximum(abs, Float64.(gu0) - ref_u0) <= tol
                    @test sensealg == "DirectAdjoint" || nfe_back > 0
                end
            end
        end
    end

    @testset "Julia's log is captured and read for failures" begin
        value, messages = PyODE.captured(() -> (@warn "Verbosity toggle: max_iters \n Interrupted."; 7))
        @test value == 7 && length(messages) == 1
        @test PyODE.failure_in(messages) == "MaxIters"
        @test PyODE.failure_in(["Verbosity toggle: dense_output_saveat \n not a failure"]) == "Success"
        @test PyODE.failure_in(["Verbosity toggle: dt_min_unstable \n dt <= dtmin"]) == "DtLessThanMin"
        _, quiet = PyODE.captured(() -> (@info "below Warn"; nothing))
        @test isempty(quiet)
    end

    @testset "the seminorm handles scalars and tells the layouts apart by length" begin
        s = PyODE.SemiNorm(:backsolve, 2, 3)
        @test s(-2.0, 0.0) == 2.0
        @test s([1.0, 1.0, 100.0, 100.0, 100.0, 1.0, 1.0], 0.0) ≈ 1.0
        @test s([3.0, 4.0], 0.0) ≈ sqrt(12.5)
        i = PyODE.SemiNorm(:interpolating, 2, 3)
        @test i([3.0, 4.0, 100.0, 100.0, 100.0], 0.0) ≈ sqrt(12.5)
    end
end
