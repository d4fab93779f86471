"""The binary container: round trips, and one typed error per way a binary can be wrong, each naming
the byte offset and the value seen."""

import json

import pytest
from energon_tvm.isa.errors import BinaryFormatError, ConfigError, EnergonError
from energon_tvm.isa.instructions import WORD_BYTES, make
from energon_tvm.isa.program import MemoryMap, Program, Region, canonical_json
from hypothesis import given
from strategies import CONFIGS, config_of, container, programs, reseal, sections_of

CODE, MEMMAP, META = 1, 2, 3


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
    cfg = config_of(p)
    raw = p.to_bytes(cfg)
    assert Program.from_bytes(raw, cfg) == p
    assert Program.from_bytes(raw) == p  # the built-in config is found by its fingerprint
    assert Program.from_bytes(raw).to_bytes(cfg) == raw


def test_layout_matches_the_documented_format(blob, program, edge):
    assert blob[:4] == b"ENGN"
    assert blob[8:24] == edge.fingerprint
    assert [kind for kind, _ in sections_of(blob)] == [CODE, MEMMAP, META]
    assert container(sections_of(blob), edge.fingerprint) == blob
    assert len(sections_of(blob)[0][1]) == WORD_BYTES * len(program.code)


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


def test_unknown_isa_version(blob):
    rejects(blob[:6] + (9).to_bytes(2, "little") + blob[8:], 6, "ISA version 9")


def test_bad_checksum_names_both_digests(blob):
    bad = blob[:-1] + bytes([blob[-1] ^ 1])
    rejects(bad, len(blob) - 8, "checksum mismatch", bad[-8:].hex(), blob[-8:].hex())


def test_corrupt_payload_fails_the_checksum(blob):
    bad = bytearray(blob)
    bad[100] ^= 0x10
    rejects(bytes(bad), len(blob) - 8, "checksum mismatch")


def test_config_mismatch(blob, edge, server):
    rejects(blob, 8, edge.fingerprint.hex(), "'server' has " + server.fingerprint.hex(), cfg=server)


def test_config_not_built_in(blob, edge):
    custom = edge.replace(name="mine", buffer_q=8192)
    raw = container(sections_of(blob), custom.fingerprint)
    rejects(raw, 8, "not built in", custom.fingerprint.hex())
    # the same binary loads with that config given explicitly
    meta = json.loads(sections_of(blob)[2][1])
    assert Program.from_bytes(raw, custom).meta == meta


def test_encoding_for_another_config_is_a_config_error(program, server):
    with pytest.raises(ConfigError, match="built for config 'edge'; cannot encode it for 'server'"):
        program.to_bytes(server)


def test_unknown_opcode_names_its_word(blob, edge):
    code, memmap, meta = sections_of(blob)
    words = code[1]
    bad = words[:WORD_BYTES] + b"\x3f" + words[WORD_BYTES + 1:]
    raw = container([(CODE, bad), memmap, meta], edge.fingerprint)
    rejects(raw, 32 + 3 * 12 + WORD_BYTES, "unknown opcode 0x3f")


def test_field_out_of_range_in_a_binary(blob, edge):
    code, memmap, meta = sections_of(blob)
    ins = make("A.INIT", rows=1)
    word = int.from_bytes(code[1][WORD_BYTES:2 * WORD_BYTES], "little")
    _f, pos, n = ins.op.layout(edge)[0]
    word &= ~(((1 << n) - 1) << pos)  # rows = 0
    words = code[1][:WORD_BYTES] + word.to_bytes(WORD_BYTES, "little") + code[1][2 * WORD_BYTES:]
    raw = container([(CODE, words), memmap, meta], edge.fingerprint)
    rejects(raw, 68 + WORD_BYTES, "A.INIT: field rows = 0 is outside 1..")


@pytest.mark.parametrize("kinds, offset, fragment", [
    ([CODE, MEMMAP], 24, "section count 2"),
    ([CODE, MEMMAP, META, META], 24, "section count 4"),
    ([MEMMAP, CODE, META], 32, "section 0 has kind 2; section 0 must be kind 1 (code)"),
    ([CODE, META, META], 44, "section 1 has kind 3"),
    ([CODE, MEMMAP, 9], 56, "section 2 has kind 9"),
])
def test_sections_exactly_once_in_order(blob, edge, kinds, offset, fragment):
    payloads = dict(sections_of(blob))
    raw = container([(k, payloads.get(k, b"")) for k in kinds], edge.fingerprint)
    rejects(raw, offset, fragment)


def test_section_table_past_the_end(edge):
    header_only = reseal(b"ENGN" + bytes([1, 0, 1, 0]) + edge.fingerprint + bytes([3, 0]) + bytes(6) + bytes(8))
    rejects(header_only, 32, "section table of 3 entries ends at byte 68, past the end of the 32-byte body")


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
    code, _memmap, meta = sections_of(blob)
    raw = container([code, (MEMMAP, payload), meta], edge.fingerprint)
    rejects(raw, 32 + 36 + len(code[1]) + at, fragment)


@pytest.mark.parametrize("payload, fragment, at", [
    (b"[]", "metadata section is a JSON list, not an object", 0),
    (b'{"labels":[]}', 'metadata "config" entry is None', 0),
    (b'{"config":7}', 'metadata "config" entry is 7', 0),
    (b'{"config":"edge","x":NaN}', "metadata section is malformed", 0),
    (b'{"config": "edge"}', "not canonical JSON", 10),
    (b'{"x":1,"config":"edge"}', "not canonical JSON", 2),
])
def test_bad_metadata(blob, edge, payload, fragment, at):
    code, memmap, _meta = sections_of(blob)
    raw = container([code, memmap, (META, payload)], edge.fingerprint)
    rejects(raw, 32 + 36 + len(code[1]) + len(memmap[1]) + at, fragment)


def test_config_name_is_a_label(blob, edge):
    # the fingerprint identifies the machine; the recorded name is kept as it is
    code, memmap, _meta = sections_of(blob)
    raw = container([code, memmap, (META, canonical_json({"config": "my edge"}))], edge.fingerprint)
    p = Program.from_bytes(raw)
    assert p.config_name == "my edge" and p.to_bytes(edge) == raw


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
