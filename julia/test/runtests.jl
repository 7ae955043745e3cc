# Load-time and smoke tests of PyODE.jl, run in Julia alone (no Python):
#   julia --project=$(python -c 'import juliapkg; print(juliapkg.project())') julia/test/runtests.jl
# The parity tests against pyode's torch engine are in tests_julia/ (Python).
using LinearAlgebra: LinearAlgebra
using Test

include(joinpath(@__DIR__, "..", "PyODE.jl"))
using .PyODE

@testset "PyODE" begin
    @test PyODE.version() isa String

    # dy/dt = W y with one Dense layer (no bias, identity): y(t) = exp(W t) y0.
    model = PyODE.build_model(2, PyODE.dense(2, 2, "identity", false))
    @test PyODE.nparams(model) == 4
    W = [-0.5 1.0; -1.0 -0.5]
    θ = vec(W)                      # Lux's flat order: the weight, column-major
    u0 = [1.0, 0.5]
    ts = collect(range(0.0, 1.0; length = 5))
    exact(θ, t) = LinearAlgebra.exp(reshape(θ, 2, 2) * t) * u0

    for solver in ("BS3", "DP5", "Tsit5", "DP8")
        Y, rc, nf, na, nr, t, pb = PyODE.solve_forward(
            model, θ, u0, 0.0, 1.0, ts; solver, sensealg = "GaussAdjoint", rtol = 1.0e-10, atol = 1.0e-12
        )
        @test rc == "Success"
        @test t ≈ ts
        @test nf > 0 && na > 0
        @test maximum(abs, Y[:, end] - exact(θ, 1.0)) < 1.0e-7
    end

    # Gradient of L = sum(y(1)) for every sensealg, against central differences of exp(W t).
    L(θ) = sum(exact(θ, 1.0))
    basis(i) = [j == i ? 1.0 : 0.0 for j in 1:4]
    fd = [(L(θ + 1.0e-6 * basis(i)) - L(θ - 1.0e-6 * basis(i))) / 2.0e-6 for i in 1:4]
    for sensealg in ("DirectAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "GaussAdjoint")
        Y, rc, nf, na, nr, t, pb = PyODE.solve_forward(
            model, θ, u0, 0.0, 1.0, [0.0, 1.0]; solver = "Tsit5", sensealg, seminorm = true,
            rtol = 1.0e-10, atol = 1.0e-12
        )
        gY = zeros(size(Y))
        gY[:, end] .= 1
        gu0, gθ, nfe_back = pb(vec(gY))
        @test maximum(abs, gθ - fd) < 1.0e-6
        @test length(gu0) == 2
    end

    # throw=false semantics: a small maxiters ends early with MaxIters and a partial solution.
    Y, rc = PyODE.solve_forward(
        model, θ, u0, 0.0, 1.0, ts; solver = "Tsit5", sensealg = "GaussAdjoint", rtol = 1.0e-12,
        atol = 1.0e-12, maxiters = 3, differentiate = false
    )[1:2]
    @test rc == "MaxIters"
    @test size(Y, 2) < length(ts)

    # The seminorm handles scalars and tells the layouts apart by length.
    s = PyODE.SemiNorm(:backsolve, 2, 3)
    @test s(-2.0, 0.0) == 2.0
    @test s([1.0, 1.0, 100.0, 100.0, 100.0, 1.0, 1.0], 0.0) ≈ 1.0
    @test s([3.0, 4.0], 0.0) ≈ sqrt(12.5)
end
