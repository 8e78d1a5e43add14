"""Reading sentence pairs (and labels) from local TSV, CSV and JSONL files, for the command line.

The format, stated once (``crossjax predict --help`` prints it):

* ``.tsv`` (tab-separated, no quoting: texts may hold ``"``) and ``.csv`` (comma-separated, Excel quoting),
  UTF-8 (a BOM is fine). The first row is a header. The two text columns are ``--columns A,B`` when given;
  else the first known pair of names present (``text_a``/``text_b``, ``sentence1``/``sentence2``,
  ``query``/``document``, ``query``/``passage``, ``premise``/``hypothesis``, ... see ``PAIR_COLUMNS``);
  else the first two columns that are not the label. The label (for ``train``/``eval``) is
  ``--label-column`` or the first of ``label``, ``labels``, ``score``. With ``--no-header`` there is no
  header row and the columns are positional: text a, text b, then the label.
* ``.jsonl``: one JSON object per line (blank lines skipped), keys chosen as the header above (from the
  first object).

Every problem is a :class:`PairFileError` naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossjax.data import _PAIR_COLUMNS, LABEL_COLUMNS

PAIR_COLUMNS: tuple[tuple[str, str], ...] = (("text_a", "text_b"), *_PAIR_COLUMNS)
EXTENSIONS = (".tsv", ".csv", ".jsonl")


class PairFileError(ValueError):
    """A pair file that cannot be read as documented, with the file (and line) named."""


@dataclass
class PairTable:
    """Pairs in file order; ``labels`` is None when the file has no label column (or none was asked for)."""

    texts_a: list[str]
    texts_b: list[str]
    labels: list[float] | None
    columns: tuple[str, str]
    label_column: str | None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.texts_a, self.texts_b, strict=True))

    def __len__(self) -> int:
        return len(self.texts_a)


def check_pair_file(path: str | os.PathLike, what: str = "input") -> Path:
    """An existing, readable file with a supported extension (checked before anything heavy is loaded)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in EXTENSIONS:
        raise PairFileError(
            f"{what} file {path}: unsupported extension {path.suffix or '(none)'!r}; use one of {', '.join(EXTENSIONS)}"
        )
    if not path.is_file():
        raise PairFileError(f"{what} file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise PairFileError(f"{what} file {path} is not readable")
    return path


def _choose_columns(
    path: Path,
    names: list[str],
    columns: tuple[str, str] | None,
    label_column: str | None,
    need_label: bool,
    header_row: bool = False,
) -> tuple[tuple[str, str], str | None]:
    if label_column is not None and label_column not in names:
        raise PairFileError(f"{path}: no label column {label_column!r}; the columns are {names}")
    label = label_column or next((c for c in LABEL_COLUMNS if c in names), None)
    if need_label and label is None:
        # the "names" of a file without a header row are its first row's texts: --no-header is the fix there
        headerless = " (or, if the first row is data, not a header: --no-header)" if header_row else ""
        raise PairFileError(
            f"{path}: no label column (looked for {', '.join(LABEL_COLUMNS)}; name it with --label-column"
            f"{headerless}); the columns are {names}"
        )
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise PairFileError(f"{path}: no column {missing[0]!r}; the columns are {names}")
        return columns, label
    known = next((p for p in PAIR_COLUMNS if p[0] in names and p[1] in names), None)
    if known is not None:
        return known, label
    texts = [c for c in names if c != label]
    if len(texts) < 2:
        raise PairFileError(f"{path}: needs two text columns, found {texts} (columns {names})")
    return (texts[0], texts[1]), label


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_value(value: Any, where: str) -> float:
    if isinstance(value, bool):  # a JSONL true / false: 1.0 / 0.0, as a dataset's boolean column trains
        return float(value)
    if value is None or value == "":
        raise PairFileError(f"{where}: missing or invalid label {value!r}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float
        raise PairFileError(f"{where}: label {str(value)[:20]}... is too large for a float") from None
    except (TypeError, ValueError):
        raise PairFileError(f"{where}: label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise PairFileError(f"{where}: label {value!r} is not a finite number")
    return number


def _rows(path: Path, header: bool) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Column names and ``(line number, record)`` pairs."""
    if path.suffix.lower() == ".jsonl":
        records: list[tuple[int, dict[str, Any]]] = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise PairFileError(f"{path}:{number}: not valid JSON ({e})") from None
                if not isinstance(record, dict):
                    raise PairFileError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                records.append((number, record))
        names = list(records[0][1]) if records else []
        return names, records
    tsv = path.suffix.lower() == ".tsv"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(f)
        try:
            lines = [(reader.line_num, fields) for fields in reader if fields]
        except csv.Error as e:
            raise PairFileError(f"{path}:{reader.line_num}: {e}") from None
    if header:
        if not lines:
            raise PairFileError(f"{path}: empty file (expected a header row)")
        names = [n.strip() for n in lines[0][1]]
        if "" in names:
            raise PairFileError(f"{path}: column {names.index('') + 1} of the header row has no name")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PairFileError(f"{path}: the header row names {', '.join(map(repr, repeated))} more than once")
        lines = lines[1:]
    else:
        width = len(lines[0][1]) if lines else 2
        names = ["text_a", "text_b", "label"][:width] + [f"column_{i}" for i in range(3, width)]
    out = []
    for number, fields in lines:
        if len(fields) != len(names):
            raise PairFileError(f"{path}:{number}: expected {len(names)} fields, got {len(fields)}")
        out.append((number, dict(zip(names, fields, strict=True))))
    return names, out


def read_pairs(
    path: str | os.PathLike,
    *,
    columns: tuple[str, str] | None = None,
    label_column: str | None = None,
    need_label: bool = False,
    header: bool = True,
    read_labels: bool = True,
) -> PairTable:
    """Read a pair file in the module's format. ``need_label`` makes a missing label column an error;
    ``read_labels=False`` leaves the label column out of the texts without reading its values (predict)."""
    path = check_pair_file(path)
    header_row = header and path.suffix.lower() != ".jsonl"
    try:
        names, records = _rows(path, header_row)
    except UnicodeDecodeError as e:
        raise PairFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise PairFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not records:
        raise PairFileError(f"{path}: no pairs in the file")
    (col_a, col_b), label = _choose_columns(path, names, columns, label_column, need_label, header_row)
    if columns is None and (col_a, col_b) not in PAIR_COLUMNS:  # chosen by position: they may be ids, not texts
        for column in (col_a, col_b):
            values = [record.get(column) for _, record in records]
            if all(isinstance(v, str) and _is_number_text(v) for v in values):
                raise PairFileError(
                    f"{path}: column {column!r}, taken as a text column (the first two columns that are not the "
                    f"label), holds only numbers: name the two text columns with --columns A,B (the columns are "
                    f"{names})"
                )
    read = label if read_labels else None  # the label column whose values are read
    texts_a, texts_b, labels = [], [], []
    for number, record in records:
        where = f"{path}:{number}"
        for column in (col_a, col_b) + ((read,) if read else ()):
            if column not in record:
                raise PairFileError(f"{where}: no {column!r} field")
        a, b = record[col_a], record[col_b]
        if not isinstance(a, str) or not isinstance(b, str):
            raise PairFileError(f"{where}: {col_a!r} and {col_b!r} must be strings, got {a!r}, {b!r}")
        texts_a.append(a)
        texts_b.append(b)
        if read is not None:
            labels.append(_label_value(record[read], where))
    return PairTable(texts_a, texts_b, labels if read is not None else None, (col_a, col_b), label)


def read_documents(path: str | os.PathLike) -> list[str]:
    """Documents to rank: a text file with one document per line (blank lines skipped), or ``.jsonl`` with a
    ``text`` field (and an optional ``title``, prepended as BEIR corpora do)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PairFileError(f"documents file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [(n, line.rstrip("\n")) for n, line in enumerate(f, start=1) if line.strip()]
    except UnicodeDecodeError as e:
        raise PairFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise PairFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not lines:
        raise PairFileError(f"{path}: no documents in the file")
    if path.suffix.lower() != ".jsonl":
        return [line for _, line in lines]
    documents = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except ValueError as e:
            raise PairFileError(f"{path}:{number}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise PairFileError(f"{path}:{number}: expected an object with a string 'text' field")
        title = record.get("title")
        documents.append(f"{title} {record['text']}".strip() if isinstance(title, str) and title else record["text"])
    return documents
