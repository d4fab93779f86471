"""The binary container: round trips, and one typed error per way a binary can be wrong, each naming
the byte offset and the value seen."""

import json

import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import BinaryFormatError, ConfigError, EnergonError
from energon_tvm.isa.instructions import WORD_BYTES, make
from energon_tvm.isa.program import MemoryMap, Program, Region, canonical_json
from hypothesis import given
from strategies import BY_FINGERPRINT, CONFIGS, config_of, container, fingerprint_of, programs, reseal, sections_of

CODE, MEMMAP, META, CONFIG = 1, 2, 3, 4
TABLE_END = 32 + 4 * 12  # header and a section table of four entries: where the code section starts
V1_MESSAGE = ("container format version 1 predates programs that carry their hardware config; this build reads "
              "version 2: recompile the model")


@pytest.fixture
def program(edge):
    code = [make("LD.Q", dram=0x100, rows=4, buf=0), make("A.INIT", rows=4), make("HALT")]
    regions = MemoryMap((Region("q", 0x100, "int16", (4, 64), "SD"), Region("out", 0x1000, "float32", (4, 64), "SD")))
    return Program.build(edge, code, regions, {"labels": ["q0:4", "q0:4", "end"]})


@pytest.fixture
def blob(program, edge):
    return program.to_bytes(edge)


def rejects(blob: bytes, offset: int, *fragments: str, cfg=None) -> BinaryFormatError:
    with pytest.raises(BinaryFormatError) as err:
        Program.from_bytes(blob, cfg)
    assert err.value.offset == offset, str(err.value)
    assert str(err.value).startswith(f"byte {offset}: ")
    for fragment in fragments:
        assert fragment in str(err.value)
    return err.value


@given(programs())
def test_decode_inverts_encode(p):
    cfg = config_of(p)  # the built-in machine, perhaps under another name than the program's
    raw = p.to_bytes()
    assert p.to_bytes(cfg) == raw
    assert Program.from_bytes(raw, cfg) == p  # cfg is a check; the binary's own config is used
    assert Program.from_bytes(raw) == p  # the binary carries its config
    assert Program.from_bytes(raw).to_bytes(cfg) == raw


def test_layout_matches_the_documented_format(blob, program, edge):
    assert blob[:4] == b"ENGN"
    assert blob[4:6] == (2).to_bytes(2, "little")
    assert blob[8:24] == edge.fingerprint
    assert [kind for kind, _ in sections_of(blob)] == [CODE, MEMMAP, META, CONFIG]
    assert container(sections_of(blob), edge.fingerprint) == blob
    assert len(sections_of(blob)[0][1]) == WORD_BYTES * len(program.code)
    config = sections_of(blob)[3][1]
    assert config == canonical_json(edge.to_dict())
    assert fingerprint_of(json.loads(config)) == edge.fingerprint


def test_truncated_below_the_header(blob):
    rejects(blob[:20], 20, "truncated: 20 bytes", "at least 40")


def test_truncated_inside_the_body(blob):
    err = rejects(blob[:-5], 28, f"header says {len(blob)} bytes", f"has {len(blob) - 5}", "truncated")
    assert err.offset == 28


def test_trailing_data(blob):
    rejects(blob + b"\x00", 28, "trailing data")


def test_wrong_magic(blob):
    rejects(b"ELF\x7f" + blob[4:], 0, "bad magic b'ELF\\x7f'")


def test_unknown_container_version(blob):
    rejects(blob[:4] + (7).to_bytes(2, "little") + blob[6:], 4, "container format version 7")


def test_version_1_is_refused_with_what_to_do(blob, edge):
    # a version-1 binary as that format had it: three sections, the config name in the metadata
    code, memmap, _meta, _config = sections_of(blob)
    v1 = container([code, memmap, (META, canonical_json({"config": "edge"}))], edge.fingerprint, fmt=1)
    err = rejects(v1, 4, V1_MESSAGE)
    assert str(err) == f"byte 4: {V1_MESSAGE}"


def test_unknown_isa_version(blob):
    rejects(blob[:6] + (9).to_bytes(2, "little") + blob[8:], 6, "ISA version 9")


def test_isa_version_2_binary_is_refused_with_what_to_do(blob, edge):
    # version 2 had no KV_STRIDE: its programs laid K and V out in two regions the runtime no longer fills
    rejects(container(sections_of(blob), edge.fingerprint, isa=2), 6, "ISA version 2", "recompile the model")


