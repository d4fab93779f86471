"""Assembly text: the round trip over random programs, the golden disassembly of a hand-written
program, what the assembler accepts, and one AssemblerError per way text can be wrong."""

import json

import pytest
from energon_tvm.isa.asm import OPERAND_COLUMN, assemble, assemble_bytes, disassemble, format_instruction
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import AssemblerError, ConfigError
from energon_tvm.isa.instructions import make
from energon_tvm.isa.program import MemoryMap, Program, Region
from hypothesis import given
from strategies import CONFIGS, config_of, programs

EDGE_FP = CONFIGS["edge"].fingerprint.hex()

# One 64-query x 128-key tile of one head with two filter rounds (Q4 x K2 keeps alpha = -0.25, then
# Q4 x K4 at alpha = 0), written by hand in the lenient style the assembler accepts: any case, any
# operand order, defaults left out, decimal or hex, both comment characters.
SMALL_PROGRAM = """\
; Energon: one tile, edge
.config edge
.region params   offset=0x0     dtype=float64 shape=1,2          layout=HS
.region q        offset=0x100   dtype=int16   shape=1,1,64,64    layout=BHSD
.region k_planes offset=0x4000  dtype=uint8   shape=1,1,16,128,8 layout=BHPSd   # plane-major
.region kv       offset=0x8000  dtype=int16   shape=2,1,1,128,64 layout=TBHSD
.region out      offset=0x10000 dtype=float32 shape=1,1,64,64    layout=BHSD
.meta {META}

SETR reg=HEAD_DIM value=64
setr reg=seq_q value=64
setr reg=seq_k value=128
setr reg=V_OFFSET value=0x4000                       # V rows sit 16 KiB after their K rows
ld.param dram=0 heads=1 buf=0
ld.q buf=0x0 rows=64 dram=0x100
ld.kp dram=0x4000 keys=128 plane_lo=0 plane_hi=4 buf=0
signal unit=load token=0
wait unit=filter token=0
f.cand rows=64 q0=0 k0=0 keys=128 idx=0 bias=0 head=0      ; causal=0 usebias=0 by default
f.score qb=4 kb=2 rows=64 q=0 kp=0 keys=128 sc=0 idx=0 bias=0 head=0 first=1
f.select round=1 alpha=-256 rows=64 q0=0 k0=0 keys=128 sc=0 idx=0 head=0
f.score qb=4 kb=4 rows=64 q=0 kp=0 keys=128 sc=0 idx=0 bias=0 head=0 first=1
f.select round = 2 alpha = 0 rows = 64 q0=0 k0=0 keys=128 sc=0 idx=0 head=0
signal unit=FILTER token=1
signal unit=Filter token=2
wait unit=load token=1
ld.kv dram=0x8000 keys=128 rows=64 idx=0 buf=0
signal unit=load token=3
wait unit=attend token=2
wait unit=attend token=3
a.init rows=64
a.attn rows=64 q=0 keys=128 kv=0 idx=0 bias=0 head=0
a.norm rows=64 out=0 head=0
signal unit=attend token=4
wait unit=store token=4
st.out dram=0x10000 rows=64 buf=0
halt
"""
LABELS = (["header"] * 4 + ["b0 h0"] + ["b0 h0 q0:64"] + ["b0 h0 k0:128"] + [""] * 2
          + ["b0 h0 q0:64 k0:128"] + ["b0 h0 q0:64 k0:128 round 1"] * 2 + ["b0 h0 q0:64 k0:128 round 2"] * 2
          + [""] * 3 + ["b0 h0 q0:64 k0:128 kept"] + [""] * 3 + ["b0 h0 q0:64"]
          + ["b0 h0 q0:64 k0:128"] + ["b0 h0 q0:64"] + [""] * 2 + ["b0 h0 q0:64", "end"])
META = {"labels": LABELS, "workload": {"batch": 1, "heads": 1, "seq_q": 64, "seq_k": 128, "head_dim": 64},
        "mpmrf": {"rounds": [[4, 2, -0.25], [4, 4, 0.0]]}}


def small_program() -> Program:
    return assemble(SMALL_PROGRAM.replace("{META}", json.dumps(META)))


