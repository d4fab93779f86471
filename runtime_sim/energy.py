"""Energy: action counts times the config's energy-per-action table (Accelergy style)."""

from __future__ import annotations

from ..isa.config import HardwareConfig


def energy_breakdown(stats: dict, cfg: HardwareConfig) -> dict[str, float]:
    """Energy in picojoules by component, from a run's stats (see :mod:`.machine`)."""
    e = cfg.energy
    fu_passes = stats["fu_mac_passes"]
    out = {
        "filter_unit": fu_passes * e.fu_mac_4b + stats["compares"] * e.fu_compare,
        "attention_unit": stats["macs"]["au_int16"] * e.au_mac_16b + stats["exps"] * e.au_exp
        + stats["norms"] * e.au_div,
    }
    for buf, acc in stats["sram_bytes"].items():
        out[f"sram_{buf}"] = (acc["read"] + acc["write"]) * e.sram_per_byte(cfg.buffer(buf))
    out["dram"] = (stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]) * e.dram_per_byte
    # leakage: mW x ns = pJ
    out["leakage"] = e.leakage_mw * stats["cycles"] / cfg.clock_ghz
    out["total"] = sum(out.values())
    return out