def test_bad_checksum_names_both_digests(blob):
    bad = blob[:-1] + bytes([blob[-1] ^ 1])
    rejects(bad, len(blob) - 8, "checksum mismatch", bad[-8:].hex(), blob[-8:].hex())


def test_corrupt_payload_fails_the_checksum(blob):
    bad = bytearray(blob)
    bad[100] ^= 0x10
    rejects(bytes(bad), len(blob) - 8, "checksum mismatch")


def test_config_mismatch(blob, edge, server):
    rejects(blob, 8, edge.fingerprint.hex(), "'server' has " + server.fingerprint.hex(), cfg=server)


def test_a_program_carries_a_config_that_is_not_built_in(program, edge):
    custom = load_config("edge").replace(buffer_kv=131072, name="custom")
    assert custom.fingerprint not in BY_FINGERPRINT
    p = Program.build(custom, program.code, program.memory_map, program.meta)
    raw = p.to_bytes()
    assert raw[8:24] == custom.fingerprint
    loaded = Program.from_bytes(raw)  # nothing to look up: no cfg argument
    assert loaded == p and loaded.config == custom and loaded.config is not custom
    assert loaded.config_name == "custom" and loaded.config_fingerprint == custom.fingerprint
    assert loaded.to_bytes() == raw
    assert Program.from_bytes(raw, custom) == p
    rejects(raw, 8, custom.fingerprint.hex(), "'edge' has " + edge.fingerprint.hex(), cfg=edge)


def test_edited_config_section_fails_the_fingerprint(blob, edge):
    # the config section says another machine than the header: a same-length edit, checksum redone
    assert blob.count(b'"kv":65536') == 1
    raw = reseal(blob.replace(b'"kv":65536', b'"kv":98304'))
    offset = len(blob) - 8 - len(sections_of(blob)[3][1])
    edited = edge.replace(buffer_kv=98304)
    err = rejects(raw, offset, "hardware config section describes config 'edge' with fingerprint "
                  f"{edited.fingerprint.hex()}; the header (byte 8) records {edge.fingerprint.hex()}")
    assert isinstance(err, BinaryFormatError)
    # and the other way round: the header's fingerprint edited, the config section as written
    rejects(reseal(blob[:8] + edited.fingerprint + blob[24:]), offset, "the header (byte 8) records "
            f"{edited.fingerprint.hex()}")


def test_encoding_for_another_config_is_a_config_error(program, server):
    with pytest.raises(ConfigError, match="built for config 'edge'; cannot encode it for 'server'"):
        program.to_bytes(server)


def test_unknown_opcode_names_its_word(blob, edge):
    code, memmap, meta, config = sections_of(blob)
    words = code[1]
    bad = words[:WORD_BYTES] + b"\x3f" + words[WORD_BYTES + 1:]
    raw = container([(CODE, bad), memmap, meta, config], edge.fingerprint)
    rejects(raw, 32 + 4 * 12 + WORD_BYTES, "unknown opcode 0x3f")


def test_field_out_of_range_in_a_binary(blob, edge):
    code, memmap, meta, config = sections_of(blob)
    ins = make("A.INIT", rows=1)
    word = int.from_bytes(code[1][WORD_BYTES:2 * WORD_BYTES], "little")
    _f, pos, n = ins.op.layout(edge)[0]
    word &= ~(((1 << n) - 1) << pos)  # rows = 0
    words = code[1][:WORD_BYTES] + word.to_bytes(WORD_BYTES, "little") + code[1][2 * WORD_BYTES:]
    raw = container([(CODE, words), memmap, meta, config], edge.fingerprint)
    rejects(raw, TABLE_END + WORD_BYTES, "A.INIT: field rows = 0 is outside 1..")


@pytest.mark.parametrize("kinds, offset, fragment", [
    ([CODE, MEMMAP, META], 24, "section count 3"),
    ([CODE, MEMMAP, META, CONFIG, CONFIG], 24, "section count 5"),
    ([MEMMAP, CODE, META, CONFIG], 32, "section 0 has kind 2; section 0 must be kind 1 (code)"),
    ([CONFIG, CODE, MEMMAP, META], 32, "section 0 has kind 4; section 0 must be kind 1 (code)"),
    ([CODE, META, META, CONFIG], 44, "section 1 has kind 3"),
    ([CODE, MEMMAP, 9, CONFIG], 56, "section 2 has kind 9"),
    ([CODE, MEMMAP, META, 9], 68, "section 3 has kind 9; section 3 must be kind 4 (hardware config)"),
])
def test_sections_exactly_once_in_order(blob, edge, kinds, offset, fragment):
    payloads = dict(sections_of(blob))
    raw = container([(k, payloads.get(k, b"")) for k in kinds], edge.fingerprint)
    rejects(raw, offset, fragment)


