"""Energy: action counts times the config's energy-per-action table (Accelergy style)."""

from __future__ import annotations

from ..isa.config import HardwareConfig, price_actions


def energy_breakdown(stats: dict, cfg: HardwareConfig) -> dict[str, float]:
    """Energy in picojoules by component, from a run's stats (see :mod:`.machine`)."""
    return price_actions(
        cfg, fu_mac_passes=stats["fu_mac_passes"], compares=stats["compares"], au_macs=stats["macs"]["au_int16"],
        exps=stats["exps"], norms=stats["norms"],
        sram_bytes={buf: acc["read"] + acc["write"] for buf, acc in stats["sram_bytes"].items()},
        dram_bytes=stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"], cycles=stats["cycles"])
