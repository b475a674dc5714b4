"""Recipients from a SQL query (any SQLAlchemy URL), streamed from the server (``stream_results``);
the URL's password never appears in a message."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailcast.errors import SourceError
from mailcast.recipients.model import Recipient
from mailcast.recipients.stream import RecipientStream, cell_text, check_header, checked_fields
from mailcast.redact import redact_url
from mailcast.spec import RecipientSource


def _db_message(exc: BaseException, url: str) -> str:
    """The first line of the driver's message, with the URL's password (if any) masked."""
    original = getattr(exc, "orig", None)
    message = str(original if original is not None else exc).strip()
    message = message.splitlines()[0] if message else type(exc).__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    message = message.replace(url, redact_url(url))
    if password:
        message = message.replace(str(password), "***")
    return message


def read_sql(source: RecipientSource) -> RecipientStream:
    """Run ``source.sql.query`` and stream its rows (numbered from 1)."""
    assert source.sql is not None
    url = source.sql.url
    where = redact_url(url)
    try:
        engine = create_engine(url)
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"the database driver {exc.name!r} is not installed",
            where=where,
            hint="install the driver, or check the URL's scheme (e.g. postgresql+psycopg://)",
        ) from None
    except Exception as exc:
        raise SourceError(
            f"invalid database URL: {_db_message(exc, url)}",
            where=where,
            hint="check `recipients.sql.url` (a SQLAlchemy URL, e.g. postgresql+psycopg://...)",
        ) from None

    def query_failed(exc: SQLAlchemyError) -> SourceError:
        return SourceError(
            f"query failed: {_db_message(exc, url)}",
            where=where,
            hint="check `recipients.sql.query` (it must be a SELECT returning rows)",
        )

    conn = None
    try:
        try:
            conn = engine.connect()
        except Exception as exc:
            raise SourceError(
                f"cannot connect: {_db_message(exc, url)}",
                where=where,
                hint="check `recipients.sql.url`: host, port, database, user and password",
            ) from None
        try:
            result = conn.execution_options(stream_results=True).execute(text(source.sql.query))
            names = result.keys()
            columns = [str(c).strip() for c in names]
        except SQLAlchemyError as exc:
            raise query_failed(exc) from None
        check_header(columns, source, where)
    except BaseException:
        if conn is not None:
            conn.close()
        engine.dispose()
        raise
    index = columns.index(source.email_column)

    def rows() -> Iterator[Recipient]:
        try:
            for number, record in enumerate(result, start=1):
                values = [cell_text(v) for v in record]
                reason, _ = checked_fields(values, columns, index, f"row {number}")
                fields = dict(zip(columns, values, strict=True))
                yield Recipient(number, values[index], fields, reason)
        except SQLAlchemyError as exc:
            raise query_failed(exc) from None

    def close() -> None:
        try:
            conn.close()
        finally:
            engine.dispose()

    return RecipientStream(where, columns, rows(), close)