def test_golden_disassembly_of_a_small_program(golden, edge):
    p = small_program()
    assert len(p.code) == len(LABELS) and p.labels == LABELS
    text = disassemble(p.to_bytes(edge))
    golden("small_program.asm", text)
    assert assemble(text) == p
    assert disassemble(p) == text


@given(programs())
def test_assemble_inverts_disassemble(p):
    cfg = config_of(p)
    raw = p.to_bytes(cfg)
    text = disassemble(raw)
    assert assemble_bytes(text) == raw
    assert assemble(text) == p
    assert assemble(text, cfg) == p
    assert disassemble(p, cfg) == text


def test_disassembly_format(edge):
    regions = MemoryMap((Region("q", 0x100, "int16", (2, 64), "SD"), Region("my out", 0x1000, "float32", (), "")))
    code = [make("SETR", reg=2, value=128), make("LD.Q", dram=0x100, rows=2, buf=0x40),
            make("WAIT", unit=1, token=3), make("F.SELECT", round=1, alpha=-512, rows=2, q0=0, k0=8,
                                                 keys=8, sc=0x10, idx=1, head=0), make("HALT")]
    p = Program.build(edge, code, regions, {"labels": ["hdr", "q\nrow", "", "h0 q0:2", "end"], "x": 1})
    lines = disassemble(p).splitlines()
    assert lines[1] == f".config edge {EDGE_FP}"
    assert lines[2] == ".region q offset=0x00000100 dtype=int16 shape=2,64 layout=SD"
    assert lines[3] == '.region "my out" offset=0x00001000 dtype=float32 shape=() layout=""'
    assert lines[4] == '.meta {"x":1}'  # the labels are on their instructions; the config is .config
    code_lines = lines[6:]
    assert code_lines[0].split(";")[0].split() == ["setr", "reg=SEQ_K", "value=128", "@hdr"]
    assert code_lines[0].split(";")[1].split() == ["0", "ctrl"]
    # addresses in hex as wide as the field, counts in decimal, enums by name; a label stays on its line
    assert code_lines[1].split(";")[0].split() == ["ld.q", "dram=0x00000100", "rows=2", "buf=0x0040", '@"q\\nrow"']
    assert code_lines[1].split(";")[1].split() == ["1", "load"]
    assert code_lines[2].split(";")[0].split() == ["wait", "unit=FILTER", "token=3", '@""']
    assert "alpha=-512" in code_lines[3] and "sc=0x0010" in code_lines[3] and '@"h0 q0:2"' in code_lines[3]
    assert code_lines[4].split(";") == [f"{'    halt @end':<{OPERAND_COLUMN}} ", "    4 ctrl"]
    assert format_instruction(code[4], edge) == "halt"
    assert assemble(disassemble(p)) == p


def test_labels_that_are_not_strings_stay_in_the_metadata(edge):
    p = Program.build(edge, [make("A.INIT", rows=1), make("HALT")], MemoryMap(()), {"labels": ["a", 7]})
    text = disassemble(p)
    assert '.meta {"labels":["a",7]}' in text and "@" not in text
    assert assemble(text) == p


def test_labels_are_optional_per_instruction_and_given_once(edge):
    p = assemble(".config edge\na.init rows=1 @tile0\nhalt\n")
    assert p.labels == ["tile0", ""]
    with pytest.raises(AssemblerError, match="both in .meta and as @label"):
        assemble('.config edge\n.meta {"labels": ["x", "y"]}\na.init rows=1 @tile0\nhalt\n')
    with pytest.raises(AssemblerError, match="comes last"):
        assemble(".config edge\na.init @tile0 rows=1\nhalt\n")


def test_disassembly_without_labels_shows_units(edge):
    p = Program.build(edge, [make("A.INIT", rows=1), make("SIGNAL", unit=3, token=0)], MemoryMap(()))
    notes = [line.split(";")[1].split() for line in disassemble(p).splitlines() if line.startswith("    ")]
    assert notes == [["0", "attend"], ["1", "store"]]


