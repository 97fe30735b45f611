"""Relax one molecule with a named force field: MMFF94 through RDKit, or GFN2-xTB through ``tblite``.

A molecule is ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom, explicit hydrogens.
MMFF94 needs bonds and bond orders: they come from the route the ADiT validity verdict perceives them
by (OpenBabel in the given atom order -> PDB block -> RDKit, hydrogens kept, :func:`.render.perceived_3d`),
so a molecule whose perceived graph RDKit refuses cannot be typed and gets an error, never a guessed
graph. GFN2-xTB needs only elements and coordinates (neutral, closed shell).

Both potentials go through one optimiser, SciPy's L-BFGS-B on the energy (kcal/mol) and its gradient
(kcal/mol/A), so the step count is exact and the stop rule is the same: converged when the largest
per-atom force is at most ``fmax``. Energies are the force field's own (MMFF94: relative to no
reference; GFN2-xTB: total electronic energy), so only differences of one molecule mean anything.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np

from unite_sci.schema import Choice

from .bonds import aligned_rmsd

HARTREE_KCAL = 627.509474  # kcal/mol per Hartree (CODATA 2018)
BOHR_A = 0.529177210903  # Angstrom per Bohr


class ForceField(Choice):
    mmff94 = "mmff94"
    gfn2_xtb = "gfn2_xtb"


@dataclass(frozen=True)
class RelaxSettings:
    """The relaxation protocol, recorded in ``relax_meta.json`` and every report."""

    force_field: str = "mmff94"
    max_steps: int = 1000   # L-BFGS-B iterations
    fmax: float = 0.1       # kcal/mol/A, largest per-atom force at convergence (0.0043 eV/A)


def label(force_field: str) -> str:
    """The tool's name with the library version: "MMFF94 (RDKit 2026.09.1)"."""
    if force_field == "gfn2_xtb":
        import importlib.metadata as md

        return f"GFN2-xTB (tblite {md.version('tblite')})"
    import rdkit

    return f"MMFF94 (RDKit {rdkit.__version__})"


def optimiser_label() -> str:
    import scipy

    return f"L-BFGS-B (SciPy {scipy.__version__})"


EnergyFn = Callable[[np.ndarray], tuple[float, np.ndarray]]  # pos (n, 3) A -> (kcal/mol, grad (n, 3) kcal/mol/A)


def mmff_energy(z: np.ndarray, pos: np.ndarray) -> EnergyFn:
    """MMFF94 energy and gradient of the molecule's perceived graph; ValueError when it has none."""
    from rdkit.Chem import rdForceFieldHelpers as ffh

    from .render import perceived_3d

    mol = perceived_3d(z, pos, sanitize=True)
    if mol is None:
        raise ValueError("perceived bonds do not sanitise: MMFF94 cannot type the atoms")
    props = ffh.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")
    if props is None:
        raise ValueError("MMFF94 has no parameters for this molecule")
    ff = ffh.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
    if ff is None:
        raise ValueError("RDKit could not set up MMFF94")

    def energy(p: np.ndarray) -> tuple[float, np.ndarray]:
        flat = np.asarray(p, dtype=np.float64).reshape(-1).tolist()
        return float(ff.CalcEnergy(flat)), np.asarray(ff.CalcGrad(flat)).reshape(-1, 3)

    return energy


def xtb_energy(z: np.ndarray, pos: np.ndarray) -> EnergyFn:
    """GFN2-xTB energy and gradient (tblite), neutral closed shell; one calculator reused along the path."""
    try:
        from tblite.interface import Calculator
    except ImportError:
        raise ValueError("GFN2-xTB needs the tblite package: pip install tblite") from None
    calc = Calculator("GFN2-xTB", np.asarray(z, dtype=np.int64), np.asarray(pos, dtype=np.float64) / BOHR_A)
    calc.set("verbosity", 0)
    state: dict = {}

    def energy(p: np.ndarray) -> tuple[float, np.ndarray]:
        calc.update(np.asarray(p, dtype=np.float64) / BOHR_A)
        res = calc.singlepoint(state.get("res"))  # restart the SCF from the last density
        state["res"] = res
        return float(res.get("energy")) * HARTREE_KCAL, np.asarray(res.get("gradient")) * HARTREE_KCAL / BOHR_A

    return energy


ENERGIES: dict[str, Callable[[np.ndarray, np.ndarray], EnergyFn]] = {"mmff94": mmff_energy, "gfn2_xtb": xtb_energy}


@dataclass
class RelaxResult:
    """One molecule's relaxation; energies in kcal/mol, forces in kcal/mol/A, RMSD in Angstrom."""

    pos: np.ndarray               # (n, 3) relaxed coordinates (the input's when relaxation failed)
    energy_before: float
    energy_after: float
    rmsd: float                   # of the move, after optimal rotation and translation (same atom order)
    steps: int
    converged: bool
    max_force: float              # largest per-atom force at the end
    error: str                    # '' when relaxed

    @property
    def strain(self) -> float:
        """Energy released by the relaxation (kcal/mol, >= 0 for a minimiser)."""
        return self.energy_before - self.energy_after

    def row(self) -> dict:
        return {"energy_before_kcal_mol": self.energy_before, "energy_after_kcal_mol": self.energy_after,
                "strain_kcal_mol": self.strain, "rmsd_A": self.rmsd, "steps": self.steps,
                "converged": self.converged, "max_force_kcal_mol_A": self.max_force, "error": self.error}


def failed(pos: np.ndarray, error: str) -> RelaxResult:
    nan = float("nan")
    return RelaxResult(np.asarray(pos, dtype=np.float64), nan, nan, nan, 0, False, nan, error)


def one_blas_thread() -> ContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # worker processes are single-threaded anyway (unite_sci.parallel)
        return nullcontext()
    return threadpool_limits(1)


def relax_molecule(z: np.ndarray, pos: np.ndarray, settings: RelaxSettings) -> RelaxResult:
    """Minimise the energy from ``pos`` (never raises: a molecule that cannot be relaxed gets ``error``)."""
    from scipy.optimize import minimize

    z = np.asarray(z, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.float64)
    try:
        energy = ENERGIES[str(settings.force_field)](z, pos)
        e0, g0 = energy(pos)
        if not np.isfinite(e0) or not np.isfinite(g0).all():
            return failed(pos, "non-finite energy at the start")

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            e, g = energy(x.reshape(-1, 3))
            return e, g.reshape(-1)

        # gtol bounds each gradient component; fmax / sqrt(3) per component bounds the per-atom force by fmax.
        # One BLAS thread: L-BFGS-B's tiny products cost 50x more when a threaded BLAS spins on busy cores.
        with one_blas_thread():
            res = minimize(fun, pos.reshape(-1), jac=True, method="L-BFGS-B",
                           options={"maxiter": settings.max_steps, "gtol": settings.fmax / np.sqrt(3), "ftol": 1e-15})
        new = res.x.reshape(-1, 3)
        e1, g1 = energy(new)
    except Exception as e:  # a toolkit refusing a generated molecule must not end the batch
        msg = " ".join(str(e).split()) or type(e).__name__
        return failed(pos, msg[:200])
    max_force = float(np.sqrt((g1**2).sum(1)).max())
    return RelaxResult(new, float(e0), float(e1), float(aligned_rmsd(pos, new)), int(res.nit),
                       bool(max_force <= settings.fmax), max_force, "")
