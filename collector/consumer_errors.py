"""How the collector loop classifies exceptions (collector/consumer.py):
a row the store refuses, a store DuckDB invalidated, a NATS timeout."""

from __future__ import annotations

import asyncio

from collector.store import StoreError


def _is_data_error(exc) -> bool:
    """A row the store refuses (constraint, conversion), as opposed to a disk,
    lock or memory problem that retrying later can cure."""
    import duckdb
    import pyarrow as pa
    if isinstance(exc, (duckdb.IOException, duckdb.OutOfMemoryException, OSError)):
        return False
    return isinstance(exc, (duckdb.ConstraintException, duckdb.ConversionException,
                            duckdb.InvalidInputException, duckdb.BinderException,
                            duckdb.TypeMismatchException, pa.ArrowException))


def _is_fatal(exc) -> bool:
    """DuckDB invalidated the database (e.g. out of memory while flushing a
    commit): every later statement fails until the process reopens the file."""
    import duckdb
    return isinstance(exc, duckdb.FatalException) or "database has been invalidated" in str(exc)


def _fatal_error(cfg, exc) -> StoreError:
    text = str(exc).strip().splitlines()
    why = next((t for t in text if "allocate" in t or "Original error" in t), text[0] if text else "")
    hint = ""
    if "allocate" in str(exc) or "memory" in str(exc).lower():
        hint = (f" It ran out of memory at --memory-limit {cfg.memory_limit or 'DuckDB default'}: raise the limit "
                "(docs/collector.md \"Memory\").")
    return StoreError(f"DuckDB invalidated the store {cfg.db} ({why.strip()[:300]}); the collector stops. "
                      "Nothing of the failed batches was acked, so nothing is lost: restart the collector "
                      f"(the systemd unit does) and it resumes from the stream.{hint}")


def _describe(exc) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no answer in time)"


def _is_timeout(exc) -> bool:
    import nats.errors
    return isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError))
