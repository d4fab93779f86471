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
