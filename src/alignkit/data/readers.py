"""Read records from JSONL, Parquet, CSV, a saved Hugging Face ``datasets`` folder, a hub
dataset or a ``datasets`` builder over local files, or a mixture of those (``data.mixture``).

Every record keeps where it came from (file and 1-based line or row) so that validation can say
``data.jsonl:17: field "completion" is missing``; rows of a hub dataset or builder are numbered
from 1 in their split: ``org/name[train]:17: ...``.

``--data`` names, tried in this order: a shipped name (``demo``); a local file or folder that
exists (a ``.yaml`` file is a mixture); a mixture written inline (``a.jsonl:0.7,b.jsonl:0.3``);
``BUILDER:FILES`` with BUILDER one of ``BUILDERS`` (``json:data/train-*.jsonl``:
``datasets.load_dataset("json", data_files=..., split="train")``); a hub id ``org/name``,
``org/name:split`` or ``org/name:config:split`` (``datasets.load_dataset``; split "train" when
not given, slices such as ``train[:1000]`` allowed). A name that ends like a data file is never
taken for a hub id: a missing file stays a "not found" error.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from alignkit.data.mixture import (MIXTURE_SUFFIXES, Draw, Source, draw_records, parse_sources,
                                   read_mixture_file)
from alignkit.errors import DataError, UserError

SHIPPED = {
    "demo": "sft.jsonl",
    "demo-sft": "sft.jsonl",
    "demo-prompts": "prompts_train.jsonl",
    "demo-prompts-heldout": "prompts_heldout.jsonl",
}


@dataclass
class Record:
    """One raw record. ``line`` is the 1-based line (JSONL, CSV) or row (Parquet, datasets)."""

    source: str
    line: int
    fields: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def shipped_data_path(name: str) -> Path:
    """Path of a data file that ships inside the package (``demo``, ``demo-prompts`` ...)."""
    from importlib.resources import files

    return Path(str(files("alignkit") / "assets" / "data" / SHIPPED[name]))


def resolve_data_path(spec: str) -> Path:
    if spec in SHIPPED:
        return shipped_data_path(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{spec}: data file or folder not found")
    return path


# ``datasets`` builders that read local files: ``--data json:data/*.jsonl``
BUILDERS = ("json", "csv", "parquet", "arrow")
_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".tsv", ".arrow",
                  *MIXTURE_SUFFIXES)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def read_records(spec: str, problems: list[str] | None = None, draw: Draw | None = None,
                 check: Callable[[Record], str | None] | None = None) -> list[Record]:
    """Read every record of ``spec`` (see the module docstring), in order.

    Lines that cannot be records (not a JSON object, a CSV row with too many cells) raise one
    ``DataError`` naming them all; pass a ``problems`` list instead to collect them there and get
    the good records back, so that a caller that validates fields next reports both kinds of
    problem in one pass (``schemas.validate(..., problems=...)``).

    A mixture, or a ``draw`` that oversamples or resizes, returns the drawn records instead
    (``data.mixture``: a record may appear several times), seeded by ``draw.seed``, and puts
    what was drawn in ``draw.report``; ``check(record)`` (why a record is invalid, None when it is
    not) keeps invalid records out of the draw: they come back once each, after the drawn
    ones."""
    sources = data_sources(spec)
    if sources is None and not (draw is not None and draw.reshapes):
        return _read_source(spec, problems)
    sources = sources or [Source(spec)]
    found: list[str] = []
    per_source = [_read_source(s.spec, found) for s in sources]
    if found and problems is None:
        raise DataError(found)
    if problems is not None:
        problems.extend(found)
    try:
        records, report = draw_records(sources, per_source, draw or Draw(), check)
    except DataError as e:  # a source with no valid record: its lines that are not records too
        raise DataError(found + e.problems) from None
    if draw is not None:
        draw.report.clear()
        draw.report.update(report)
    return records


def data_sources(spec: str) -> list[Source] | None:
    """The sources of a mixture (a ``.yaml`` mixture file or ``a.jsonl:0.7,b.jsonl:0.3``), None
    when ``spec`` names one source. A local path that exists is always that file."""
    if spec in SHIPPED:
        return None
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() in MIXTURE_SUFFIXES:
            return read_mixture_file(path, spec)
        return None
    return parse_sources(spec)


def _read_source(spec: str, problems: list[str] | None) -> list[Record]:
    """The records of one source: a local file or folder, a shipped name, a hub dataset or a
    builder over local files."""
    if spec not in SHIPPED and not Path(spec).expanduser().exists():
        remote = hub_request(spec)
        if remote is not None:
            return _read_hub(spec, *remote)
    path = resolve_data_path(spec)
    shown = spec if spec not in SHIPPED else str(path)
    if path.is_dir():
        return _read_hf_folder(path, shown)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(_read_bytes(path, shown), path, shown, problems)
    if suffix == ".parquet":
        return _read_parquet(path, shown)
    if suffix in (".csv", ".tsv"):
        return _read_csv(_read_bytes(path, shown), shown, "\t" if suffix == ".tsv" else ",",
                         problems)
    raise UserError(f"{shown}: unsupported data format {suffix!r} (use .jsonl, .parquet, .csv or "
                    "a saved datasets folder)")


def _read_bytes(path: Path, shown: str) -> bytes:
    """The file's bytes, without a UTF-8 byte-order mark (Windows editors and Excel write one);
    a file that cannot be read, or is UTF-16 text, is a ``UserError``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{shown}: cannot read the file ({e.strerror or e})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{shown}: UTF-16 text; save the file as UTF-8")
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def _not_utf8(line: str, column: bool = True) -> str | None:
    """Why a line decoded with ``surrogateescape`` is not UTF-8 text (None: it is)."""
    for at, ch in enumerate(line, 1):
        if "\udc80" <= ch <= "\udcff":
            return (f"not UTF-8 text (byte 0x{ord(ch) - 0xDC00:02x}"
                    f"{f' at column {at}' if column else ''}); save the file as UTF-8")
    return None


