"""Robustness: random and mutated binaries and texts raise nothing but the project's errors, and
whatever is accepted round-trips exactly.

The slow test draws its cases from a seeded ``random.Random`` (reproducible, and much faster per case
than hypothesis). Mutations that keep the checksum and length consistent (``reseal``) and rebuilt
sections get past the outer checks, so the deeper validation (section table, code words, JSON
sections, the hardware config) is reached too. Config mutations recompute the header's fingerprint
half of the time, so a broken config whose fingerprint matches reaches ``HardwareConfig.from_dict``.
A quick hypothesis version runs with the ordinary tests.
"""

import json
import random
import time

import pytest
from energon_tvm.isa.asm import assemble, assemble_bytes, disassemble
from energon_tvm.isa.encoding import encode
from energon_tvm.isa.errors import AssemblerError, EnergonError
from energon_tvm.isa.instructions import OPCODE_BITS, OPS, WORD_BYTES
from energon_tvm.isa.program import Program, canonical_json
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    CONFIGS,
    builtin_of,
    container,
    fingerprint_of,
    random_instruction,
    random_program,
    reseal,
    sections_of,
)

CUSTOM = CONFIGS["edge"].replace(buffer_kv=131072, name="custom")
BINARY_CASES = 12_000
TEXT_CASES = 3_000
SEED = 20231
JSON_SNIPPETS = [b"", b"{}", b"[]", b"null", b"NaN", b"[Infinity]", b'{"config":"edge"}', b"1" * 4400,
                 b"[" * 5000, b'"\\ud800"', b"\xff\xfe", b'[{"name":1,"offset":-1,"dtype":"int16","shape":[1],'
                 b'"layout":""}]', b'[{"dtype":"int16","layout":"","name":"q","offset":1e400,"shape":[1]}]',
                 b'{"config":"edge","labels":[' + b"[" * 3000 + b"]" * 3000 + b"]}"]


def check_binary(blob: bytes, cfg=None) -> bool:
    """Load ``blob``; only project errors may escape, and an accepted binary must be exactly what its
    program encodes to and survive the text round trip. Returns whether it was accepted."""
    try:
        program = Program.from_bytes(blob, cfg)
    except EnergonError:
        return False
    except Exception as err:  # anything else is a bug: the point of the test
        pytest.fail(f"{type(err).__name__} escaped Program.from_bytes: {err}\ninput: {blob.hex()}")
    assert program.to_bytes() == blob, f"accepted a non-canonical binary: {blob.hex()}"
    text = disassemble(blob)
    assert assemble_bytes(text, program.config) == blob
    if builtin_of(program) is not None:  # a built-in machine (under any name): the text alone names it
        assert assemble_bytes(text) == blob
    return True


def check_text(text: str) -> bool:
    try:
        program = assemble(text)
    except AssemblerError:
        return False
    except Exception as err:
        pytest.fail(f"{type(err).__name__} escaped assemble: {err}\ninput: {text!r}")
    assert assemble(disassemble(program)) == program
    assert Program.from_bytes(program.to_bytes()) == program
    return True


# -- mutators: each takes (rng, corpus) and returns a byte string -----------------------------------

def random_bytes(rng, corpus):
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(0, 200))
    # a plausible header over random bytes: gets past magic and versions
    return reseal(rng.choice(corpus)[:24] + rng.randbytes(rng.randint(16, 300)))


def flip_bits(rng, corpus):
    blob = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 8)):
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    return bytes(blob)


def set_bytes(rng, corpus):
    blob = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 4)):
        blob[rng.randrange(len(blob))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    return bytes(blob)


def truncate_or_extend(rng, corpus):
    blob = rng.choice(corpus)
    if rng.random() < 0.6:
        return blob[:rng.randrange(len(blob))]
    return blob + rng.randbytes(rng.randint(1, 64))


def splice(rng, corpus):
    a, b = rng.choice(corpus), rng.choice(corpus)
    return a[:rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1):]


