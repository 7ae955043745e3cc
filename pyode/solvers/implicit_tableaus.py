"""Coefficients of the implicit methods, as data with their citations.

Rosenbrock methods are held in Hairer & Wanner's transformed form (Solving ODEs II, §IV.7,
eq. (7.25)): with W = I/(hγ) - J, each stage solves

    W u_i = f(t + c_i h, y + Σ_{j<i} a_ij u_j) + Σ_{j<i} (C_ij / h) u_j + d_i h ∂f/∂t

and y1 = y + Σ m_i u_i, err = Σ e_i u_i. The untransformed coefficients, which the order
conditions are written in, follow from Γ = (diag(1/γ) - C)^{-1}, α = a Γ, b = m Γ.

ESDIRK methods are Butcher tableaus whose `a` is lower triangular with a0,0 = 0 and a constant
diagonal γ after it; an IMEX pair adds an explicit tableau on the same nodes and weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .._exact import Coefficient
from .._exact import exact as _exact


def _rows(rows) -> tuple[tuple[Fraction, ...], ...]:
    return tuple(tuple(_exact(x) for x in row) for row in rows)


def _vec(values) -> tuple[Fraction, ...]:
    return tuple(_exact(x) for x in values)


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in transformed form (see the module docstring).

    `a[i]` and `C[i]` hold the i entries j < i; `c` the nodes, `d` the time-derivative weights,
    `m` the weights of y1 and `e` those of the error estimate. `H` (rows of s weights), when
    given, is the dense output: with K_r = Σ_i H[r][i] u_i,
    y(t + θh) = (1 - θ) y0 + θ (y1 + (1 - θ)(K_0 + θ K_1 + θ² K_2 + ...)).
    """

    gamma: Fraction
    a: tuple[tuple[Fraction, ...], ...]
    C: tuple[tuple[Fraction, ...], ...]
    c: tuple[Fraction, ...]
    d: tuple[Fraction, ...]
    m: tuple[Fraction, ...]
    e: tuple[Fraction, ...]
    H: tuple[tuple[Fraction, ...], ...] = ()

    @property
    def stages(self) -> int:
        return len(self.c)


@dataclass(frozen=True)
class ESDIRKTableau:
    """An explicit-first-stage, singly diagonally implicit Runge–Kutta method.

    `a[i]` holds a_i,0..a_i,i (the diagonal included; a_0,0 = 0, a_i,i = gamma after it);
    `b_error` = b - b̂. `explicit_a` (rows of i entries, j < i), when given, is the explicit
    tableau of an additive (IMEX) pair on the same `c` and `b`.
    """

    gamma: Fraction
    c: tuple[Fraction, ...]
    a: tuple[tuple[Fraction, ...], ...]
    b: tuple[Fraction, ...]
    b_error: tuple[Fraction, ...]
    explicit_a: tuple[tuple[Fraction, ...], ...] | None = None

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def stiffly_accurate(self) -> bool:
        """Whether b is the last row of a: y1 is then the last stage's solution."""
        return self.a[-1] == self.b


def rosenbrock(
    gamma: Coefficient,
    a,
    C,
    c,
    d,
    m,
    e,
    H=(),
) -> RosenbrockTableau:
    s = len(c)
    tab = RosenbrockTableau(_exact(gamma), _rows(a), _rows(C), _vec(c), _vec(d), _vec(m), _vec(e), _rows(H))
    if not (len(tab.a) == len(tab.C) == len(tab.d) == len(tab.m) == len(tab.e) == s):
        raise ValueError("a Rosenbrock tableau needs a, C, d, m, e with one entry per stage")
    for i in range(s):
        if len(tab.a[i]) != i or len(tab.C[i]) != i:
            raise ValueError(f"row {i} of a and C must hold {i} entries")
    if any(len(row) != s for row in tab.H):
        raise ValueError(f"each row of H needs {s} entries")
    return tab


def esdirk(gamma: Coefficient, c, a, b, b_embedded, explicit_a=None) -> ESDIRKTableau:
    s = len(c)
    rows = _rows(a)
    if len(rows) != s or any(len(row) != i + 1 for i, row in enumerate(rows)):
        raise ValueError("an ESDIRK tableau's row i holds a_i,0..a_i,i")
    g = _exact(gamma)
    if rows[0][0] != 0 or any(row[-1] != g for row in rows[1:]):
        raise ValueError("an ESDIRK tableau has a_0,0 = 0 and a constant diagonal gamma after it")
    b_ = _vec(b)
    error = tuple(x - _exact(y) for x, y in zip(b_, b_embedded))
    ex = _rows(explicit_a) if explicit_a is not None else None
    if ex is not None and (len(ex) != s or any(len(row) != i for i, row in enumerate(ex))):
        raise ValueError("an explicit tableau's row i holds a_i,0..a_i,i-1")
    return ESDIRKTableau(g, _vec(c), rows, b_, error, ex)


