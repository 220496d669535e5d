"""HealthImaging metadata documents (keyword → plain value) to the DICOM JSON model (PS3.18 Annex F).

The emulator stores each instance's attributes the way ``GetImageSetMetadata`` returns them: keyword (or 8-hex
tag for private/unknown elements, with the VR in ``DICOMVRs``) → string / number / list / nested item dicts /
base64 for small binary values. DICOMweb answers in DICOM JSON: 8-hex tag keys with ``vr`` and ``Value``
(``Alphabetic`` objects for PN, numbers for IS/DS, ``InlineBinary`` for binary values).
"""

from __future__ import annotations

import math
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

JsonObject = dict[str, Any]

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})


def tag_of(key: str) -> int | None:
    """The tag of a keyword (``PatientID``) or 8-hex key (``00100020``); None if neither."""
    tag = tag_for_keyword(key)
    if tag is not None:
        return int(tag)
    if len(key) == 8:
        try:
            return int(key, 16)
        except ValueError:
            return None
    return None


def vr_of(key: str, tag: int, vrs: dict[str, str], value: Any = None) -> str:
    """The VR: recorded in ``DICOMVRs`` for private/ambiguous elements, else the dictionary's.

    For a dictionary VR like ``US or SS`` (pixel-representation dependent) a negative value means SS;
    otherwise the first choice is taken.
    """
    vr = vrs.get(key)
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    choices = [c.strip() for c in vr.split(" or ") if c.strip()]
    if "SS" in choices:
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 0 for v in values):
            return "SS"
    return choices[0] if choices else "UN"


def _number(value: Any, integer: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    text = str(value).strip()
    if not text:
        return None
    try:
        if integer:
            return int(text)
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _person_name(value: Any) -> JsonObject:
    groups = str(value).split("=")
    out: JsonObject = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def element(vr: str, value: Any, vrs: dict[str, str]) -> JsonObject:
    """One DICOM JSON attribute object for ``value`` stored in the HealthImaging form."""
    obj: JsonObject = {"vr": vr}
    if value is None or value == "" or value == []:
        return obj
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        obj["Value"] = [to_dicom_json(item, vrs) for item in items if isinstance(item, dict)]
        return obj
    if vr in BINARY_VRS:
        obj["InlineBinary"] = value if isinstance(value, str) else str(value)
        return obj
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        obj["Value"] = [_person_name(v) for v in values]
    elif vr in ("IS", "DS"):
        numbers = [_number(v, vr == "IS") for v in values]
        obj["Value"] = numbers
    elif vr in NUMBER_VRS:
        obj["Value"] = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else _number(v, False)
                        for v in values]
    else:
        obj["Value"] = [None if v is None else str(v) for v in values]
    return obj


def to_dicom_json(attrs: dict[str, Any], vrs: dict[str, str], skip_groups: frozenset[int] = frozenset(),
                  omit_binary: bool = False) -> JsonObject:
    """Convert one keyword-keyed attribute dict to a DICOM JSON object, keys sorted by tag."""
    out: list[tuple[int, JsonObject]] = []
    for key, value in attrs.items():
        tag = tag_of(key)
        if tag is None or (tag >> 16) in skip_groups:
            continue
        vr = vr_of(key, tag, vrs, value)
        if omit_binary and vr in BINARY_VRS:
            continue
        out.append((tag, element(vr, value, vrs)))
    out.sort(key=lambda t: t[0])
    return {f"{tag:08X}": obj for tag, obj in out}


def attr(tag: int, vr: str, *values: Any) -> tuple[str, JsonObject]:
    """A (key, attribute) pair built directly from Python values (for response attributes we compute)."""
    obj: JsonObject = {"vr": vr}
    present = [v for v in values if v is not None]
    if present:
        obj["Value"] = present
    return f"{tag:08X}", obj

