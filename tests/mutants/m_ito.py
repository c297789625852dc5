"""ITO's mechanism breakages (papers/ito.txt, Eq. 4-7 and Fig. 1)."""
from tests.mutants import Mutant

TESTS = ("tests/test_ito.py",)
F_OPT = "engine/core/ito_optim.py"

MUTANTS = [
    Mutant("ito.eq6-lambda-dropped", F_OPT, "total = total + lam * rec", "total = total + rec",
           "Eq. 6: lambda weights the preservation loss"),
]