# Rodas5P: Steinebach (2023), "Construction of Rosenbrock–Wanner method Rodas5P and numerical
# benchmarks within the Julia Differential Equations package", BIT Numer. Math. 63, 27. Eight
# stages, order 5(4), stiffly accurate (the last two stages are the embedded and the propagated
# solutions' corrections: y1 = stage input 6 + u6 + u7 + u8, err = u8), with a 4th-order dense
# output. The coefficients are the decimals printed in the paper (17 digits).
_RODAS5P_A = (
    ("3.0",),
    ("2.849394379747939", "0.45842242204463923"),
    ("-6.954028509809101", "2.489845061869568", "-10.358996098473584"),
    ("2.8029986275628964", "0.5072464736228206", "-0.3988312541770524", "-0.04721187230404641"),
    ("-7.502846399306121", "2.561846144803919", "-11.627539656261098", "-0.18268767659942256", "0.030198172008377946"),
)
_RODAS5P_C = (
    (),
    ("-14.155112264123755",),
    ("-17.97296035885952", "-2.859693295451294"),
    ("147.12150275711716", "-1.41221402718213", "71.68940251302358"),
    ("165.43517024871676", "-0.4592823456491126", "42.90938336958603", "-5.961986721573306"),
    ("24.854864614690072", "-3.0009227002832186", "47.4931110020768", "5.5814197821558125", "-0.6610691825249471"),
    (
        "30.91273214028599",
        "-3.1208243349937974",
        "77.79954646070892",
        "34.28646028294783",
        "-19.097331116725623",
        "-28.087943162872662",
    ),
    (
        "37.80277123390563",
        "-3.2571969029072276",
        "112.26918849496327",
        "66.9347231244047",
        "-40.06618937091002",
        "-54.66780262877968",
        "-9.48861652309627",
    ),
)
_RODAS5P_H = (
    (
        "25.948786856663858",
        "-2.5579724845846235",
        "10.433815404888879",
        "-2.3679251022685204",
        "0.524948541321073",
        "1.1241088310450404",
        "0.4272876194431874",
        "-0.17202221070155493",
    ),
    (
        "-9.91568850695171",
        "-0.9689944594115154",
        "3.0438037242978453",
        "-24.495224566215796",
        "20.176138334709044",
        "15.98066361424651",
        "-6.789040303419874",
        "-6.710236069923372",
    ),
    (
        "11.419903575922262",
        "2.8879645146136994",
        "72.92137995996029",
        "80.12511834622643",
        "-52.072871366152654",
        "-59.78993625266729",
        "-0.15582684282751913",
        "4.883087185713722",
    ),
)
_last = _RODAS5P_A[-1]
RODAS5P = rosenbrock(
    gamma="0.21193756319429014",
    a=((), *_RODAS5P_A, (*_last, 1), (*_last, 1, 1)),
    C=_RODAS5P_C,
    c=(0, "0.6358126895828704", "0.4095798393397535", "0.9769306725060716", "0.4288403609558664", 1, 1, 1),
    d=(
        "0.21193756319429014",
        "-0.42387512638858027",
        "-0.3384627126235924",
        "1.8046452872882734",
        "2.325825639765069",
        0,
        0,
        0,
    ),
    m=(*_last, 1, 1, 1),
    e=(0, 0, 0, 0, 0, 0, 0, 1),
    H=_RODAS5P_H,
)


# Kvaerno3: Kværnø (2004), "Singly diagonally implicit Runge–Kutta methods with an explicit first
# stage", BIT Numer. Math. 44, 489–502; the 3/2 method. Four stages, order 3 with an embedded
# order 2, both stiffly accurate (the embedded solution is the third stage); A- and L-stable.
# Stage order 2. The coefficients are closed forms in γ, the root near 0.4358665215 of
# 6γ³ - 18γ² + 9γ - 1 = 0 that makes the method L-stable. We write them to 40 digits as SUNDIALS
# ARKODE tabulates them (ARKODE_KVAERNO_4_2_3); they agree to 40 digits with the closed forms (as
# diffrax writes them) at that root. OrdinaryDiffEq.jl and diffrax cut γ to 10 digits, which keeps
# the order but leaves R(∞) at 6e-11 instead of 0.
_KVAERNO3_GAMMA = "0.4358665215084589994160194511935568425293"
_KVAERNO3_A = (
    (0,),
    (_KVAERNO3_GAMMA, _KVAERNO3_GAMMA),
    ("0.4905633884217805706284679584665446902307", "0.07357009006976042995551259033989846723997", _KVAERNO3_GAMMA),
    (
        "0.3088099699767465233481624698867005109200",
        "1.490563388421780570628467958466544690231",
        "-1.235239879906986093392649879546802043680",
        _KVAERNO3_GAMMA,
    ),
)
KVAERNO3 = esdirk(
    gamma=_KVAERNO3_GAMMA,
    c=(0, "0.8717330430169179988320389023871136850586", 1, 1),
    a=_KVAERNO3_A,
    b=_KVAERNO3_A[3],
    b_embedded=(*_KVAERNO3_A[2], 0),
)

