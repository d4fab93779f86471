"""Hardware configs: built-ins load, user files load, invalid ones are rejected by name."""

import dataclasses

import pytest
from energon_tvm.isa.config import CONFIG_DIR, load_config
from energon_tvm.isa.errors import ConfigError, EnergonError


def test_builtin_configs():
    edge, server = load_config("edge"), load_config("server")
    assert load_config() == edge
    assert edge.buffer("kv") == 64 * 1024 and server.buffer("kv") == 4 * edge.buffer("kv")
    assert edge.dram_bytes_per_cycle == pytest.approx(25.6)
    assert edge.dram_latency_cycles == 100
    assert edge.addr_bits("index") == 13 and server.addr_bits("index") == 15
    assert edge.fu_passes(4, 2) == 1 and edge.fu_passes(8, 4) == 2 and edge.fu_passes(16, 16) == 16
    assert edge.fingerprint != server.fingerprint
    assert 1.0 < edge.peak_tops < 1.4  # the paper's ~1.15 TOPS class
    with pytest.raises(dataclasses.FrozenInstanceError):
        edge.clock_ghz = 2.0  # type: ignore[misc]


def test_user_file_and_replace(tmp_path):
    text = (CONFIG_DIR / "edge.toml").read_text().replace('name = "edge"', 'name = "mine"')
    text = text.replace("kv = 65536", "kv = 131072")
    (tmp_path / "energy_45nm.toml").write_text((CONFIG_DIR / "energy_45nm.toml").read_text())
    path = tmp_path / "mine.toml"
    path.write_text(text)
    mine = load_config(path)
    assert mine.name == "mine" and mine.buffer("kv") == 131072
    assert mine == load_config("edge").replace(name="mine", buffer_kv=131072)
    assert mine.energy.dram_per_byte > 0


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("kv = 65536", "kv = 12", "buffers.kv = 12"),
        ("macs_per_cycle = 512", "macs_per_cycle = -3", "fu_macs_per_cycle = -3"),
        ("burst_bytes = 64", "burst_bytes = 48", "burst_bytes = 48 must be a power of two"),
        ("max_head_dim = 128", "max_head_dim = 100", "max_head_dim = 100"),
        ("bandwidth_gbps = 25.6", "bandwidth_gbps = 0", "dram_bandwidth_gbps = 0"),
        ("exp_per_cycle = 8", "exp_per_cycle = 8\nturbo = true", "unknown field.*turbo"),
        ("[dram]", "[drum]", "missing section \\[dram\\]"),
        ("clock_ghz = 1.0", "", "missing field 'clock_ghz'"),
        ("name = \"edge\"", "name = ", "not a readable TOML"),
    ],
)
def test_invalid_config_names_field_value_and_rule(tmp_path, old, new, match):
    text = (CONFIG_DIR / "edge.toml").read_text()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_unknown_name_lists_builtins():
    with pytest.raises(EnergonError, match="built-in configs are edge, server"):
        load_config("cloud")
    with pytest.raises(ConfigError, match="unknown buffer 'sram'"):
        load_config().replace(buffer_sram=1)


def test_each_machine_has_its_own_dram_energy_and_shares_the_rest():
    # [dram] energy_pj_per_bit: edge LPDDR4 8.0 pJ/bit -> 64 pJ/B, server HBM2 3.97 pJ/bit -> 31.76 pJ/B
    edge, server = load_config("edge"), load_config("server")
    assert edge.energy.dram_per_byte == 8 * 8.0 and server.energy.dram_per_byte == pytest.approx(8 * 3.97)
    shared = [f.name for f in dataclasses.fields(edge.energy) if f.name != "dram_per_byte"]
    assert [getattr(edge.energy, n) for n in shared] == [getattr(server.energy, n) for n in shared]