def test_section_table_past_the_end(edge):
    header_only = reseal(b"ENGN" + bytes([2, 0, 3, 0]) + edge.fingerprint + bytes([4, 0]) + bytes(6) + bytes(8))
    rejects(header_only, 32, "section table of 4 entries ends at byte 80, past the end of the 32-byte body")


def test_section_placement(blob):
    bad = bytearray(blob)
    bad[32 + 12 + 4] += 1  # the memory map's offset
    rejects(reseal(bytes(bad)), 44, "section 1 (memory map): bad placement offset=")


# ``at``: where in the payload the error points (canonical-form errors name the first differing byte)
@pytest.mark.parametrize("payload, fragment, at", [
    (b"[{", "memory map section is not valid JSON", 0),
    (b"\xff", "memory map section is not valid JSON", 0),
    (b"[" + b"1" * 5000 + b"]", "memory map section is not valid JSON", 0),  # beyond Python's int digits
    (b"[" * 100000, "memory map section is not valid JSON", 0),  # deeper than the recursion limit
    (b'{"q":1}', "memory map section is malformed", 0),
    (b'[{"name":"q"}]', "memory map section is malformed: 'offset'", 0),
    (b'[{"dtype":"int16","layout":"","name":"q","offset":Infinity,"shape":[1]}]', "malformed", 0),
    (b'[{"dtype":"int4","layout":"","name":"q","offset":0,"shape":[1]}]', "unknown dtype 'int4'", 0),
    (b'[{"dtype":"int16","layout":"","name":"q","offset":0,"shape":[0]}]', "malformed", 0),
    (b'[{"dtype":"int16","layout":"","name":"q","offset":0,"shape":[1073741824]}]', "bytes of DRAM", 0),
    (b'[{"dtype":"int16", "layout":"","name":"q","offset":0,"shape":[1]}]', "not canonical JSON", 18),
    (b'[{"dtype":"int16","layout":"","name":"q","offset":0.0,"shape":[1]}]', "not canonical JSON", 51),
    (b'[{"dtype":"int16","layout":"","name":"q","offset":0,"shape":[1],"x":1}]', "not canonical JSON", 63),
])
def test_bad_memory_map(blob, edge, payload, fragment, at):
    code, _memmap, meta, config = sections_of(blob)
    raw = container([code, (MEMMAP, payload), meta, config], edge.fingerprint)
    rejects(raw, TABLE_END + len(code[1]) + at, fragment)


@pytest.mark.parametrize("payload, fragment, at", [
    (b"[]", "metadata section is a JSON list, not an object", 0),
    (b'{"config":"edge"}', 'metadata has a "config" entry', 0),  # the name is the config section's
    (b'{"config":7}', 'metadata has a "config" entry (7)', 0),
    (b'{"x":NaN}', "metadata section is malformed", 0),
    (b'{"x": 1}', "not canonical JSON", 5),
    (b'{"y":1,"x":2}', "not canonical JSON", 2),
])
def test_bad_metadata(blob, edge, payload, fragment, at):
    code, memmap, _meta, config = sections_of(blob)
    raw = container([code, memmap, (META, payload), config], edge.fingerprint)
    rejects(raw, TABLE_END + len(code[1]) + len(memmap[1]) + at, fragment)


def _edge_dict(**changes) -> dict:
    d = load_config("edge").to_dict()
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = d
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value
    return d


_DELETE = object()
_NESTED = json.loads("[" * 50 + "]" * 50)