def mutate_header(rng, corpus):
    blob = bytearray(rng.choice(corpus))
    at = rng.choice([4, 6, 8, 24, 26, 32, 34, *range(36, 80, 4)])  # header and section table
    blob[at:at + 2] = rng.randrange(1 << 16).to_bytes(2, "little")
    if rng.random() < 0.3:
        blob[8:24] = rng.choice([cfg.fingerprint for cfg in CONFIGS.values()] + [rng.randbytes(16)])
    return bytes(blob)


def mutate_code(rng, corpus):
    blob = rng.choice(corpus)
    (kind, code), memmap, meta, config = sections_of(blob)
    words = [code[i:i + WORD_BYTES] for i in range(0, len(code), WORD_BYTES)]
    cfg = rng.choice(list(CONFIGS.values()))
    choice = rng.random()
    if choice < 0.3:  # a valid opcode over random bits: exercises the field range checks
        op = rng.choice(OPS)
        value = (rng.getrandbits(rng.choice([16, 64, 128, 250])) << OPCODE_BITS) | op.opcode
        words.insert(rng.randint(0, len(words)), value.to_bytes(WORD_BYTES, "little"))
    elif choice < 0.5:
        words.insert(rng.randint(0, len(words)), rng.randbytes(WORD_BYTES))
    elif choice < 0.8 and words:  # flip one bit of one word
        i = rng.randrange(len(words))
        value = int.from_bytes(words[i], "little") ^ (1 << rng.randrange(WORD_BYTES * 8))
        words[i] = value.to_bytes(WORD_BYTES, "little")
    else:  # a valid instruction for a possibly different config
        words.append(encode(random_instruction(rng, cfg), cfg))
    payload = b"".join(words)
    if rng.random() < 0.1:
        payload += rng.randbytes(rng.randint(1, 31))
    return container([(kind, payload), memmap, meta, config], blob[8:24])


def mutate_json(rng, corpus):
    blob = rng.choice(corpus)
    sections = sections_of(blob)
    i = rng.choice([1, 2, 3])
    kind, payload = sections[i]
    choice = rng.random()
    if choice < 0.3:
        payload = rng.choice(JSON_SNIPPETS)
    elif choice < 0.6:  # re-serialise the same value non-canonically, or with one value changed
        value = json.loads(payload)
        if rng.random() < 0.5 and isinstance(value, dict):
            value[rng.choice(list(value) + ["config", "labels", "x"])] = rng.choice(
                [None, 1, -1, 1.5, "edge", [], {}, float("inf"), 10 ** 30, "\u2028\n;#\""])
        elif rng.random() < 0.5 and isinstance(value, list) and value:
            region = value[rng.randrange(len(value))]
            region[rng.choice(list(region) + ["x"])] = rng.choice(
                [None, 0, -5, 2 ** 40, 1.0, "x", "int16", [], [0], [1, 2], {"a": 1}, True, float("nan")])
        payload = json.dumps(value, sort_keys=rng.random() < 0.5,
                             separators=rng.choice([(",", ":"), (", ", ": ")])).encode()
    else:  # splice bytes inside the JSON text
        payload = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(payload) + 1)
            payload[at:at + rng.randint(0, 3)] = bytes(rng.choice(b'{}[]",:0123456789-.eE \\nul'
                                                                   ) for _ in range(rng.randint(0, 3)))
        payload = bytes(payload)
    sections[i] = (kind, payload)
    return container(sections, blob[8:24])


CONFIG_VALUES = [None, 0, -1, 1, 3, 48, 64, 4096, 1.5, 2 ** 32, 2 ** 70, 10 ** 400, "x", "edge", "", [], {}, True,
                 float("nan"), float("inf"), -0.0, [[[[[[[[1]]]]]]]], {"a": {"b": [None]}}]


