"""``--input-shapes``: the text that fixes a model's input shapes, in either of the forms tvmc takes.

Items are ``name:[d0,d1,...]``, separated by commas (``"input_ids:[1,128],attention_mask:[1,128]"``) or
by white space as classic tvmc wrote them (``"input_ids:[1,128] attention_mask:[1,128]"``); the two
may be mixed. A name may itself hold colons (``input:0:[1,3]`` names ``input:0``). Every dimension is a
positive integer: Energon programs are compiled for one shape, so classic tvmc's ``-1`` (dynamic) is
refused with that reason.
"""

from __future__ import annotations

import re

from .errors import TVMCError

#: one item at a position: a name (no white space, commas or brackets; lazily, so a name may hold
#: colons), a colon, the bracketed dimensions
_ITEM = re.compile(r"\s*([^\s,\[\]]+?)\s*:\s*\[([^\[\]]*)\]")
_SEPARATOR = re.compile(r"\s*,\s*|\s+")


def parse_input_shapes(text: str | None, option: str = "--input-shapes") -> dict[str, tuple[int, ...]]:
    """``"a:[1,128],b:[1,128]"`` or ``"a:[1,128] b:[1,128]"`` -> ``{"a": (1, 128), "b": (1, 128)}``."""
    if text is None or not text.strip():
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    pos = 0
    while True:
        m = _ITEM.match(text, pos)
        if m is None:
            raise TVMCError(f"bad {option} {text!r} at character {pos}: expected name:[d0,d1,...] items separated "
                            f"by commas or spaces")
        name, dims = m.group(1), m.group(2)
        shapes[name] = _dimensions(name, dims, option, shapes)
        pos = m.end()
        if not text[pos:].strip():
            return shapes
        sep = _SEPARATOR.match(text, pos)
        if sep is None:
            raise TVMCError(f"bad {option} {text!r} at character {pos}: expected ',' or a space after "
                            f"{name}:[{dims}]")
        pos = sep.end()


def _dimensions(name: str, dims: str, option: str, seen: dict) -> tuple[int, ...]:
    if name in seen:
        raise TVMCError(f"bad {option}: {name!r} is given twice")
    items = [d.strip() for d in dims.split(",")] if dims.strip() else []
    shape = []
    for d in items:
        if d in ("-1", "?"):
            raise TVMCError(f"bad {option}: {name!r} has a dynamic dimension ({d}) in [{dims}]; Energon programs "
                            f"are compiled for one shape, give every dimension as a positive integer")
        try:
            value = int(d)
        except ValueError:
            raise TVMCError(f"bad {option}: dimensions of {name!r} must be integers, got [{dims}]") from None
        if value < 1:
            raise TVMCError(f"bad {option}: {name!r} has a dimension below 1: [{dims}]")
        shape.append(value)
    return tuple(shape)


def format_input_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """The comma form of ``shapes`` (what :func:`parse_input_shapes` reads back to the same dict)."""
    return ",".join(f"{name}:[{','.join(str(d) for d in shape)}]" for name, shape in shapes.items())