# ``at``: where in the payload the error points; every error names the section and the field
@pytest.mark.parametrize("payload, fragment, at", [
    (b"", "hardware config section is not valid JSON", 0),
    (b"{" * 5000, "hardware config section is not valid JSON", 0),
    (b"[]", "hardware config section is invalid: hardware config = [] must be a dict", 0),
    (canonical_json(_edge_dict(clock_ghz=_DELETE)), "missing field(s) clock_ghz", 0),
    (canonical_json(_edge_dict(turbo=True)), "unknown field(s) 'turbo'", 0),
    (canonical_json(_edge_dict(buffer_bytes__sram=64)), "buffer_bytes: unknown field(s) 'sram'", 0),
    (canonical_json(_edge_dict(energy__au_exp=_DELETE)), "energy table: missing field(s) au_exp", 0),
    (canonical_json(_edge_dict(clock_ghz="1.0")), "config 'edge': clock_ghz = '1.0' must be a positive number", 0),
    (canonical_json(_edge_dict(max_head_dim=True)), "max_head_dim = True must be a positive integer", 0),
    (canonical_json(_edge_dict(buffer_bytes__kv=_NESTED)), "buffers.kv = [[[[[[[...]]]]]]] must be an integer", 0),
    (canonical_json(_edge_dict(name=7)), "config name = 7 must be a string", 0),
    (canonical_json(_edge_dict(dram_burst_bytes=1 << 200)), "dram_burst_bytes = 1606", 0),
    (canonical_json(_edge_dict(energy__leakage_mw=-1.0)),
     "config 'edge': energy table 'energy_45nm': leakage_mw = -1.0 must be a finite number >= 0", 0),
    (canonical_json(_edge_dict()).replace(b'"clock_ghz":1.0', b'"clock_ghz":NaN'), "clock_ghz = nan", 0),
    (canonical_json(_edge_dict()).replace(b'"leakage_mw":30.0', b'"leakage_mw":Infinity'), "leakage_mw = inf", 0),
    (canonical_json(_edge_dict()).replace(b'"clock_ghz":1.0', b'"clock_ghz":1' + b'0' * 400),
     "clock_ghz = 1000", 0),
    (json.dumps(_edge_dict(), sort_keys=True).encode(), "hardware config section is not canonical JSON", 20),
    (canonical_json(_edge_dict()).replace(b'"clock_ghz":1.0', b'"clock_ghz":1.00'), "not canonical JSON", 202),
    # an int where the config has a float is another machine: the fingerprint tells
    (canonical_json(_edge_dict()).replace(b'"clock_ghz":1.0', b'"clock_ghz":1'), "the header (byte 8) records", 0),
])
def test_bad_config_section(blob, edge, payload, fragment, at):
    code, memmap, meta, _config = sections_of(blob)
    raw = container([code, memmap, meta, (CONFIG, payload)], edge.fingerprint)
    err = rejects(raw, TABLE_END + len(code[1]) + len(memmap[1]) + len(meta[1]) + at, fragment)
    assert len(str(err)) < 600  # hostile values are quoted, not dumped


def test_config_name_is_a_label(blob, edge):
    # the fingerprint identifies the machine; the recorded name is kept as it is
    code, memmap, meta, _config = sections_of(blob)
    raw = container([code, memmap, meta, (CONFIG, canonical_json(edge.replace(name="my edge").to_dict()))],
                    edge.fingerprint)
    p = Program.from_bytes(raw)
    assert p.config_name == "my edge" and p.to_bytes(edge) == raw
    assert p.config == edge.replace(name="my edge")


def test_every_error_is_a_project_error():
    for cls in (BinaryFormatError, ConfigError):
        assert issubclass(cls, EnergonError)
    for blob in (b"", b"ENGN", bytes(64), b"ENGN" + bytes(60)):
        with pytest.raises(EnergonError):
            Program.from_bytes(blob)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_empty_program(name):
    cfg = CONFIGS[name]
    p = Program.build(cfg, [], MemoryMap(()))
    assert Program.from_bytes(p.to_bytes(cfg)) == p
    assert Program.from_bytes(p.to_bytes()) == p and p.config is cfg


def test_metadata_does_not_name_the_config(edge):
    with pytest.raises(ValueError, match='metadata has a "config" entry'):
        Program.build(edge, [], MemoryMap(()), {"config": "edge"})


def test_a_config_from_before_transfers_in_flight_is_refused_with_what_to_do(blob):
    # the config section as binaries had it before the machine kept DMA transfers in flight, the header
    # fingerprint made to match it: well formed, but for a machine model this build no longer simulates
    code, memmap, meta, (kind, config) = sections_of(blob)
    old = json.loads(config)
    del old["dram_outstanding_requests"]
    older = container([code, memmap, meta, (kind, canonical_json(old))], fingerprint_of(old))
    err = rejects(older, older.index(canonical_json(old)), "predates the machine model's dram_outstanding_requests",
                  "recompile the model")
    assert "\n" not in str(err)
