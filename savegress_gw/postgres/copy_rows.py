"""``COPY … TO STDOUT`` text of one table → ``(row, pk)`` pairs, by a function made for its columns.

:func:`rows_converter` returns ``convert(text) -> [(row, pk), ...]`` giving exactly what
``RowDecoder.decode_complete`` and the key columns of ``parse_copy_text``'s fields give, faster:
a line without a backslash (so without NULL, which COPY writes as ``\\N``, and without escapes) is
split on tabs and turned into its row by one dict display generated for the table, a converter
call only for the columns whose text is not already their JSON value, and no per-column loop.
Any other line, a line with the wrong number of fields, and a line whose conversion fails go the
general way (``parse_copy_text`` and ``decode_complete``), which also raises the errors that name
table and column. The generated source holds only field indexes; column names and converters are
variables of its namespace, never pasted into code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from savegress_gw.postgres.types import RowDecoder, _text

Row = tuple[dict[str, Any], tuple[str, ...]]
Converter = Callable[[str], list[Row]]


def rows_converter(decoder: RowDecoder, key_indexes: Sequence[int],
                   parse: Callable[[str], list[list[str | None]]]) -> Converter:
    """The converter for ``decoder``'s table; ``pk`` is the fields at ``key_indexes`` (text
    forms); ``parse`` is the general COPY text parser (``snapshot.parse_copy_text``). Every line
    is a row, an empty one too (the empty string of a one-column table)."""
    if not decoder.names:  # COPY writes an empty line per row
        return lambda text: [({}, ()) for _ in range(text.count("\n"))]
    namespace: dict[str, Any] = {"parse": parse, "decode": decoder.decode_complete, "ERRORS": (ValueError, TypeError,
                                                                                               IndexError)}
    items = []
    for index, (name, convert) in enumerate(zip(decoder.names, decoder.converters)):
        namespace[f"n{index}"] = name
        if convert is _text:
            items.append(f"n{index}: f[{index}]")
        else:
            namespace[f"c{index}"] = convert
            items.append(f"n{index}: c{index}(f[{index}])")
    key = "(" + "".join(f"f[{index}], " for index in key_indexes) + ")"
    general_key = "(" + "".join(f"v[{index}], " for index in key_indexes) + ")"
    source = f"""
def general(line):
    v = parse(line + "\\n")[0]
    return decode(v), {general_key}

def convert(text):
    out = []
    append = out.append
    lines = text.split("\\n")
    lines.pop()  # after the last row's newline
    for line in lines:
        if "\\\\" in line:
            append(general(line))
            continue
        f = line.split("\\t")
        if len(f) != {len(decoder.names)}:
            append(general(line))
            continue
        try:
            append(({{{", ".join(items)}}}, {key}))
        except ERRORS:
            append(general(line))
    return out
"""
    exec(compile(source, f"<copy rows of {decoder.relation.namespace}.{decoder.relation.name}>", "exec"), namespace)
    return namespace["convert"]  # type: ignore[no-any-return]