class _NotText(ValueError):
    """A JSON document that parses but is not acceptable data (its message says why)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: an object that names a key twice is refused (``json`` would keep
    the last value without a word)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _NotText(f'the key "{key}" appears twice in one object')
        out[key] = value
    return out


# half of a UTF-16 pair: JSON's "\ud800" escape decodes to one; no tokenizer or database takes it
SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The first string in ``value`` (keys, values, list items, nested) holding a lone UTF-16
    surrogate (JSON's ``"\\ud800"`` escape decodes to one; no tokenizer or database takes it),
    as the escape; ``None`` when every string is text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            bad = SURROGATE.search(item)
            if bad is not None:
                return f"\\u{ord(bad.group()):04x}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def parse_json(text: str):
    """``json.loads`` of data: text past the decoder's limits, a key named twice in an object
    and a lone surrogate escape are ``ValueError``s that say which (a ``JSONDecodeError`` is
    one too, with the position)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, _NotText):
        raise
    except RecursionError:  # the C decoder recurses once per nesting level
        raise ValueError("nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise ValueError("a number with too many digits") from None
    bad = lone_surrogate(value)
    if bad is not None:
        raise _NotText(f"a lone surrogate ({bad}) is not text")
    return value


def _read_jsonl(raw: bytes, path: Path, shown: str,
                collect: list[str] | None = None) -> list[Record]:
    records: list[Record] = []
    problems = collect if collect is not None else []
    # bytes.splitlines breaks at \n, \r and \r\n only, as text files count lines; a line that is
    # not UTF-8 is reported with the others instead of ending the read
    lines = [b.decode("utf-8", "surrogateescape") for b in raw.splitlines()]
    if path.suffix.lower() == ".json" and "".join(lines).lstrip().startswith("["):
        # a JSON array file: records are its elements; we report element numbers
        bad = [f"{shown}:{i}: {why}" for i, ln in enumerate(lines, 1) if (why := _not_utf8(ln))]
        if bad:
            raise DataError(bad)
        try:
            items = parse_json("\n".join(lines))
        except json.JSONDecodeError as e:
            raise UserError(f"{shown}:{e.lineno}: not valid JSON ({e.msg})") from None
        except _NotText as e:
            raise UserError(f"{shown}: {e}") from None
        except ValueError as e:
            raise UserError(f"{shown}: not valid JSON ({e})") from None
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                problems.append(f"{shown}:{i}: expected a JSON object, got {type(item).__name__}")
            else:
                records.append(Record(shown, i, item))
    else:
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            why = _not_utf8(line)
            if why:
                problems.append(f"{shown}:{i}: {why}")
                continue
            try:
                item = parse_json(line)
            except json.JSONDecodeError as e:
                problems.append(f"{shown}:{i}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            except _NotText as e:
                problems.append(f"{shown}:{i}: {e}")
                continue
            except ValueError as e:
                problems.append(f"{shown}:{i}: not valid JSON ({e})")
                continue
            if not isinstance(item, dict):
                problems.append(f"{shown}:{i}: expected a JSON object, got {type(item).__name__}")
                continue
            records.append(Record(shown, i, item))
    if problems and collect is None:
        raise DataError(problems)
    return records


def _maybe_json(value: Any) -> Any:
    """CSV cells holding lists (chat messages, ranking responses, a ranking) are JSON text; decode
    those that parse as a JSON list, keep all other text as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = parse_json(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, list) else value
    return value


def _cell_problem(cells) -> str | None:
    """Why CSV cells are not text: bytes that are not UTF-8, or a NUL (a binary file)."""
    for cell in cells:
        if cell is None:
            continue
        why = _not_utf8(cell, column=False)  # a cell may span lines: no column
        if why:
            return why
        if "\0" in cell:
            return "a NUL character (binary data, not text)"
    return None


def _read_csv(raw: bytes, shown: str, delimiter: str,
              collect: list[str] | None = None) -> list[Record]:
    records: list[Record] = []
    problems = collect if collect is not None else []
    text = io.StringIO(raw.decode("utf-8", "surrogateescape"), newline="")
    reader = csv.DictReader(text, delimiter=delimiter)
    start = 1
    try:
        if reader.fieldnames is None:
            return []
        why = _cell_problem(reader.fieldnames)
        twice = [n for i, n in enumerate(reader.fieldnames) if n in reader.fieldnames[:i]]
        if why or twice:
            raise DataError([f"{shown}:1: header: "
                             + (why or f'the column "{twice[0]}" appears twice')])
        start = reader.line_num + 1
        for row in reader:
            extra = row.pop(None, None)
            why = _cell_problem([*row.values(), *(extra or [])])
            if why:
                problems.append(f"{shown}:{start}: {why}")
            elif extra:
                problems.append(f"{shown}:{start}: more cells than header columns")
            else:
                fields = {k: _maybe_json(v) for k, v in row.items() if v is not None and v != ""}
                records.append(Record(shown, start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        # the csv module cannot go on after this (a cell over its size limit): report the row
        # and what was read before it
        limit = "field larger than field limit"
        msg = (f"a cell is longer than {csv.field_size_limit()} characters" if limit in str(e)
               else f"not valid CSV ({e})")
        problems.append(f"{shown}:{start}: {msg}")
    if problems and collect is None:
        raise DataError(problems)
    return records


def _clean(value: Any) -> Any:
    """Arrow/pandas values -> plain Python (numpy arrays of dicts become lists)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _read_parquet(path: Path, shown: str) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{shown}: cannot read Parquet file ({e})") from None
    return [Record(shown, i, {k: _clean(v) for k, v in row.items() if v is not None})
            for i, row in enumerate(table.to_pylist(), 1)]


def _colon_parts(text: str) -> list[str]:
    """``text`` split at colons outside brackets (a split may be sliced: ``train[:100]``)."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += (ch == "[") - (ch == "]" and depth > 0)
        if ch == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    return [*parts, "".join(current)]


def hub_request(spec: str) -> tuple[tuple, dict, str] | None:
    """How ``datasets.load_dataset`` loads ``spec`` (positional args, keyword args, the name
    that rows are reported under), or None when ``spec`` is neither ``BUILDER:FILES`` nor a hub
    id."""
    builder, sep, files = spec.partition(":")
    if sep and builder in BUILDERS:
        if not files.strip():
            raise UserError(f"{spec}: give the files after '{builder}:' (e.g. "
                            f"{builder}:data/*.{'jsonl' if builder == 'json' else builder})")
        if "://" not in files and not glob.glob(str(Path(files).expanduser()), recursive=True):
            raise UserError(f"{spec}: no file matches {files!r}")
        return (builder,), {"data_files": files, "split": "train"}, f"{spec}[train]"
    parts = _colon_parts(spec)
    repo = parts[0]
    if (not _HUB_ID.fullmatch(repo) or repo.lower().endswith(_DATA_SUFFIXES)
            or len(parts) > 3 or not all(p.strip() for p in parts)):
        return None
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else "train"
    shown = f"{repo}{':' + config if config else ''}[{split}]"
    return (repo,), {"name": config, "split": split}, shown


def _read_hub(spec: str, args: tuple, kwargs: dict, shown: str) -> list[Record]:
    try:
        from datasets import load_dataset
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError(f"{spec}: reading a hub dataset needs `pip install datasets`") from None
    try:
        ds = load_dataset(*args, **kwargs)
    except Exception as e:  # the hub, the network and every builder raise their own types
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        what = ("no local file or folder of that name, and datasets.load_dataset could not load "
                "it as a hub dataset" if args[0] not in BUILDERS
                else "datasets.load_dataset could not read the files")
        raise UserError(f"{spec}: {what} ({type(e).__name__}: {why})") from None
    return _dataset_records(ds, shown)


def _dataset_records(ds, shown: str) -> list[Record]:
    return [Record(shown, i, {k: _clean(v) for k, v in row.items() if v is not None})
            for i, row in enumerate(ds, 1)]


def _read_hf_folder(path: Path, shown: str) -> list[Record]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError(f"{shown}: reading a datasets folder needs `pip install datasets`") from None
    try:
        ds = load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{shown}: not a saved datasets folder ({e})") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise UserError(f"{shown}: DatasetDict has no 'train' split (splits: {list(ds)}); "
                            "point --data at one split's folder")
        ds = ds["train"]
        shown = f"{shown}[train]"
    return _dataset_records(ds, shown)
