"""Transcript files (``metadata.csv``, manifests): their text encoding, read strictly.

Text files are UTF-8 unless they start with a byte-order mark (UTF-8, UTF-16 or UTF-32), or
``encoding`` names their codec. A file that is not what it is read as is refused as a whole,
naming the line and byte where decoding failed: a Latin-1 or cp1252 transcript read as UTF-8
would otherwise fail on one line and pass mojibake on the next. Guessing is not attempted (cp1252
and Latin-1 decode any bytes, so a wrong guess changes letters without a word).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from kanitts.errors import UserError

#: Byte-order marks and the codec that reads past them; UTF-32 first (its LE mark starts like UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def check_encoding(encoding: str) -> str | None:
    """Why ``encoding`` cannot be used (None when it can): ``auto`` or a codec Python knows."""
    if encoding == "auto":
        return None
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        return f"--encoding {encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252, latin-1, utf-16)"
    if not getattr(info, "_is_text_encoding", True):
        return f"--encoding {encoding!r} is not a text encoding"
    return None


def read_text(path: Path, encoding: str = "auto") -> str:
    """The whole text of a transcript file, decoded strictly.

    ``auto``: the codec of a byte-order mark, else UTF-8. A byte that does not decode raises
    :class:`UserError` naming the line, the byte and how to read or convert the file; so does a
    NUL character, which in a file read as UTF-8 means UTF-16 without a byte-order mark.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if encoding == "auto":
        codec = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    else:
        codec = encoding
    if codec == "utf-8" and b"\x00" in data:  # UTF-8 text has no NUL; UTF-16 text is full of them
        raise UserError(_nul_problem(path, data[: data.index(b"\x00")].count(b"\n") + 1, codec))
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise UserError(_decode_problem(path, data, codec, exc, encoding == "auto")) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 mark in a file named as --encoding utf-8
    if "\x00" in text:
        raise UserError(_nul_problem(path, text.count("\n", 0, text.index("\x00")) + 1, codec))
    return text


def _nul_problem(path: Path, line: int, codec: str) -> str:
    return (
        f"{path}: line {line} holds a NUL byte, so it is not {codec} text; a file saved as UTF-16 "
        "without a byte-order mark looks like this. Pass --encoding utf-16-le (or utf-16-be), "
        "or save it as UTF-8."
    )


def _decode_problem(path: Path, data: bytes, codec: str, exc: UnicodeDecodeError, auto: bool) -> str:
    start, NEWLINE = exc.start, b"\n"
    line = data[:start].decode(codec, errors="replace").count("\n") + 1
    bad = " ".join(f"0x{b:02X}" for b in data[start : min(exc.end, start + 4)])
    column = ""
    if codecs.lookup(codec).name in ("utf-8", "utf-8-sig"):  # one byte per newline: count within the line
        column = f", byte {start - data.rfind(NEWLINE, 0, start)} of that line"
    where = f"{path}: line {line}{column} (byte {start + 1} of the file) is {bad}, which is not valid {codec}"
    if not auto:
        return f"{where}: the file is in another encoding than --encoding {codec}."
    if codec != "utf-8":
        return (
            f"{where} although the file starts with a {codec} byte-order mark; "
            "pass --encoding with its real encoding."
        )
    guess, family = "cp1252", "cp1252 (Western European)"
    try:
        data.decode(guess)
    except UnicodeDecodeError:
        guess, family = "latin-1", "Latin-1"
    return (
        f"{where}. Windows and older tools often write {family}: pass --encoding {guess} "
        f"(or the file's real encoding), or convert the file to UTF-8 once: "
        f"iconv -f {guess} -t utf-8 '{path}' > '{path}.utf8' && mv '{path}.utf8' '{path}'"
    )