@pytest.mark.parametrize("new, match", [
    ("", r"edge_copy.toml \[dram\]: missing field 'energy_pj_per_bit'"),
    ('energy_pj_per_bit = "8"', r"\[dram\]: energy_pj_per_bit = '8' must be a finite number >= 0"),
    ("energy_pj_per_bit = -1.0", r"\[dram\]: energy_pj_per_bit = -1.0 must be a finite number >= 0"),
    ("energy_pj_per_bit = nan", r"\[dram\]: energy_pj_per_bit = nan must be a finite number >= 0"),
])
def test_dram_energy_comes_from_the_machine_config_by_name(tmp_path, new, match):
    path = tmp_path / "edge_copy.toml"
    path.write_text((CONFIG_DIR / "edge.toml").read_text().replace("energy_pj_per_bit = 8.0", new, 1))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_an_energy_table_with_a_dram_section_is_refused(tmp_path):
    # the DRAM energy is declared once, by the machine: a table carrying its own would be a second value
    (tmp_path / "energy_45nm.toml").write_text((CONFIG_DIR / "energy_45nm.toml").read_text()
                                               + "\n[dram]\nper_byte = 240.0\n")
    (tmp_path / "mine.toml").write_text((CONFIG_DIR / "edge.toml").read_text())
    with pytest.raises(ConfigError, match=r"energy_45nm.toml: an energy table has no \[dram\] section"):
        load_config(tmp_path / "mine.toml")


# -- physically meaningful ranges ----------------------------------------------------------------------------
# a value just beyond each range, of the field's own kind (and past the earlier rules: powers of two for
# bursts, multiples of 8 for head dims), and the report's absurd-but-well-typed cases
_BEYOND = [("clock_ghz", 1e-300), ("clock_ghz", 150.0), ("dram_bandwidth_gbps", 1e-300), ("dram_bandwidth_gbps", 2e5),
           ("dram_latency_ns", 0.01), ("dram_latency_ns", 2e6), ("dram_burst_bytes", 4), ("dram_burst_bytes", 1 << 30),
           ("fu_macs_per_cycle", 1 << 21), ("fu_select_per_cycle", 1 << 21), ("au_macs_per_cycle", 1 << 21),
           ("au_exp_per_cycle", 1 << 21), ("au_pipeline_cycles", 10_001), ("dram_request_cycles", 100_000),
           ("dram_outstanding_requests", 257), ("max_head_dim", 4104)]


@pytest.mark.parametrize("name, value", _BEYOND)
def test_values_outside_the_physical_ranges_are_refused(name, value):
    from energon_tvm.isa.config import PHYSICAL_RANGES, _num, _show

    lo, hi, unit, why = PHYSICAL_RANGES[name]
    msg = (f"config 'edge': {name} = {_show(value)} is outside the physically meaningful range {_num(lo)} .. "
           f"{_num(hi)} {unit} ({why})")
    with pytest.raises(ConfigError) as err:
        load_config("edge").replace(**{name: value})
    assert str(err.value) == msg and "\n" not in msg


def test_every_range_is_tested_and_its_ends_are_valid():
    from energon_tvm.isa.config import PHYSICAL_RANGES

    assert {name for name, _ in _BEYOND} == set(PHYSICAL_RANGES)
    edge = load_config("edge")
    for name, (lo, hi, _, _) in PHYSICAL_RANGES.items():
        kind = type(getattr(edge, name))
        assert edge.replace(**{name: kind(lo)}) and edge.replace(**{name: kind(hi)})
    for builtin in ("edge", "server"):
        load_config(builtin)


def test_energy_entries_outside_their_ranges_are_refused(tmp_path):
    edge = load_config("edge")
    with pytest.raises(ConfigError, match=r"^energy table 'energy_45nm': au_exp = 2000000.0 is outside the physically "
                                          r"meaningful range 0 \.\. 1,000,000 pJ \(a microjoule per action"):
        dataclasses.replace(edge.energy, au_exp=2e6)
    with pytest.raises(ConfigError, match=r"leakage_mw = 1000000000.0 is outside the physically meaningful range "
                                          r"0 \.\. 1,000,000 mW \(a kilowatt of leakage is not one chip\)"):
        dataclasses.replace(edge.energy, leakage_mw=1e9)
    # from a file, as from a dict: the same check
    text = (CONFIG_DIR / "edge.toml").read_text().replace("clock_ghz = 1.0", "clock_ghz = 1e-300", 1)
    (tmp_path / "absurd.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"clock_ghz = 1e-300 is outside the physically meaningful range 0\.01 \.\. "
                                          r"100 GHz"):
        load_config(tmp_path / "absurd.toml")


def test_config_files_nested_too_deeply_or_too_large_are_config_errors(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("clock_ghz = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.toml: not a readable TOML file: arrays or tables nested deeper than "
                                          r"the parser's limit \(about \d+ levels\)"):
        load_config(deep)
    inline = tmp_path / "inline.toml"
    inline.write_text("clock_ghz = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than the parser's limit"):
        load_config(inline)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big.toml: more than 1048576 bytes; a config file is a few KiB"):
        load_config(big)