def mutate_config(rng, corpus):
    """The hardware config section: a field set to a hostile value, dropped or added, in the nested
    tables too; the header's fingerprint recomputed half of the time, so the check past it is reached."""
    blob = rng.choice(corpus)
    sections = sections_of(blob)
    value = json.loads(sections[3][1])
    target = value
    nested = rng.random()
    if nested < 0.2:
        target = value["buffer_bytes"]
    elif nested < 0.4:
        target = value["energy"]
    choice = rng.random()
    if choice < 0.1:
        target.pop(rng.choice(list(target)))
    elif choice < 0.15:
        target[rng.choice(["x", "turbo", "config"])] = 1
    elif choice < 0.25:  # a new name: the same machine, accepted
        target["name"] = rng.choice(["mine", "", "a b;#\"", "\u00e9"])
    else:
        target[rng.choice(list(target))] = rng.choice(CONFIG_VALUES)
    payload = json.dumps(value, sort_keys=rng.random() < 0.9,
                         separators=rng.choice([(",", ":"), (",", ":"), (", ", ": ")])).encode()
    sections[3] = (4, payload)
    return container(sections, fingerprint_of(value) if rng.random() < 0.5 else blob[8:24])


MUTATORS = [random_bytes, flip_bits, set_bytes, truncate_or_extend, splice, mutate_header, mutate_code,
            mutate_json, mutate_config]


def mutate_text(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        i = rng.randrange(len(lines))
        if choice < 0.4:  # edit characters
            line = lines[i]
            at = rng.randrange(len(line) + 1)
            lines[i] = line[:at] + rng.choice(['', '=', ';', '#', '"', '\\', ' ', '0x', '-', '9' * 12, 'x', '.',
                                               '{', '}', ',', '()', '\u00e9', '\u2028']) + line[at + rng.randint(0, 3):]
        elif choice < 0.55:
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif choice < 0.7 and len(lines) > 1:
            del lines[i]
        elif choice < 0.8:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:  # swap one token for another from anywhere in the text
            tokens = text.split()
            words = lines[i].split(" ")
            words[rng.randrange(len(words))] = rng.choice(tokens)
            lines[i] = " ".join(words)
    return "\n".join(lines)


@pytest.mark.slow
def test_fuzz_binaries_and_texts():
    rng = random.Random(SEED)
    start = time.perf_counter()
    corpus = [random_program(rng, cfg).to_bytes(cfg) for cfg in CONFIGS.values() for _ in range(20)]
    corpus += [random_program(rng, CUSTOM).to_bytes() for _ in range(5)]  # a machine no text can name
    accepted = 0
    for _ in range(BINARY_CASES):
        blob = rng.choice(MUTATORS)(rng, corpus)
        if rng.random() < 0.5:  # a consistent length and checksum let the deeper checks see it
            blob = reseal(blob)
        cfg = rng.choice([None, None, CONFIGS["edge"], CONFIGS["server"]])
        accepted += check_binary(blob, cfg)
    texts = [disassemble(blob) for blob in corpus]
    texts_ok = sum(check_text(mutate_text(rng, rng.choice(texts))) for _ in range(TEXT_CASES))
    texts_ok += sum(check_text(rng.randbytes(rng.randint(0, 80)).decode("latin-1")) for _ in range(500))
    elapsed = time.perf_counter() - start
    print(f"fuzz: {BINARY_CASES} binaries ({accepted} accepted), {TEXT_CASES + 500} texts ({texts_ok} "
          f"accepted) in {elapsed:.1f} s")
    assert BINARY_CASES + TEXT_CASES >= 10_000
    assert 0 < accepted < BINARY_CASES and 0 < texts_ok < TEXT_CASES  # both outcomes were exercised
    assert elapsed < 60


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_project_errors(blob):
    check_binary(blob)
    check_binary(b"ENGN\x02\x00\x01\x00" + blob)


@given(st.text(max_size=200))
def test_random_text_raises_only_assembler_errors(text):
    check_text(text)
    check_text(".config edge\n" + text)


def test_fuzz_corpus_is_valid():
    rng = random.Random(SEED)
    for cfg in CONFIGS.values():
        program = random_program(rng, cfg)
        assert check_binary(program.to_bytes(cfg))
        text = disassemble(program)
        shown = {k: v for k, v in program.meta.items() if k != "labels" or "@" not in text}
        assert canonical_json(shown).decode() in text and assemble(text) == program
