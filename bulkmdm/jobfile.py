"""Read a job file (CSV or XLSX) into a :class:`JobTable` of text cells.

This is the only module that imports pandas, and it imports it inside the
functions that need it: ``bulkmdm --help`` must not pay for it.

Every cell comes back as the text a person sees in the spreadsheet: ids keep
their leading zeros and every digit, ``NA``/``null``/``None`` stay as written,
cells are not stripped. Bad input never escapes as anything but
:class:`~bulkmdm.errors.JobFileError` (the file as a whole cannot be used) or
an entry in :attr:`JobTable.problems` (that row is reported ``invalid``; the
other rows still run).

Line numbers in messages are the ones a person sees in the report: the header
is line 1 and the first data row line 2. Completely blank rows (every cell
empty or white space) are not rows, and columns with a blank header and no
value in any row are not columns.
"""

from __future__ import annotations

import gc
import hashlib
import io
import re
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .columns import canonical as _canonical
from .columns import disagreement, same_meaning
from .errors import JobFileError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Excel's limit on the characters in one cell ("Excel specifications and
#: limits"); a longer cell is a broken row.
EXCEL_CELL_LIMIT = 32_767
#: What an .xlsx file bulkmdm writes holds in place of a value no Excel cell
#: can hold (longer than EXCEL_CELL_LIMIT, or with U+FFFE/U+FFFF, which XML
#: cannot carry), never the value cut or changed; a row holding it is invalid.
NOT_WRITTEN = "[not written: {why}; the .csv form of this file keeps it]"
_NOT_WRITTEN = re.compile(r"\[not written: (.+); the \.csv form of this file keeps it\]", re.DOTALL)
_NOT_XML = re.compile("[\ufffe\uffff]")


def not_in_excel(cell: str) -> str | None:
    """Why ``cell`` cannot go into an Excel cell as it is, or None when it can."""
    if len(cell) > EXCEL_CELL_LIMIT:
        return f"{len(cell):,} characters, more than an Excel cell holds"
    if (found := _NOT_XML.search(cell)) is not None:
        return f"U+{ord(found.group()):04X}, a character an Excel cell cannot hold"
    return None


_KINDS = {".csv": "csv", ".xlsx": "xlsx"}
_FIELDS_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_IN_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")
# How often a CSV with over-long rows is re-parsed with a wider frame before
# giving up; the first retry already uses an upper bound, so 1 is the norm.
_MAX_WIDENINGS = 8
_SNIFF_CHARS = 65_536


@dataclass(frozen=True, slots=True)
class JobTable:
    """A job file as rows of text, before any row is validated.

    ``headers`` are the header texts in file order (duplicates kept, BOM
    stripped, ``""`` for a blank header cell). ``canonical`` maps a canonical
    column (``columns.CANONICAL``) to the position of the first column that
    means it; ``outcome`` maps the report columns bulkmdm adds (``status``,
    ``detail``, ...) to the position of the *last* column that means each
    (a report appends them after every column of the job). Every tuple in
    ``rows`` is exactly ``len(headers)`` long. ``problems`` maps a 0-based row index to one
    sentence saying why that row is broken.
    """

    path: Path
    kind: str
    headers: tuple[str, ...]
    canonical: dict[str, int]
    outcome: dict[str, int]
    rows: list[tuple[str, ...]]
    problems: dict[int, str]
    sha256: str
    delimiter: str
    #: what a person should be told about how the file was read (the sheet read, ...)
    notes: tuple[str, ...] = ()

    @property
    def is_report(self) -> bool:
        """True when the file is an earlier outcome report (has ``status`` and ``detail``)."""
        return "status" in self.outcome and "detail" in self.outcome


def read_job(path: str | Path, *, own: Collection[str] = ()) -> JobTable:
    """Read a ``.csv`` or ``.xlsx`` job file; raise ``JobFileError`` if it cannot be used.

    ``own``: the SHA-256 of the CSV files bulkmdm wrote (:mod:`bulkmdm.ownfiles`);
    the formula guard is taken off those, and off reports, only.
    """
    path = Path(path)
    data = _read_bytes(path)
    kind = _KINDS[path.suffix.lower()]
    if not data:
        raise JobFileError(f"{path} is empty; put a header row and one row per action in it.")
    # Millions of small str/tuple objects set off a cyclic-GC pass every few
    # thousand allocations; none of them can form a cycle, and pausing the
    # collector halves the time to read a million rows.
    collecting = gc.isenabled()
    gc.disable()
    try:
        notes: tuple[str, ...] = ()
        if kind == "csv":
            grid, header_width, delimiter = _read_csv(path, data)
        else:
            (grid, notes), header_width, delimiter = _read_xlsx(path, data), None, ","
        return _table(path, kind, data, delimiter, grid, header_width, own, notes)
    except JobFileError:
        raise
    except Exception as exc:
        raise _unreadable(path, kind, exc) from exc
    except BaseException as exc:
        # A Rust panic inside calamine arrives as pyo3's PanicException, which
        # derives from BaseException; it is still just a file we cannot read.
        if type(exc).__name__ != "PanicException":
            raise
        raise _unreadable(path, kind, exc) from None
    finally:
        if collecting:
            gc.enable()