def test_lenient_input(edge, server):
    text = ("\r\n  # header\r\n.CONFIG edge\r\n"
            "LD.Q  buf = 0x10  ROWS=0x3 dram=16\r\n"
            "  f.cand rows=1 q0=0 k0=0 keys=8 idx=0 bias=0 head=0 ; defaults\r\n"
            "setr reg=causal_shift value=0xffffffff\r\n")
    p = assemble(text)
    assert p.code[0] == make("LD.Q", dram=16, rows=3, buf=16)
    cand = p.code[1]
    assert cand == make("F.CAND", rows=1, q0=0, k0=0, keys=8, idx=0, bias=0, head=0)
    assert all(v == f.default for f, v in zip(cand.op.fields, cand.args) if f.default is not None)
    assert p.code[2].value == 0xFFFFFFFF
    assert p.meta == {} and p.memory_map == MemoryMap(()) and p.config == edge
    # without .config the cfg argument decides
    assert assemble("halt", server).config_fingerprint == server.fingerprint
    assert assemble(".config server\nhalt").config_name == "server"
    assert assemble("", edge) == Program.build(edge, [], MemoryMap(()))


def test_config_name_is_a_label(edge):
    # as in the container: the fingerprint picks the machine, the name is kept as written
    p = assemble(f'.config "edge copy" {EDGE_FP}\nhalt')
    assert p.config_name == "edge copy" and p.config_fingerprint == edge.fingerprint
    assert p.config == edge.replace(name="edge copy")
    assert disassemble(p).splitlines()[1] == f'.config "edge copy" {EDGE_FP}'
    assert assemble(f'.config "edge copy" {EDGE_FP}\nhalt', edge) == p  # so with a cfg, too


def test_a_meta_config_entry_from_a_version_1_text_is_dropped():
    # texts disassembled before programs carried their config have the name in .meta as well
    old, new = '.config edge\n.meta {"config":"edge","x":1}\nhalt', '.config edge\n.meta {"x":1}\nhalt'
    assert assemble(old) == assemble(new) and assemble(new).meta == {"x": 1}


def test_a_program_for_a_config_that_is_not_built_in(edge):
    custom = load_config("edge").replace(buffer_kv=131072, name="custom")
    p = Program.build(custom, [make("A.INIT", rows=1), make("HALT")], MemoryMap(()), {"x": 1})
    text = disassemble(p.to_bytes())  # the binary alone is enough to disassemble it
    assert text.splitlines()[1] == f".config custom {custom.fingerprint.hex()}"
    assert text == disassemble(p) == disassemble(p, custom)
    # the text names its machine without carrying it: that machine is given to reassemble it
    assert assemble(text, custom) == p and assemble_bytes(text, custom) == p.to_bytes()
    with pytest.raises(AssemblerError, match=f"config 'custom' with fingerprint {custom.fingerprint.hex()} is not "
                                             f"a built-in config; pass that config"):
        assemble(text)
    with pytest.raises(ConfigError, match="the given config 'edge' has fingerprint"):
        disassemble(p, edge)


def test_disassembling_for_another_config_is_a_config_error(server):
    p = small_program()
    with pytest.raises(ConfigError, match="the given config 'server' has fingerprint"):
        disassemble(p, server)


def error(text: str, cfg=None) -> AssemblerError:
    with pytest.raises(AssemblerError) as err:
        assemble(text, cfg)
    return err.value


