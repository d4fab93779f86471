"""``HardwareConfig.from_dict``, the inverse of ``to_dict`` that reads a binary's config section:
round trips, and a ConfigError naming the field, the value and the rule for every malformed dict,
however hostile (never a KeyError, TypeError, ValueError, OverflowError or RecursionError)."""

import json
import math

import pytest
from energon_tvm.isa.config import (
    CONFIG_DIR,
    EnergyTable,
    HardwareConfig,
    builtin_config,
    load_config,
    load_energy_table,
)
from energon_tvm.isa.errors import ConfigError
from energon_tvm.isa.program import canonical_json
from hypothesis import given
from hypothesis import strategies as st
from strategies import CONFIGS, json_values

CUSTOM = load_config("edge").replace(buffer_kv=131072, name="custom")


@pytest.mark.parametrize("cfg", [*CONFIGS.values(), CUSTOM], ids=lambda c: c.name)
def test_from_dict_inverts_to_dict(cfg):
    d = cfg.to_dict()
    again = HardwareConfig.from_dict(d)
    assert again == cfg and again.fingerprint == cfg.fingerprint and again.to_dict() == d
    # through the JSON a binary holds, too
    assert HardwareConfig.from_dict(json.loads(canonical_json(d))) == cfg
    assert EnergyTable.from_dict(d["energy"]) == cfg.energy


def test_from_dict_keeps_no_reference_to_its_input(edge):
    d = edge.to_dict()
    cfg = HardwareConfig.from_dict(d)
    d["buffer_bytes"]["kv"] = 1
    d["energy"]["au_exp"] = -1
    assert cfg == edge


def _without(key: str) -> dict:
    d = CONFIGS["edge"].to_dict()
    del d[key]
    return d


def _with(path: str, value) -> dict:
    d = CONFIGS["edge"].to_dict()
    *parents, key = path.split(".")
    target = d
    for p in parents:
        target = target[p]
    target[key] = value
    return d


@pytest.mark.parametrize("d, match", [
    # a missing key, by name
    (_without("dram_latency_ns"), r"hardware config: missing field\(s\) dram_latency_ns; every field of name, "),
    (_with("buffer_bytes", {"q": 16384}), r"config 'edge': buffer_bytes: missing field\(s\) kplane, score, "),
    (_with("energy", {"name": "e"}), r"config 'edge': energy table: missing field\(s\) fu_mac_4b, "),
    # an extra key, by name
    (_with("turbo", True), r"hardware config: unknown field\(s\) 'turbo'; the fields are name, clock_ghz, "),
    (_with("buffer_bytes.sram", 64), r"buffer_bytes: unknown field\(s\) 'sram'"),
    (_with("energy.au_sqrt", 1.0), r"energy table: unknown field\(s\) 'au_sqrt'"),
    # a wrong type: the field, the value seen and the rule
    (_with("fu_macs_per_cycle", "512"), r"config 'edge': fu_macs_per_cycle = '512' must be a positive integer"),
    (_with("fu_mac_bits", 4.0), r"fu_mac_bits = 4.0 must be a positive integer"),
    (_with("au_pipeline_cycles", False), r"au_pipeline_cycles = False must be a non-negative integer"),
    (_with("clock_ghz", True), r"clock_ghz = True must be a positive number"),
    (_with("clock_ghz", [1.0]), r"clock_ghz = \[1.0\] must be a positive number"),
    (_with("name", None), r"config name = None must be a string"),
    (_with("buffer_bytes", [16384] * 8), r"config 'edge': buffer_bytes = \[16384, 16384, 16384, 16384, 16384, "
                                         r"16384, \.\.\.\] must be a dict with the fields q, kplane, "),
    (_with("buffer_bytes.kv", "65536"), r"buffers.kv = '65536' must be an integer between 64 bytes and 16 MiB"),
    (_with("energy", 0.5), r"energy table = 0.5 must be a dict"),
    (_with("energy.name", 3), r"energy table name = 3 must be a string"),
    (_with("energy.au_exp", "8"), r"energy table 'energy_45nm': au_exp = '8' must be a finite number >= 0"),
    # NaN and infinities
    (_with("dram_latency_ns", math.nan), r"config 'edge': dram_latency_ns = nan must be a positive number"),
    (_with("dram_bandwidth_gbps", math.inf), r"dram_bandwidth_gbps = inf must be a positive number"),
    (_with("energy.leakage_mw", math.nan), r"energy table 'energy_45nm': leakage_mw = nan must be a finite number"),
    (_with("energy.dram_per_byte", -math.inf), r"dram_per_byte = -inf must be a finite number >= 0"),
    # huge ints: bounded, and quoted without printing them whole
    (_with("fu_macs_per_cycle", 1 << 32), r"fu_macs_per_cycle = 4294967296 must be a positive integer \(at most "
                                          r"4294967295\)"),
    (_with("clock_ghz", 10 ** 400), r"clock_ghz = 1(0){17}\.\.\.(0){19} must be a positive"),
    (_with("max_head_dim", 8 * 10 ** 5000), r"max_head_dim = <int too large to show> must be a positive integer"),
    (_with("energy.au_div", 10 ** 400), r"au_div = 1(0){17}\.\.\.(0){19} must be a finite"),
    # the rules of __post_init__ apply as they do to a file
    (_with("dram_burst_bytes", 48), r"dram_burst_bytes = 48 must be a power of two"),
    (_with("max_query_tile", 8192), r"max_query_tile = 8192 must be at most 4096"),
    (_with("dram_size_mib", 4096), r"dram_size_mib = 4096 must be at most 4095"),
    # not a dict at all
    ([("name", "edge")], r"hardware config = \[\('name', 'edge'\)\] must be a dict with the fields name, "),
    (None, r"hardware config = None must be a dict"),
])
def test_from_dict_rejects_by_field_value_and_rule(d, match):
    with pytest.raises(ConfigError, match=match):
        HardwareConfig.from_dict(d)