# --------------------------------------------------------------------------
# The file itself


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.exists():
            raise JobFileError(f"{path} does not exist; check the path and the file name.")
        if path.is_dir():
            raise JobFileError(f"{path} is a folder, not a job file; give the path of a .csv or .xlsx file.")
    except (OSError, ValueError) as exc:
        raise JobFileError(f"{path} is not a usable path ({_reason(exc)}); check the path and the file name.") from exc
    suffix = path.suffix.lower()
    if suffix not in _KINDS:
        if suffix == ".xls":
            raise JobFileError(
                f"{path} is an old-format Excel workbook (.xls); "
                "open it in Excel and save it as an Excel Workbook (.xlsx) or as CSV."
            )
        what = f"a '{path.suffix}' file" if path.suffix else "a file without an extension"
        raise JobFileError(
            f"{path} is {what}, but bulkmdm reads only .csv and .xlsx job files; "
            "save it as CSV or as an Excel Workbook (.xlsx)."
        )
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise JobFileError(
            f"{path} cannot be read (permission denied); check its permissions or copy it somewhere you can read."
        ) from exc
    except (OSError, ValueError) as exc:
        raise JobFileError(f"{path} cannot be read ({_reason(exc)}); check the file and try again.") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    return text[:200].rstrip(".")


def _unreadable(path: Path, kind: str, exc: BaseException) -> JobFileError:
    if kind == "xlsx":
        return JobFileError(
            f"{path} is damaged or not a valid Excel workbook ({_reason(exc)}); "
            "open it in Excel and save it again as .xlsx, or export it as CSV."
        )
    return JobFileError(
        f"{path} cannot be read as CSV ({_reason(exc)}); open it in Excel and save it again as 'CSV UTF-8'."
    )


