"""What tells the SQLite and PostgreSQL backends' SQL apart, as data: the shared job and webhook
stores (:mod:`fluxserve.backends.sql_jobs`, :mod:`fluxserve.backends.sql_webhooks`) write each
statement once, with ``?`` for parameters and the pieces below where the two dialects differ.
Each backend's database module holds its dialect (``sqlite.db.SQLITE``, ``postgres.db.POSTGRES``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """One SQL dialect as the stores use it."""

    placeholder: str
    """The driver's parameter mark (``?`` or ``%s``); statements are written with ``?``."""
    prefix: str
    """What the tables' names start with (``fluxserve_`` on a database shared with others)."""
    owner_column: str
    """The jobs table's column naming the key that made a job."""
    row_order: str
    """A column that orders rows by insertion, the tie-break of queue order."""
    null_safe_eq: str
    """Equality that holds for two NULLs too."""
    text_cast: str
    """Appended to a text parameter compared null-safely (PostgreSQL cannot type a bare NULL)."""
    sort_nullable: bool
    """Whether ``sort_at`` may be NULL (SQLite rows made before it existed): then queue order
    falls back to ``created_at``."""
    encode_json: Callable[[Any], Any]
    """A JSON value (not None) as the driver stores it."""
    decode_json: Callable[[Any], Any]
    """A JSON column's value as read, to Python (None stays None)."""
    json_number: str
    """A number in a JSON column: a template with ``{column}`` and ``{key}``."""
    lock_rows: str
    """Appended to a SELECT whose rows the transaction then changes (empty where a write
    transaction already excludes every other writer)."""
    skip_locked: str
    """Appended to a SELECT that claims rows, so concurrent claimers skip each other's."""
    returning: bool
    """Whether ``UPDATE ... RETURNING`` may be used (SQLite has it only from 3.35)."""
    worker_column: bool
    """Whether the jobs table records which worker runs a job."""
    flow_lock: str | None
    """A statement taking a transaction-long lock on a name: concurrent submissions of one
    fair-share flow read its last end tag one at a time (None: transactions already do)."""

    def table(self, name: str) -> str:
        """The table ``name`` is called in this database."""
        return self.prefix + name

    def sql(self, text: str) -> str:
        """``text`` with the driver's parameter mark for each ``?``."""
        return text.replace("?", self.placeholder)

    def same(self, left: str, right: str | None = None) -> str:
        """``left`` equals ``right`` (default: a text parameter), NULL equalling NULL."""
        return f"{left} {self.null_safe_eq} {right or '?' + self.text_cast}"

    def sort_key(self, alias: str = "") -> str:
        """A job's place in the queue (``alias``: the table's alias in the statement)."""
        a = f"{alias}." if alias else ""
        return f"COALESCE({a}sort_at, {a}created_at)" if self.sort_nullable else f"{a}sort_at"

    def queue_order(self, alias: str = "") -> str:
        """The columns queued jobs are taken in order of."""
        a = f"{alias}." if alias else ""
        return f"{self.sort_key(alias)}, {a}{self.row_order}"

    def json(self, value: Any) -> Any:
        """``value`` as a JSON parameter; None as NULL."""
        return None if value is None else self.encode_json(value)

    def number(self, column: str, key: str) -> str:
        """The number at ``key`` in the JSON object in ``column``."""
        return self.json_number.format(column=column, key=key)
