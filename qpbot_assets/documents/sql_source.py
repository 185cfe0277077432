"""A database table as a source: one document per row.

A table is listed as (uri, version) pairs reading only its ids and versions: the
`updated_column`, or on PostgreSQL an md5 the server computes over what makes the document
(other databases send those columns and the hash is computed here). The documents of new
and changed rows are then fetched a batch at a time, rendered as Markdown (front matter,
the title as a heading, the text) and kept as snapshots in the document store, where
`raw_document` reads them the way it reads a file.

Error messages name the setting or flag to fix (a `setting` function maps a field to its
name), and a URL is only ever shown without its password.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from itertools import islice
from pathlib import Path

import sqlalchemy as sa

from qpbot_assets.documents.sources import SourceObject
from qpbot_assets.documents.store import DocumentStore, fingerprint
from qpbot_serving.answer_log import engine_for
from qpbot_serving.document_store import ROW_DOCUMENT_SUFFIX, row_uri
from qpbot_serving.settings import SqlSource

FETCH_BATCH_ROWS = 500  # ids per `WHERE id IN (...)` when fetching documents
LIST_BATCH_ROWS = 10_000  # rows a listing holds in memory at a time (server-side cursor)
# Bump when the way a row becomes a document changes, so every row is fetched again.
ROW_DOCUMENT_VERSION = 1


class SqlSourceError(Exception):
    """A table that cannot be read as configured; the message names the setting to fix."""


def hidden_password(url: str) -> str:
    """The URL as it may be shown: the password replaced by ***."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<a URL that does not parse>"


def source_name(source: SqlSource) -> str:
    """The host part of the source's row URIs: its `name`, else the database's name and a hash
    of where it is (backend, user, host, port, database; not the driver or the password)."""
    if source.name:
        return source.name
    url = sa.make_url(source.url.get_secret_value())
    where = f"{url.get_backend_name()}://{url.username}@{url.host}:{url.port}/{url.database}"
    readable = f"{url.get_backend_name()}-{Path(url.database or '').stem}".lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", readable).strip("-.")[:40]
    return f"{slug}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def row_document(text: object, title: object = None, metadata: dict | None = None) -> bytes:
    """A row as a Markdown document: front matter with its metadata and title (one line
    each), the title again as its first heading so that its words are searched, then the
    text."""
    front = {**(metadata or {}), "title": title}
    lines = [f"{key}: {_one_line(value)}" for key, value in front.items() if _one_line(value)]
    parts = ["---\n" + "\n".join(lines) + "\n---\n"] if lines else []
    if _one_line(title):
        parts.append(f"# {_one_line(title)}\n")
    if text is not None and str(text).strip():
        parts.append(str(text))
    return "\n".join(parts).encode()


def _one_line(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, date | datetime):
        return value.isoformat()
    return " ".join(str(value).split())


