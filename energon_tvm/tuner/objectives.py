"""What a tuning session minimises: a schedule's cycles, its energy, or their product.

``cycles`` is what tuning meant before the objective was a choice, and what a record that names none
was tuned for; ``energy`` is the run's total in pJ (docs/energy.md); ``edp`` is cycles x pJ.
"""

from __future__ import annotations

from ..schedules.cost import OBJECTIVES  # the heuristic's names, declared once
from .errors import TuningError


def objective_value(objective: str, cycles: int | None, energy_pj: float | None) -> float | None:
    """What a tuner minimises: ``cycles``, ``energy`` (pJ) or ``edp`` (cycles x pJ); None when the
    figures it needs are missing."""
    check_objective(objective)
    if objective == "cycles":
        return None if cycles is None else float(cycles)
    if energy_pj is None or cycles is None:
        return None
    if objective == "energy":
        return float(energy_pj)
    return float(cycles) * float(energy_pj)  # edp


def check_objective(objective) -> str:
    """``objective`` when it is one of :data:`OBJECTIVES`, else a :class:`TuningError` naming them."""
    if objective not in OBJECTIVES:
        raise TuningError(f"unknown objective {objective!r}; objectives are {', '.join(OBJECTIVES)}")
    return objective
