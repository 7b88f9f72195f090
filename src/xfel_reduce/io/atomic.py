"""Atomic writes of small text outputs (JSON summaries, verdicts, HTML pages).

The content goes to a temporary file in the target directory that is renamed
over the target only when complete, so Snakemake never sees a partial output as
finished and a reader never sees half a file.  (HDF5 outputs use
:class:`xfel_reduce.io.euxfel.AtomicH5File`.)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_json"]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; parents are created.

    The file gets the permissions of a normally created one (``mkstemp`` would
    leave 0600), since reports and summaries are shared within a proposal.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1, **dumps_kw: Any) -> Path:
    """``json.dumps(obj, indent=indent, **dumps_kw)`` written with :func:`write_atomic`."""
    return write_atomic(path, json.dumps(obj, indent=indent, **dumps_kw))