# Kvaerno5: Kværnø (2004), as above; the 5/4 method. Seven stages, order 5 with an embedded
# order 4, both stiffly accurate (the embedded solution is the sixth stage); A- and L-stable.
# Stage order 2. We write the 40 digits of SUNDIALS ARKODE (ARKODE_KVAERNO_7_4_5); the 17
# decimals of OrdinaryDiffEq.jl and diffrax are these cut (not rounded). One node, c ≈ 1.23,
# lies past the end of the step.
_KVAERNO5_A = (
    (0,),
    ("0.26", "0.26"),
    ("0.13", "0.8403332099679080963171360487915268154051", "0.26"),
    (
        "0.2237196147832050559163143898290529441991",
        "0.4767553231979969983278927937270874162429",
        "-0.06470895363112615133816161180658488282681",
        "0.26",
    ),
    (
        "0.1664856432324832152535151725360430044452",
        "0.1045001884159172041151167240328967362455",
        "0.03631482272098715161651993758285203251909",
        "-0.1309070445107399857071749645700052401819",
        "0.26",
    ),
    (
        "0.1385564023126822495054973091161581456582",
        0,
        "-0.04245337201752043098884399725982168512523",
        "0.02446657898003141965963581513879101305561",
        "0.6194303907248067618237108730048725264114",
        "0.26",
    ),
    (
        "0.1365975117764029144062783844146127033921",
        0,
        "-0.05496908796538376712487773114648630009105",
        "-0.04118626728321046868299776958296295741592",
        "0.6299330489901640319161060392667246534806",
        "0.06962479448202728948549107704811190063421",
        "0.26",
    ),
)
KVAERNO5 = esdirk(
    gamma="0.26",
    c=(
        0,
        "0.52",
        "1.230333209967908096317136048791526815405",
        "0.8957659843500759029060455717495554776153",
        "0.4363936098586475852779768695817865330279",
        1,
        1,
    ),
    a=_KVAERNO5_A,
    b=_KVAERNO5_A[6],
    b_embedded=(*_KVAERNO5_A[5], 0),
)

# KenCarp4: Kennedy & Carpenter (2003), "Additive Runge–Kutta schemes for convection–diffusion–
# reaction equations", Appl. Numer. Math. 44, 139–181, ARK4(3)6L[2]SA. Six stages, order 4 with
# an embedded order 3, for the implicit (ESDIRK: stiffly accurate, L-stable, stage order 2) and the
# explicit tableau alike, coupled to order 4. The coefficients are the paper's rationals. Those of
# the implicit tableau are exact; those of the explicit one are rational approximations, so its
# rows sum to c, and it meets its order and coupling conditions, only to ~3e-26.
_KENCARP4_A = (
    (0,),
    (Fraction(1, 4), Fraction(1, 4)),
    (Fraction(8611, 62500), Fraction(-1743, 31250), Fraction(1, 4)),
    (Fraction(5012029, 34652500), Fraction(-654441, 2922500), Fraction(174375, 388108), Fraction(1, 4)),
    (
        Fraction(15267082809, 155376265600),
        Fraction(-71443401, 120774400),
        Fraction(730878875, 902184768),
        Fraction(2285395, 8070912),
        Fraction(1, 4),
    ),
    (
        Fraction(82889, 524892),
        0,
        Fraction(15625, 83664),
        Fraction(69875, 102672),
        Fraction(-2260, 8211),
        Fraction(1, 4),
    ),
)
KENCARP4 = esdirk(
    gamma=Fraction(1, 4),
    c=(0, Fraction(1, 2), Fraction(83, 250), Fraction(31, 50), Fraction(17, 20), 1),
    a=_KENCARP4_A,
    b=_KENCARP4_A[5],
    b_embedded=(
        Fraction(4586570599, 29645900160),
        0,
        Fraction(178811875, 945068544),
        Fraction(814220225, 1159782912),
        Fraction(-3700637, 11593932),
        Fraction(61727, 225920),
    ),
    explicit_a=(
        (),
        (Fraction(1, 2),),
        (Fraction(13861, 62500), Fraction(6889, 62500)),
        (
            Fraction(-116923316275, 2393684061468),
            Fraction(-2731218467317, 15368042101831),
            Fraction(9408046702089, 11113171139209),
        ),
        (
            Fraction(-451086348788, 2902428689909),
            Fraction(-2682348792572, 7519795681897),
            Fraction(12662868775082, 11960479115383),
            Fraction(3355817975965, 11060851509271),
        ),
        (
            Fraction(647845179188, 3216320057751),
            Fraction(73281519250, 8382639484533),
            Fraction(552539513391, 3454668386233),
            Fraction(3354512671639, 8306763924573),
            Fraction(4040, 17871),
        ),
    ),
)