class SqlTable:
    """One configured table, open for listing and fetching; use it as a context manager
    (it connects, checks the table and columns, and closes its connections on exit).

    `setting(field)` names the setting or flag behind a field of SqlSource in error
    messages (the field itself by default)."""

    def __init__(self, source: SqlSource, setting: Callable[[str], str] = str):
        self.source = source
        self._setting = setting
        url = source.url.get_secret_value()
        self.shown_url = hidden_password(url)
        try:
            self.name = source_name(source)
        except sa.exc.ArgumentError:
            raise SqlSourceError(
                f"{setting('url')}: {self.shown_url} is not a SQLAlchemy URL "
                "(dialect://user:password@host/database)"
            ) from None
        self._url = url
        self._ids: dict[str, object] = {}  # uri -> the id as the database gives it

    @property
    def uri_prefix(self) -> str:
        """What the URIs of this table's rows start with."""
        return row_uri(self.name, self.source.table, "")

    def __enter__(self) -> SqlTable:
        schema, _, name = self.source.table.rpartition(".")
        url = sa.make_url(self._url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            if not Path(url.database).is_file():  # connecting would create an empty database
                raise SqlSourceError(f"{self._setting('url')}: no SQLite file at {url.database}")
        try:
            self.engine = engine_for(self._url)
        except (ImportError, sa.exc.ArgumentError) as problem:
            raise SqlSourceError(
                f"{self._setting('url')}: cannot use {self.shown_url}: {problem} (install its "
                "driver; postgresql:// uses psycopg2, which is installed)"
            ) from None
        try:
            with self._reading(), self.engine.connect() as connection:
                self.table = sa.Table(
                    name, sa.MetaData(), schema=schema or None, autoload_with=connection
                )
        except sa.exc.NoSuchTableError:
            self.engine.dispose()
            raise SqlSourceError(
                f"{self._setting('table')}: no table {self.source.table!r} in {self.shown_url}"
            ) from None
        except BaseException:
            self.engine.dispose()
            raise
        self._check_columns()
        return self

    def __exit__(self, *exc_info) -> None:
        self.engine.dispose()

    @contextmanager
    def _reading(self):
        """Turns a database error into a SqlSourceError that names the URL's setting and
        shows the URL without its password; the driver's first line says why (refused,
        no such user)."""
        try:
            yield
        except sa.exc.DBAPIError as problem:
            reason = str(problem.orig).strip().splitlines()[0] if problem.orig else "error"
            raise SqlSourceError(
                f"{self._setting('url')}: cannot read {self.shown_url}: {reason}"
            ) from None

    def _check_columns(self) -> None:
        wanted = [
            ("id_column", self.source.id_column),
            ("text_column", self.source.text_column),
            ("title_column", self.source.title_column),
            ("updated_column", self.source.updated_column),
            *(("metadata_columns", column) for column in self.source.metadata_columns),
        ]
        for field, column in wanted:
            if column is not None and column not in self.table.c:
                self.engine.dispose()
                raise SqlSourceError(
                    f"{self._setting(field)}: table {self.source.table!r} has no column "
                    f"{column!r}; its columns: {', '.join(self.table.c.keys())}"
                )

    @property
    def _content_columns(self) -> list[sa.Column]:
        names = [self.source.text_column, self.source.title_column, *self.source.metadata_columns]
        return [self.table.c[name] for name in names if name is not None]

    def _version_column(self) -> sa.ColumnElement | None:
        """The row version the server gives: the updated column, or an md5 on PostgreSQL."""
        if self.source.updated_column:
            return self.table.c[self.source.updated_column]
        if self.engine.dialect.name == "postgresql":
            # Control characters that text seldom holds: NULL and '' hash apart, and so do
            # ('a', 'b') and ('a b', NULL).
            parts = [sa.func.coalesce(sa.cast(c, sa.Text), "\x1e") for c in self._content_columns]
            return sa.func.md5(sa.func.concat_ws("\x1f", *parts))
        return None

    def _version(self, server_version: object, content: Sequence[object]) -> str:
        # Which columns make the document is part of every version: a changed configuration
        # fetches every row again.
        columns = fingerprint(
            ROW_DOCUMENT_VERSION,
            self.source.text_column,
            self.source.title_column,
            self.source.metadata_columns,
        )[:8]
        if server_version is None and not self.source.updated_column:
            server_version = fingerprint(*content)
        return f"{columns}:{server_version}"

    def list_rows(self) -> list[SourceObject]:
        """Every row as (uri, version), reading only ids and versions where the server can
        give them. Rows without an id are left out; an id that repeats is an error."""
        id_column = self.table.c[self.source.id_column]
        version = self._version_column()
        columns = (
            [id_column, version] if version is not None else [id_column, *self._content_columns]
        )
        objects: list[SourceObject] = []
        self._ids = {}
        with self._reading(), self.engine.connect() as connection:
            result = connection.execution_options(yield_per=LIST_BATCH_ROWS).execute(
                sa.select(*columns)
            )
            for row in result:
                row_id = row[0]
                if row_id is None:
                    continue
                uri = row_uri(self.name, self.source.table, row_id)
                if uri in self._ids:
                    raise SqlSourceError(
                        f"{self._setting('id_column')}: {self.source.id_column!r} is not unique "
                        f"in {self.source.table!r}: {row_id!r} appears more than once"
                    )
                self._ids[uri] = row_id
                server_version = row[1] if version is not None else None
                objects.append(SourceObject(uri, self._version(server_version, row[1:])))
        return objects

    def fetch_documents(
        self, objects: Iterable[SourceObject]
    ) -> Iterator[tuple[SourceObject, bytes]]:
        """The documents of listed rows, a batch at a time, each with the version read with
        its content (it may be newer than the listing's). Rows deleted since are left out."""
        id_column = self.table.c[self.source.id_column]
        version = self._version_column()
        content = self._content_columns
        titled = self.source.title_column is not None
        columns = [id_column, version if version is not None else sa.null(), *content]
        with self._reading(), self.engine.connect() as connection:
            for batch in _batches(objects, FETCH_BATCH_ROWS):
                ids = [self._ids[obj.uri] for obj in batch]
                for row in connection.execute(sa.select(*columns).where(id_column.in_(ids))):
                    values = list(row[2:])
                    text = values[0]
                    title = values[1] if titled else None
                    metadata = dict(
                        zip(self.source.metadata_columns, values[1 + titled :], strict=True)
                    )
                    uri = row_uri(self.name, self.source.table, row[0])
                    yield (
                        SourceObject(uri, self._version(row[1], values)),
                        row_document(text, title, metadata),
                    )

    def stage(self, store: DocumentStore, objects: Iterable[SourceObject]) -> int:
        """Keeps the documents of listed rows as snapshots in `store`, fetching only those
        whose snapshot is not at the listed version; returns how many were fetched."""
        due = [
            obj
            for obj in objects
            if (store.snapshot(obj.document_id) or {}).get("version") != obj.version
        ]
        store.register_sources((obj.document_id, obj.uri) for obj in due)
        for obj, document in self.fetch_documents(due):
            store.put_snapshot(obj.document_id, document, ROW_DOCUMENT_SUFFIX, obj.version)
        return len(due)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
