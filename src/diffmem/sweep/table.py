"""The results table of a sweep: ``results.jsonl`` + ``results.csv``, one row per run × snapshot.

The table is always rebuilt from the job directories the plan names (never appended to), and
written atomically, so it holds no duplicate and no partial row whatever was interrupted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_write_text, to_jsonable
from diffmem.sweep.jobs import ROW_KEYS


def _order(row: dict[str, Any]) -> tuple:
    kimg = row.get("snapshot_kimg")
    return (row.get("size", 0), row.get("repeat", 0), row.get("kind") != "optimal", -1 if kimg is None else kimg)


def write_table(directory: str | Path, rows: Sequence[dict[str, Any]], extra_keys: Sequence[str] = ()) -> None:
    """Write ``results.jsonl`` and ``results.csv`` in ``directory`` (rows de-duplicated by job + snapshot)."""
    seen: set[tuple] = set()
    unique = []
    for r in rows:
        ident = tuple(r.get(k) for k in extra_keys) + (r.get("job"), r.get("kind"), r.get("snapshot_kimg"))
        if ident not in seen:
            seen.add(ident)
            unique.append(r)
    unique.sort(key=lambda r: tuple(str(r.get(k)) for k in extra_keys) + _order(r))
    keys = list(extra_keys) + [k for k in ROW_KEYS if k not in extra_keys]
    jsonl = "".join(json.dumps(to_jsonable({k: r.get(k) for k in keys}), sort_keys=False) + "\n" for r in unique)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in unique:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
    directory = Path(directory)
    atomic_write_text(directory / "results.jsonl", jsonl)
    atomic_write_text(directory / "results.csv", buf.getvalue())


def read_table(directory: str | Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl`` (empty when there is none)."""
    path = Path(directory) / "results.jsonl"
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
