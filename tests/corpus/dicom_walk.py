"""A deliberately independent, minimal explicit-VR-little-endian walker used as the tests' oracle.

It does not reuse corpus.malformed's helpers, so a bug in the generator's offset arithmetic cannot hide itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Elem:
    tag: int
    vr: bytes
    offset: int
    value_offset: int
    length: int

    @property
    def end(self) -> int:
        return self.value_offset + self.length


def walk(data: bytes, start: int) -> list[Elem]:
    """Elements from ``start`` until the data runs out; the last one may claim more bytes than exist."""
    out: list[Elem] = []
    pos = start
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                break
            length = struct.unpack_from("<I", data, pos + 8)[0]
            value_offset = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value_offset = pos + 8
        el = Elem(group << 16 | element, vr, pos, value_offset, length)
        out.append(el)
        if el.end > len(data):
            break
        pos = el.end
    return out


def meta_and_dataset(data: bytes) -> tuple[int, list[Elem], list[Elem]]:
    """(declared meta group length, meta elements, dataset elements) of a Part 10 explicit-LE file."""
    assert data[128:132] == b"DICM"
    elems = walk(data, 132)
    assert elems[0].tag == 0x00020000
    declared = struct.unpack_from("<I", data, elems[0].value_offset)[0]
    meta = [e for e in elems if e.tag >> 16 == 0x0002]
    dataset = [e for e in elems if e.tag >> 16 != 0x0002]
    return declared, meta, dataset
