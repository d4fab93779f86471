"""Instruction words: the declarations fit, every field round-trips at its limits, bad words are typed
errors naming the byte offset and the value."""

import pytest
from energon_tvm.isa.encoding import check_fields, decode, decode_code, encode, encode_code
from energon_tvm.isa.errors import BinaryFormatError, EncodingError
from energon_tvm.isa.instructions import (
    BY_OPCODE,
    OPCODE_BITS,
    OPS,
    WORD_BITS,
    WORD_BYTES,
    Instruction,
    Reg,
    Unit,
    make,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import CONFIGS, instructions


def word(value: int) -> bytes:
    return value.to_bytes(WORD_BYTES, "little")


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.mnemonic)
def test_declaration_fits_a_word(op, cfg):
    end = OPCODE_BITS + sum(n for _f, _pos, n in op.layout(cfg))
    assert end <= WORD_BITS
    for f in op.fields:
        lo, hi = f.bounds(cfg)
        assert lo <= hi, f"{op.mnemonic}.{f.name} has an empty range on {cfg.name}"
        assert f.default is None or lo <= f.default <= hi


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.mnemonic)
def test_each_instruction_round_trips_at_its_limits(op, cfg):
    for pick in (0, 1):  # every field at its lowest, then at its highest legal value
        ins = Instruction(op, tuple(f.bounds(cfg)[pick] for f in op.fields))
        raw = encode(ins, cfg)
        assert len(raw) == WORD_BYTES
        assert int.from_bytes(raw, "little") & ((1 << OPCODE_BITS) - 1) == op.opcode
        assert decode(raw, cfg) == ins


@pytest.mark.parametrize("op", [op for op in OPS if op.fields], ids=lambda op: op.mnemonic)
def test_each_field_rejects_one_past_its_range(op, cfg):
    base = [f.bounds(cfg)[0] for f in op.fields]
    for i, f in enumerate(op.fields):
        lo, hi = f.bounds(cfg)
        for bad in (lo - 1, hi + 1):
            args = list(base)
            args[i] = bad
            with pytest.raises(EncodingError, match=rf"field {f.name} = {bad} is outside {lo}\.\.{hi}"):
                encode(Instruction(op, tuple(args)), cfg)


@given(data=st.data())
def test_decode_inverts_encode(data):
    cfg = data.draw(st.sampled_from(list(CONFIGS.values())))
    code = data.draw(st.lists(instructions(cfg), max_size=8))
    assert decode_code(encode_code(code, cfg), cfg) == tuple(code)


def test_signed_field_is_twos_complement(edge):
    ins = make("F.SELECT", round=1, alpha=-1024, rows=1, q0=0, k0=0, keys=1, sc=0, idx=0, head=0)
    raw = int.from_bytes(encode(ins, edge), "little")
    _f, pos, n = next(x for x in ins.op.layout(edge) if x[0].name == "alpha")
    assert (raw >> pos) & ((1 << n) - 1) == (1 << n) - 1024
    assert decode(encode(ins, edge), edge).alpha == -1024


def test_enum_fields_hold_their_members(edge):
    ins = make("SETR", reg=Reg.CAUSAL_SHIFT, value=3)
    assert decode(encode(ins, edge), edge).reg == Reg.CAUSAL_SHIFT
    assert decode(encode(make("WAIT", unit=Unit.STORE, token=15), edge), edge).unit == Unit.STORE
    with pytest.raises(EncodingError, match=rf"field reg = {max(Reg) + 1} is outside"):
        encode(make("SETR", reg=max(Reg) + 1, value=0), edge)


def test_field_out_of_range_names_value_range_and_config(edge):
    with pytest.raises(EncodingError) as err:
        encode(make("LD.Q", dram=0, rows=edge.max_query_tile + 1, buf=0), edge)
    assert str(err.value) == (f"LD.Q: field rows = {edge.max_query_tile + 1} is outside "
                              f"1..{edge.max_query_tile} ({edge.row_bits}-bit field on config 'edge')")


def test_field_range_depends_on_config(edge, server):
    ins = make("LD.Q", dram=0, rows=server.max_query_tile, buf=0)
    check_fields(ins, server)
    with pytest.raises(EncodingError, match="config 'edge'"):
        check_fields(ins, edge)


def test_all_zero_word_is_illegal(edge):
    with pytest.raises(BinaryFormatError, match=r"^byte 96: unknown opcode 0x00$") as err:
        decode(bytes(WORD_BYTES), edge, offset=96)
    assert err.value.offset == 96


def test_unknown_opcode_names_offset_and_value(edge):
    unused = next(c for c in range(1, 1 << OPCODE_BITS) if c not in BY_OPCODE)
    with pytest.raises(BinaryFormatError, match=rf"^byte 32: unknown opcode {unused:#04x}$"):
        decode_code(encode(make("HALT"), edge) + word(unused), edge)


def test_reserved_bits_must_be_zero(edge):
    raw = int.from_bytes(encode(make("HALT"), edge), "little") | (1 << 200)
    with pytest.raises(BinaryFormatError, match=r"byte 0: HALT: reserved bits 6\.\.255 are not zero "
                                                r"\(they hold 0x"):
        decode(word(raw), edge)


def test_decoded_field_out_of_range_names_offset_field_and_value(edge):
    # LD.Q with rows = 0: the bits hold a value the declaration forbids
    ins = make("LD.Q", dram=0, rows=1, buf=0)
    _f, pos, n = next(x for x in ins.op.layout(edge) if x[0].name == "rows")
    value = int.from_bytes(encode(ins, edge), "little") & ~(((1 << n) - 1) << pos)
    with pytest.raises(BinaryFormatError, match=rf"^byte 64: LD\.Q: field rows = 0 is outside "
                                                rf"1\.\.{edge.max_query_tile}$"):
        decode(word(value), edge, offset=64)


def test_code_must_be_whole_words(edge):
    with pytest.raises(BinaryFormatError, match=r"^byte 44: code section of 33 bytes is not a whole"):
        decode_code(encode(make("HALT"), edge) + b"\x00", edge, base_offset=44)
    with pytest.raises(BinaryFormatError, match="words are 32"):
        decode(b"\x04", edge)


def test_make_rejects_unknown_and_missing_fields():
    with pytest.raises(EncodingError, match="unknown instruction 'LD.X'"):
        make("LD.X")
    with pytest.raises(EncodingError, match="LD.Q: missing field 'rows'"):
        make("LD.Q", dram=0, buf=0)
    with pytest.raises(EncodingError, match="LD.Q has no field"):
        make("LD.Q", dram=0, rows=1, buf=0, bogus=1)