def test_deep_nesting_and_odd_keys_are_config_errors():
    deep: list = []
    for _ in range(100_000):  # far deeper than repr could recurse
        deep = [deep]
    with pytest.raises(ConfigError, match=r"clock_ghz = \[\[\[\[\[\[\[\.\.\.\]\]\]\]\]\]\] must be a positive"):
        HardwareConfig.from_dict(_with("clock_ghz", deep))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \(1, 2\), 3, None"):
        HardwareConfig.from_dict({**CONFIGS["edge"].to_dict(), (1, 2): 0, 3: 0, None: 0})
    with pytest.raises(ConfigError, match=r"name = \['x+\.\.\.x+'\] must be a string"):
        HardwareConfig.from_dict(_with("name", ["x" * 10 ** 6]))


def test_energy_values_are_checked_once_for_files_and_dicts(tmp_path):
    # load_energy_table and from_dict share EnergyTable's own check: the same rule, the same words
    text = (CONFIG_DIR / "energy_45nm.toml").read_text().replace("leakage_mw = 30.0", "leakage_mw = -2.0", 1)
    path = tmp_path / "energy_bad.toml"
    path.write_text(text)
    rule = "energy table 'energy_45nm': leakage_mw = -2.0 must be a finite number >= 0"
    with pytest.raises(ConfigError) as from_file:
        load_energy_table(path, 8.0)  # the DRAM energy per bit is the machine config's, passed in
    assert str(from_file.value) == f"{path}: {rule}"
    with pytest.raises(ConfigError) as from_dict:
        HardwareConfig.from_dict(_with("energy.leakage_mw", -2.0))
    assert str(from_dict.value) == f"config 'edge': {rule}"


_PATHS = ["name", "clock_ghz", "fu_macs_per_cycle", "fu_mac_bits", "max_query_tile", "au_pipeline_cycles",
          "max_head_dim", "dram_burst_bytes", "dram_size_mib", "dram_latency_ns", "buffer_bytes", "buffer_bytes.q",
          "buffer_bytes.param", "energy", "energy.name", "energy.au_exp", "energy.leakage_mw"]
_HOSTILE = (json_values | st.sampled_from([math.nan, math.inf, -math.inf, 10 ** 400, -(10 ** 400), 1 << 64, True,
                                           b"\x00", (1, 2), {1: 2}, object()])
            | st.integers() | st.floats())


@given(st.lists(st.tuples(st.sampled_from(_PATHS), _HOSTILE), min_size=1, max_size=3),
       st.lists(st.sampled_from(_PATHS), max_size=2), st.dictionaries(st.text(max_size=4), json_values, max_size=2))
def test_hostile_dicts_give_only_config_errors(changes, deletions, extra):
    d = CONFIGS["edge"].to_dict()
    for path, value in changes:
        target, key = d, path
        if "." in path:
            parent, key = path.split(".")
            target = d[parent]
        if isinstance(target, dict):
            target[key] = value
    for path in deletions:
        parent = d if "." not in path else d.get(path.split(".")[0])
        if isinstance(parent, dict):
            parent.pop(path.split(".")[-1], None)
    d.update(extra)
    try:
        cfg = HardwareConfig.from_dict(d)
    except ConfigError as err:
        assert len(str(err)) < 1000
        return
    assert cfg.to_dict() == d  # whatever is accepted is exactly what it describes


def test_builtin_config_is_found_by_fingerprint_else_by_name(edge, server):
    # the assembler's one look-up (binaries need none): the fingerprint picks, the name is a label
    assert builtin_config("edge") == edge and builtin_config("server") == server
    assert builtin_config("any label", server.fingerprint) is builtin_config("server")
    with pytest.raises(ConfigError, match="no built-in config named 'cloud'; built-in configs are edge, server"):
        builtin_config("cloud")
    with pytest.raises(ConfigError, match=f"config 'custom' with fingerprint {CUSTOM.fingerprint.hex()} is not a "
                                          f"built-in config; pass that config"):
        builtin_config("custom", CUSTOM.fingerprint)