_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"{\\rtf", "an RTF document"),
    (b"\x7fELF", "a program"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


#: what a ZIP container that is not a workbook is (``_zip_kind``), as a sentence names it
_ZIP_WHAT = {
    "xlsb": "an Excel binary workbook (.xlsb)",
    "ods": "an OpenDocument spreadsheet (.ods)",
    "docx": "a Word document",
}


def _is_zip(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")


def _magic_what(head: bytes) -> str | None:
    """What a file of another known format (``_MAGIC``) is, by its first bytes."""
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def _zip_kind(data: bytes) -> str:
    """'xlsx', 'xlsb', 'ods', 'docx', 'zip', or 'broken' for a ZIP container."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            mimetype = archive.read("mimetype")[:100] if "mimetype" in names else b""
    except Exception:  # zipfile raises a zoo of types on damaged archives
        return "broken"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "xl/workbook.bin" in names:
        return "xlsb"
    if b"opendocument.spreadsheet" in mimetype:
        return "ods"
    if "word/document.xml" in names:
        return "docx"
    return "zip"


def _ole2_kind(data: bytes) -> str:
    """'encrypted' for a password-protected workbook, else 'xls'."""
    # An encrypted .xlsx is an OLE2 file holding an "EncryptedPackage" stream
    # (names are UTF-16LE in the directory).
    return "encrypted" if "EncryptedPackage".encode("utf-16-le") in data else "xls"


_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0C, 0x0D))


def _is_binary(data: bytes) -> bool:
    """Mostly control bytes: a program, an image, a database, not a table.

    A few control bytes are not enough: a NUL or an odd control character in
    one cell of a CSV is that row's problem, not the file's.
    """
    sample = data[:8192]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return controls >= 16 and controls > 0.3 * len(sample)


def _looks_text(data: bytes) -> bool:
    sample = data[:8192]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return b"\x00" not in sample and controls <= 0.02 * len(sample)


def _looks_utf16(data: bytes) -> bool:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    sample = data[:4096]
    # ASCII text in UTF-16 has a NUL in every other byte.
    return len(sample) >= 8 and (
        sample[1::2].count(0) > 0.9 * len(sample[1::2]) or sample[0::2].count(0) > 0.9 * len(sample[0::2])
    )


def _not_csv(path: Path, data: bytes) -> None:
    """Raise when a .csv file is really something else."""
    head = data[:16]
    csv_name = path.with_suffix(".xlsx").name
    if _is_zip(head):
        found = _zip_kind(data)
        if found == "xlsx":
            raise JobFileError(f"{path} is an Excel workbook, not a CSV file; rename it to {csv_name}.")
        what = _ZIP_WHAT.get(found, "a ZIP archive")
        raise JobFileError(f"{path} is {what}, not a CSV file; save the table as CSV or as an Excel Workbook (.xlsx).")
    if head.startswith(_OLE2):
        what = (
            "a password-protected Excel workbook"
            if _ole2_kind(data) == "encrypted"
            else "an old-format Excel workbook (.xls)"
        )
        raise JobFileError(
            f"{path} is {what}, not a CSV file; open it in Excel and save it as 'CSV UTF-8' or as .xlsx."
        )
    if known := _magic_what(head):
        raise JobFileError(f"{path} is {known}, not a CSV file; export the table from its spreadsheet as 'CSV UTF-8'.")
    if _looks_utf16(data):
        raise JobFileError(
            f"{path} is saved as UTF-16 ('Unicode Text'); save it from Excel as 'CSV UTF-8 (Comma delimited)' instead."
        )
    if _is_binary(data):
        raise JobFileError(
            f"{path} does not look like a text file (it holds binary data); save the table as 'CSV UTF-8' or as .xlsx."
        )


def _not_xlsx(path: Path, data: bytes) -> None:
    """Raise when a .xlsx file is really something else."""
    head = data[:16]
    if _is_zip(head):
        found = _zip_kind(data)
        if found == "xlsx":
            return
        if found == "broken":
            raise JobFileError(
                f"{path} is damaged (not a complete Excel workbook); open it in Excel and save it again, "
                "or export it as CSV."
            )
        what = _ZIP_WHAT.get(found, "a ZIP archive")
        raise JobFileError(
            f"{path} is {what}, not an Excel workbook; open it and save it as an Excel Workbook (.xlsx)."
        )
    if head.startswith(_OLE2):
        if _ole2_kind(data) == "encrypted":
            raise JobFileError(
                f"{path} is password-protected; remove the password in Excel (File > Info > Protect Workbook) "
                "and save it again."
            )
        raise JobFileError(
            f"{path} is an old-format Excel workbook (.xls) with an .xlsx name; open it in Excel and save it as "
            "an Excel Workbook (.xlsx)."
        )
    if known := _magic_what(head):
        raise JobFileError(f"{path} is {known}, not an Excel workbook; give bulkmdm the .xlsx or a CSV export instead.")
    if _looks_text(data):
        raise JobFileError(
            f"{path} is a text file (probably CSV), not an Excel workbook; "
            f"rename it to {path.with_suffix('.csv').name}."
        )
    raise JobFileError(f"{path} is not an Excel workbook; open it in Excel and save it as an Excel Workbook (.xlsx).")


# --------------------------------------------------------------------------
# CSV


def _cp1252_table() -> str:
    # Windows-1252 leaves five bytes undefined; Excel never writes them, but a
    # file that has them still reads, as Latin-1.
    chars = []
    for b in range(256):
        try:
            chars.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(chr(b))
    return "".join(chars)


_CP1252 = _cp1252_table()
_BOM = b"\xef\xbb\xbf"


def _decode(data: bytes) -> tuple[str, bytes]:
    """The text, and the same text as UTF-8 bytes (what pandas parses fastest)."""
    body = data
    while body.startswith(_BOM):
        body = body[len(_BOM) :]
    try:
        text = body.decode("utf-8")
        return text, body
    except UnicodeDecodeError:
        pass
    import codecs

    text = codecs.charmap_decode(body, "strict", _CP1252)[0]
    return text, text.encode("utf-8")


_SNIFF_TOKENS = re.compile(r'["\r\n,;]')


def _sniff(text: str) -> tuple[str, int]:
    """The delimiter (',' or ';') and the header's cell count.

    Counted outside quotes on the first record that is not blank, so that
    ``name;"Smith, John"`` is two columns separated by ';'. A tie (a single
    column) is ','.
    """
    sample = text[:_SNIFF_CHARS]
    counts = {",": 0, ";": 0}
    quoted = False
    start = 0
    escaped = -1
    for match in _SNIFF_TOKENS.finditer(sample):
        token, at = match.group(), match.start()
        if token == '"':
            if at == escaped:
                continue
            if quoted:
                if sample[at + 1 : at + 2] == '"':
                    escaped = at + 1  # "" inside quotes is one literal quote
                else:
                    quoted = False
            elif at == start or sample[at - 1] in ",;\r\n":
                # As the parser does: a quote opens a quoted cell only at the
                # start of a cell (the quote in 5" screen is just a character).
                quoted = True
        elif token in counts:
            if not quoted:
                counts[token] += 1
        elif not quoted:
            record = sample[start : match.start()]
            if record.strip(' \t\f\v,;"\ufeff'):
                break
            counts = {",": 0, ";": 0}
            start = match.end()
    delimiter = ";" if counts[";"] > counts[","] else ","
    return delimiter, counts[delimiter] + 1


def _read_csv(path: Path, data: bytes) -> tuple[list[list[str]], int, str]:
    _not_csv(path, data)
    text, utf8 = _decode(data)
    if not text.strip(' \t\r\n\f\v,;"\ufeff'):
        raise JobFileError(
            f"{path} has no header row (it holds only blank lines); put the column names on the first line."
        )
    delimiter, header_width = _sniff(text)
    del text
    frame = _parse_csv(path, utf8, delimiter)
    return [frame[c].tolist() for c in frame.columns], header_width, delimiter


def _parse_csv(path: Path, utf8: bytes, delimiter: str) -> pd.DataFrame:
    import pandas as pd

    width: int | None = None
    for _attempt in range(_MAX_WIDENINGS + 1):
        try:
            # dtype=object rather than str: with na_filter off every cell is
            # a Python str either way, and the C engine is ~2x faster without
            # building pandas' string arrays (1M rows: 1.0 s instead of 2.4 s).
            return pd.read_csv(
                io.BytesIO(utf8),
                sep=delimiter,
                header=None,
                names=range(width) if width else None,
                index_col=False,
                dtype=object,
                keep_default_na=False,
                na_filter=False,
                skip_blank_lines=True,
                engine="c",
                encoding="utf-8",
                quotechar='"',
                doublequote=True,
                escapechar=None,
            )
        except pd.errors.EmptyDataError as exc:
            raise JobFileError(
                f"{path} has no header row (it holds only blank lines); put the column names on the first line."
            ) from exc
        except pd.errors.ParserError as exc:
            message = str(exc)
            unclosed = _EOF_IN_QUOTE.search(message)
            if unclosed:
                line = int(unclosed.group(1)) + 1
                raise JobFileError(
                    f'{path} has a quote (") on line {line} that is never closed, so the rest of the file '
                    "cannot be read; close the quote or remove it."
                ) from exc
            wide = _FIELDS_ERROR.search(message)
            if not wide:
                raise
            # The C engine stops at the first row longer than the header.
            # Re-parse with a frame wide enough for every row (this slower
            # path only runs for broken files), then report the long rows.
            saw = int(wide.group(3))
            if width is None:
                bound = max(map(_count_delimiter(delimiter), utf8.split(b"\n"))) + 1
                width = max(saw, bound)
            else:
                width = max(saw, width + 1)
    raise JobFileError(
        f"{path} has rows with very uneven numbers of cells; check the delimiter and the quotes, "
        "or open it in Excel and save it again as 'CSV UTF-8'."
    )


def _count_delimiter(delimiter: str) -> Callable[[bytes], int]:
    needle = delimiter.encode()
    return lambda line: line.count(needle)


# --------------------------------------------------------------------------
# XLSX


#: the sheet of a template (bulkmdm.template) that explains the columns: never read as rows
_NOTES_SHEET = "Notes"


def _read_xlsx(path: Path, data: bytes) -> tuple[list[list[str]], tuple[str, ...]]:
    """The first sheet's columns of text; where the first sheet is blank (a workbook
    whose data an admin pasted on Sheet2), the first sheet that has rows, and a note
    naming it. A template's Notes sheet is never read as rows."""
    _not_xlsx(path, data)
    import pandas as pd

    book = pd.ExcelFile(io.BytesIO(data), engine="calamine")
    names = [str(name) for name in book.sheet_names]
    for position, name in enumerate(names):
        if position and name == _NOTES_SHEET:
            continue
        frame = pd.read_excel(book, sheet_name=name, header=None, dtype=object, keep_default_na=False, na_filter=False)
        grid = [[cell if type(cell) is str else _cell_text(cell) for cell in frame[c].tolist()] for c in frame.columns]
        if position == 0 and (len(names) == 1 or _has_rows(grid)):
            return grid, ()
        if _has_rows(grid):
            note = (
                f"The first sheet of {path.name}, '{names[0]}', is blank: reading the sheet '{name}', "
                "the first that has rows."
            )
            return grid, (note,)
    others = ", ".join(f"'{name}'" for name in names)
    raise JobFileError(
        f"{path} has nothing on any of its sheets ({others}); put the header row and the job rows on the first."
    )


def _has_rows(grid: list[list[str]]) -> bool:
    return any(cell.strip() for column in grid for cell in column)


_EXACT_INT = 2**53


def _plain(number: str) -> str:
    """'1.5e+20' -> '150000000000000000000', '1e-05' -> '0.00001'."""
    exact = Decimal(number)
    if exact and not -10 <= exact.adjusted() <= 20:
        # Far outside what an id or an amount looks like; Excel shows these
        # in scientific notation too.
        mantissa, _, exponent = format(exact, "E").partition("E")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}E{exponent}"
    text = format(exact, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _number_text(value: bool | int | float) -> str:
    """A number (or TRUE/FALSE) as Excel shows it."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        if -_EXACT_INT < value < _EXACT_INT:
            return str(value)
        # pandas turned the cell's float into int(float), inventing digits
        # the file never held; go back to the float's own shortest digits.
        return _plain(repr(float(value)))
    if value != value or value in (float("inf"), float("-inf")):
        return ""
    if value.is_integer():
        return _number_text(int(value))
    # 15 significant digits, as Excel shows them (0.1+0.2 -> 0.3).
    return _plain(format(value, ".15g"))


def _cell_text(value: Any) -> str:
    """An Excel value as the text a person sees in the cell."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return _number_text(value)
    if isinstance(value, datetime):
        if type(value).__name__ == "NaTType":  # pragma: no cover - pandas' missing datetime
            return ""
        if value.microsecond:
            value = (value + timedelta(microseconds=500_000)).replace(microsecond=0)
        if (value.hour, value.minute, value.second) == (0, 0, 0):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.replace(microsecond=0).isoformat()
    if isinstance(value, timedelta):
        seconds = round(value.total_seconds())
        sign = "-" if seconds < 0 else ""
        hours, rest = divmod(abs(seconds), 3600)
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    if type(value).__name__ == "NaTType":
        return ""
    return str(value)


# --------------------------------------------------------------------------
# Shared: from columns of text to a JobTable


def _table(
    path: Path,
    kind: str,
    data: bytes,
    delimiter: str,
    grid: list[list[str]],
    header_width: int | None,
    own: Collection[str] = (),
    notes: tuple[str, ...] = (),
) -> JobTable:
    """Build the table from parsed columns (``grid[c][r]``; row 0 is the header)."""
    grid = _drop_blank_rows(grid)
    if not grid or not grid[0]:
        if kind == "xlsx":
            raise JobFileError(f"{path} has nothing on its first sheet; put the header row and the job rows there.")
        raise JobFileError(
            f"{path} has no header row (it holds only blank lines); put the column names on the first line."
        )
    header_row = [column[0] for column in grid]
    problems: dict[int, str] = {}

    width = len(grid)
    if header_width is not None:
        filled = max((i + 1 for i, cell in enumerate(header_row) if cell), default=1)
        header_width = max(min(header_width, width), filled)
        if header_width < width:
            _note_long_rows(grid, header_width, problems)
            del grid[header_width:]

    grid = [column for column in grid if column[0].strip() or any(column[1:])]
    headers = [column[0].lstrip("\ufeff") for column in grid]
    columns = [column[1:] for column in grid]
    del grid

    canonical: dict[str, int] = {}
    outcome: dict[str, int] = {}
    for position, header in enumerate(headers):
        name = _canonical(header)
        if name is None:
            continue
        if name.startswith("outcome:"):
            # The last one: a report appends its outcome columns after all of
            # the job's, which may hold a column of its own named "Status".
            outcome[name.removeprefix("outcome:")] = position
        else:
            canonical.setdefault(name, position)

    sha256 = hashlib.sha256(data).hexdigest()
    if kind == "csv" and (("status" in outcome and "detail" in outcome) or sha256 in own):
        # bulkmdm's own file: one "'" off every cell that begins with one (report.neutralise)
        headers = [_restore(header) for header in headers]
        columns = [[_restore(cell) for cell in column] for column in columns]

    if b"\x00" in data:
        _note_nul(columns, headers, problems)
    _note_huge(columns, headers, problems)
    if kind == "xlsx":
        _note_not_written(columns, headers, problems)
    _note_disagreements(columns, headers, problems)

    rows = list(zip(*columns, strict=True)) if columns else []
    return JobTable(
        path=path,
        kind=kind,
        headers=tuple(headers),
        canonical=canonical,
        outcome=outcome,
        rows=rows,
        problems=dict(sorted(problems.items())),
        sha256=sha256,
        delimiter=delimiter,
        notes=notes,
    )


def _drop_blank_rows(grid: list[list[str]]) -> list[list[str]]:
    if not grid:
        return grid
    first = grid[0]
    if "" not in first and not any(map(str.isspace, first)):
        return grid
    candidates = [r for r, cell in enumerate(first) if not cell or cell.isspace()]
    blank = [r for r in candidates if all(not column[r].strip() for column in grid[1:])]
    if not blank:
        return grid
    drop = set(blank)
    return [[cell for r, cell in enumerate(column) if r not in drop] for column in grid]


def _restore(cell: str) -> str:
    return cell[1:] if cell[:1] == "'" else cell


def _column_name(headers: Sequence[str], position: int) -> str:
    header = headers[position].strip()
    return f"'{header}'" if header else f"{position + 1}"


def _note_long_rows(grid: list[list[str]], header_width: int, problems: dict[int, str]) -> None:
    extra = grid[header_width:]
    for r in range(1, len(grid[0])):
        if any(column[r] for column in extra):
            cells = header_width + max(i + 1 for i, column in enumerate(extra) if column[r])
            problems.setdefault(
                r - 1,
                f"line {r + 1} has {cells} cells but the header has {header_width}; "
                "remove the extra cells or give them a header.",
            )


def _note_nul(columns: list[list[str]], headers: Sequence[str], problems: dict[int, str]) -> None:
    for position, column in enumerate(columns):
        for r, cell in enumerate(column):
            if "\x00" in cell and r not in problems:
                problems[r] = (
                    f"line {r + 2} has a NUL byte in column {_column_name(headers, position)}; retype that cell."
                )


def _note_huge(columns: list[list[str]], headers: Sequence[str], problems: dict[int, str]) -> None:
    for position, column in enumerate(columns):
        if not column or max(map(len, column)) <= EXCEL_CELL_LIMIT:
            continue
        for r, cell in enumerate(column):
            if len(cell) > EXCEL_CELL_LIMIT and r not in problems:
                problems[r] = (
                    f"line {r + 2} has {len(cell):,} characters in column {_column_name(headers, position)}, "
                    f"more than Excel's limit of {EXCEL_CELL_LIMIT:,}; shorten that cell."
                )


def _note_not_written(columns: list[list[str]], headers: Sequence[str], problems: dict[int, str]) -> None:
    """A cell that holds NOT_WRITTEN in place of its value: the row cannot be run from this file."""
    for position, column in enumerate(columns):
        for r, cell in enumerate(column):
            if cell[:14] == "[not written: " and r not in problems and (found := _NOT_WRITTEN.fullmatch(cell)):
                problems[r] = (
                    f"line {r + 2}'s value in column {_column_name(headers, position)} is not in this file "
                    f"({found.group(1)}); run the .csv form of the file instead (for a report, "
                    "`bulkmdm report RUN --out FILE.csv` writes it)."
                )


def _note_disagreements(columns: list[list[str]], headers: Sequence[str], problems: dict[int, str]) -> None:
    """Two columns that mean one (``serial`` and ``Serial Number``) must agree
    on every row; where they do not, the row is invalid rather than one of
    them silently winning."""
    for positions in same_meaning(headers).values():
        picked = [columns[p] for p in positions]
        for r, values in enumerate(zip(*picked, strict=True)):
            if r in problems or len({v.strip() for v in values}) <= 1:
                continue
            cells = dict(zip(positions, values, strict=True))
            sentence = disagreement(r + 2, headers, positions, [cells.get(i, "") for i in range(len(headers))])
            if sentence:
                problems[r] = sentence