ROWS_RANGE = f"1..{CONFIGS['edge'].max_query_tile}"
# (text after a `.config edge` line, line of the error, fragments of the message)
BAD_TEXT = [
    ("ld.x dram=0", 2, "unknown mnemonic 'ld.x'"),
    ("ld.q dram=0 rows=1 buf=0 bogus=1", 2, "LD.Q has no field 'bogus'; fields are dram, rows, buf"),
    ("ld.q dram=0 buf=0", 2, "LD.Q: missing field 'rows'"),
    ("ld.q dram=0 rows=1 ROWS=2 buf=0", 2, "LD.Q: field 'rows' given twice"),
    ("ld.q dram=0xZZ rows=1 buf=0", 2, "bad value '0xZZ' for field dram"),
    ('ld.q dram="0" rows=1 buf=0', 2, "bad value '\"0\"' for field dram"),
    ("ld.q dram=0 rows=999 buf=0", 2, f"LD.Q: field rows = 999 is outside {ROWS_RANGE} "),
    ("ld.q dram=-1 rows=1 buf=0", 2, "field dram = -1 is outside 0..4294967295"),
    ("f.select round=1 alpha=-1025 rows=1 q0=0 k0=0 keys=1 sc=0 idx=0 head=0", 2, "alpha = -1025"),
    ("setr reg=FOO value=1", 2, "bad value 'FOO' for field reg", "HEAD_DIM, SEQ_Q"),
    ("setr reg=0 value=" + "9" * 5000, 2, "for field value: too long"),
    ("halt\nld.q dram 0", 3, "LD.Q: expected name=value, got 'dram 0'"),
    ("ld.q dram=0 rows=1 buf", 2, "expected name=value, got 'buf'"),
    ("ld.q dram==0", 2, "expected name=value, got 'dram = ='"),
    ('"halt"', 2, "expected a mnemonic or a directive, got '\"halt\"'"),
    ("= 1", 2, "expected a mnemonic or a directive, got '='"),
    (".section text", 2, "unknown directive '.section'"),
    ("halt\n.config edge", 3, ".config given twice, or after the first region or instruction"),
    ('.meta {"a":', 2, ".meta is not valid JSON", "'{\"a\":'"),
    ('.meta {"a":NaN}', 2, ".meta is not valid JSON", "NaN is not JSON"),
    (".meta [1]", 2, ".meta must be a JSON object, got '[1]'"),
    (".meta", 2, ".meta is not valid JSON"),
    ('.meta {} x', 2, "unexpected text after .meta JSON: 'x'"),
    ('.meta {}\n.meta {}', 3, ".meta given twice"),
    ('.meta {"config":"server"}', 2, ".meta says config 'server' but .config says 'edge'"),
    (".region q offset=0 dtype=int16 shape=1", 2, ".region 'q': missing layout"),
    (".region q offset=0 dtype=int16 shape=1 layout=x size=2", 2, "unknown key(s) size"),
    (".region q offset=0 dtype=int4 shape=1 layout=x", 2, "unknown dtype 'int4'"),
    (".region q offset=0 dtype=int16 shape=1,x layout=x", 2, "bad number 'x' for .region 'q' shape"),
    (".region q offset=0 dtype=int16 shape=0 layout=x", 2, "shape (0,) invalid"),
    (".region q offset=0 dtype=int16 shape=4 layout=x\n.region k offset=6 dtype=int16 shape=4 layout=x", 3,
     "regions 'q' and 'k' overlap"),
    (".region q offset=0 dtype=int16 shape=4 layout=x\n.region q offset=8 dtype=int16 shape=4 layout=x", 3,
     "names a region twice"),
    (".region q offset=0x3fffffff dtype=int16 shape=4 layout=x", 2, "ends at byte 1073741831", "1073741824"),
    (".region", 2, "malformed directive: expected .region NAME offset=.."),
    (".region offset=0", 2, ".region 'offset': expected name=value, got '= 0'"),
    ('.region "q offset=0', 2, "unterminated string '\"q offset=0'"),
    ('.region "\\q" offset=0 dtype=int16 shape=4 layout=x', 2, "bad string '\"\\\\q\"'"),
]


@pytest.mark.parametrize("body, line, fragments", [(b, n, f) for b, n, *f in BAD_TEXT], ids=lambda x: None)
def test_assembler_errors_name_line_and_text(body, line, fragments):
    err = error(".config edge\n" + body)
    assert err.line == line, str(err)
    assert str(err).startswith(f"line {line}: ")
    for fragment in fragments:
        assert fragment in str(err)


@pytest.mark.parametrize("text, cfg_name, line, fragment", [
    ("halt", None, 1, "no .config directive before the first region or instruction and no config given"),
    ("; nothing\n", None, 1, "no .config directive"),
    (".config", None, 1, "malformed directive '.config ': expected .config NAME [FINGERPRINT]"),
    (".config edge abc", None, 1, "bad config fingerprint 'abc': expected 32 hex digits"),
    (".config nope", None, 1, "no built-in config named 'nope'; built-in configs are edge, server"),
    (".config edge " + "0" * 32, None, 1, f"fingerprint {'0' * 32} is not a built-in config (built-in "
                                          f"'edge' has fingerprint {EDGE_FP})"),
    (f"\n.config edge {EDGE_FP}", "server", 2, "the given config 'server' has fingerprint"),
    (".config edge", "server", 1, "program is for config 'edge'; the given config is 'server'"),
])
def test_config_errors(text, cfg_name, line, fragment):
    err = error(text, CONFIGS[cfg_name] if cfg_name else None)
    assert err.line == line and fragment in str(err), str(err)
