"""Many new rows of one model in one fixed-shape statement, for the line's hot writes.

``Model.objects.bulk_create`` compiles its INSERT anew for every batch: for each row
and column it runs the field's ``pre_save`` and ``get_db_prep_save`` through the
compiler, and the statement's shape (and text) changes with the number of rows. A
model with a JSON field cannot use Django's UNNEST form on PostgreSQL, so its INSERT
has a placeholder per value (thousands for a batch), which psycopg then splits in
Python on every call: its parse cache takes statements of at most 50 parameters.
In the bulk line (completion batches of about a hundred runs) the worker spent
2.3 ms of CPU a task completing them, 1.1 ms with these statements (bench/worker_hooks.py,
``complete_batch``).

``rows_insert`` writes the same rows with a statement whose text depends only on the
model, its columns and the options, compiled once per process:

- PostgreSQL: ``INSERT ... SELECT ... FROM json_to_recordset(%s::json) AS u(c0 type,
  ...)``: the rows as one JSON document, whatever their number (psycopg's cache keeps
  the statement's parse); ``RETURNING`` the new ids, in the rows' order, as Django's
  own UNNEST form does. One JSON text rather than an array per column, as this module
  first wrote them (``unnest(%s::type[], ...)``): psycopg dumps an array in Python,
  item by item, which was a tenth of a completion batch's CPU in the worker, where
  ``json.dumps`` writes the whole document in C (see ``_json_document``). A batch with
  a value JSON cannot carry exactly (a float NaN) goes by the arrays instead, whole.
  One row (a task the API takes, its event) goes as ``VALUES (%s, ...)`` instead:
  one-element arrays cost more to bind than the values (psycopg dumps an array in
  Python), and this saved a quarter of ``task_create``'s CPU against Model.save.
  Both are prepared (``kaizen_web.prepared.prepared_cursor``): PostgreSQL plans each
  shape once per connection, not at every call;
- SQLite: ``executemany`` of a one-row INSERT (the sqlite3 module runs it in C). Its
  ids are read after it: SQLite has one writer at a time, and a row's new id is one
  more than the largest in its table (the largest ever, with AUTOINCREMENT), so the
  rows of one executemany have consecutive ids ending at ``last_insert_rowid()``.

Values go through each field's ``get_db_prep_save`` as Django's would, except those
that need no conversion (an int for an integer column, a str for a text one, a bool,
a float, None, a finite Decimal; on PostgreSQL an aware datetime and a UUID, which
Django hands to psycopg as they are): ``get_db_prep_save`` was a third of writing a
completion batch's rows, 10-20 us a value (see ``_ready``). ``auto_now`` and
``auto_now_add`` fields get their ``pre_save``. No signals are sent: ``bulk_create``
sends none either.
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connections, router
from django.db.models import Field, JSONField, Model

from kaizen_web.prepared import prepared_cursor

# Columns whose value needs no conversion when it is already of the plain Python type
# the column takes (anything else goes through get_db_prep_save).
_PLAIN: dict[str, tuple[type, ...]] = {
    "AutoField": (int,),
    "BigAutoField": (int,),
    "SmallAutoField": (int,),
    "IntegerField": (int,),
    "BigIntegerField": (int,),
    "SmallIntegerField": (int,),
    "PositiveIntegerField": (int,),
    "PositiveBigIntegerField": (int,),
    "PositiveSmallIntegerField": (int,),
    "CharField": (str,),
    "TextField": (str,),
    "SlugField": (str,),
    "BooleanField": (bool,),
    "FloatField": (float,),
    "BinaryField": (bytes, bytearray, memoryview),
}


@dataclass(frozen=True)
class ValueKinds:
    """What of a field's values is written as it is, without ``get_db_prep_save``
    (``value_kinds``)."""

    # Exactly these types (type() is compared exactly: a bool is not taken for an
    # int, nor an enum member for its str); () for none.
    plain: tuple[type, ...]
    # Or a value this says is ready (see _ready).
    ready: Callable[[Any], bool] | None

    def as_is(self, value: Any) -> bool:
        return value is None or type(value) in self.plain or (self.ready is not None and self.ready(value))


@dataclass(frozen=True)
class _Column:
    field: Field
    attname: str
    kinds: ValueKinds
    # auto_now / auto_now_add: the value comes from pre_save.
    pre_save: bool
    json: bool


@dataclass(frozen=True)
class _Statement:
    sql: str
    columns: tuple[_Column, ...]
    vendor: str
    # PostgreSQL, several rows: ``sql`` takes them as one JSON document whose
    # objects have these keys, one a column; ``arrays_sql`` as an array a column.
    keys: tuple[str, ...] = ()
    arrays_sql: str = ""


_statements: dict[tuple, _Statement] = {}
_lock = threading.Lock()


def _finite_decimal(value: Any) -> bool:
    # DecimalField.get_db_prep_save gives Decimal(value) back, and refuses a NaN or an infinity.
    return type(value) is Decimal and value.is_finite()


def _aware_datetime(value: Any) -> bool:
    # A naive one is made aware (with a warning) by DateTimeField.get_prep_value;
    # naive as Django tells it (timezone.is_naive): no offset.
    return type(value) is datetime.datetime and value.utcoffset() is not None


def _uuid(value: Any) -> bool:
    return type(value) is uuid.UUID


def _ready(internal: str, vendor: str) -> Callable[[Any], bool] | None:
    """What of a column's values ``get_db_prep_save`` would return unchanged (or
    equal), so they are written as they are: a finite Decimal (any database); on
    PostgreSQL an aware datetime (``adapt_datetimefield_value`` returns it) and a
    UUID (a native column). SQLite's backend turns those two into text."""
    if internal == "DecimalField":
        return _finite_decimal
    if vendor == "postgresql":
        return {"DateTimeField": _aware_datetime, "UUIDField": _uuid}.get(internal)
    return None


def value_kinds(field: Field, vendor: str) -> ValueKinds:
    """The values of ``field`` that go to a ``vendor`` database as they are,
    without ``get_db_prep_save`` (see db_value)."""
    internal = _internal_type(field)
    return ValueKinds(plain=_PLAIN.get(internal, ()), ready=_ready(internal, vendor))


def _columns(model: type[Model], vendor: str) -> tuple[_Column, ...]:
    return tuple(
        _Column(
            field=field,
            attname=field.attname,
            kinds=value_kinds(field, vendor),
            pre_save=bool(getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)),
            json=isinstance(field, JSONField),
        )
        for field in model._meta.concrete_fields
        if not field.primary_key
    )


def _field(model: type[Model], name: str) -> Field:
    field = model._meta.get_field(name)
    if not isinstance(field, Field):  # a reverse relation
        raise ValueError(f"{model.__name__}.{name} is not a column")
    return field


def _internal_type(field: Field) -> str:
    # A foreign key's column holds its target's values.
    target = getattr(field, "target_field", field) if field.is_relation else field
    return target.get_internal_type()


def _column_name(field: Field) -> str:
    if field.column is None:  # a many-to-many field
        raise ValueError(f"{field} has no column of its own")
    return field.column


def _db_type(field: Field, connection) -> str:
    db_type = field.db_type(connection)
    if db_type is None:
        raise ValueError(f"{field} has no column type")
    # The base type (varchar, not varchar(40)): an array of it takes any length.
    return db_type.split("(")[0]


def _statement(
    model: type[Model],
    alias: str,
    *,
    returning: bool,
    ignore_conflicts: bool,
    unique_fields: tuple[str, ...] = (),
    update_fields: tuple[str, ...] = (),
    one: bool = False,
) -> _Statement:
    key = (model, alias, returning, ignore_conflicts, unique_fields, update_fields, one)
    statement = _statements.get(key)
    if statement is not None:
        return statement
    connection = connections[alias]
    quote = connection.ops.quote_name
    columns = _columns(model, connection.vendor)
    names = ", ".join(quote(_column_name(column.field)) for column in columns)
    table = quote(model._meta.db_table)
    keys: tuple[str, ...] = ()
    arrays_sql = ""
    if one:
        # One row: a plain VALUES list. Arrays of one element cost more to bind
        # (psycopg dumps each array in Python) than the values themselves.
        values = ", ".join("%s::jsonb" if column.json else "%s" for column in columns)
        sql = f"INSERT INTO {table} ({names}) VALUES ({values})"
    elif connection.vendor == "postgresql":
        keys = tuple(f"c{n}" for n in range(len(columns)))
        # JSON columns go as text (their field's encoder wrote it), cast per row.
        db_types = ["text" if column.json else _db_type(column.field, connection) for column in columns]
        selected = ", ".join(
            f"{key}::jsonb" if column.json else key for key, column in zip(keys, columns, strict=True)
        )
        definitions = ", ".join(f"{key} {db_type}" for key, db_type in zip(keys, db_types, strict=True))
        arrays = ", ".join(f"%s::{db_type}[]" for db_type in db_types)
        sql = (
            f"INSERT INTO {table} ({names}) SELECT {selected} "
            f"FROM json_to_recordset(%s::json) AS u({definitions})"
        )
        arrays_sql = (
            f"INSERT INTO {table} ({names}) SELECT {selected} FROM unnest({arrays}) AS u({', '.join(keys)})"
        )
    else:
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
    tail = ""
    if ignore_conflicts:
        tail += " ON CONFLICT DO NOTHING"
    elif update_fields:
        quoted = {name: quote(_column_name(_field(model, name))) for name in unique_fields + update_fields}
        tail += " ON CONFLICT ({}) DO UPDATE SET {}".format(
            ", ".join(quoted[name] for name in unique_fields),
            ", ".join(f"{quoted[name]} = EXCLUDED.{quoted[name]}" for name in update_fields),
        )
    if returning and connection.vendor == "postgresql":
        tail += f" RETURNING {quote(_column_name(_field(model, model._meta.pk.name)))}"
    statement = _Statement(
        sql=sql + tail,
        columns=columns,
        vendor=connection.vendor,
        keys=keys,
        arrays_sql=arrays_sql and arrays_sql + tail,
    )
    with _lock:
        _statements[key] = statement
    return statement


def _values(column: _Column, objs: Sequence[Model], connection) -> list[Any]:
    field, as_is = column.field, column.kinds.as_is
    if column.pre_save:
        values = [field.pre_save(obj, True) for obj in objs]
    else:
        values = [getattr(obj, column.attname) for obj in objs]
    out = []
    for value in values:
        if as_is(value):
            out.append(value)
        elif column.json and connection.vendor == "postgresql":
            # As JSONField would encode it (with its encoder), as text for the ::jsonb cast.
            out.append(json.dumps(value, cls=field.encoder))  # type: ignore[attr-defined]
        else:
            out.append(field.get_db_prep_save(value, connection))
    return out


def _json_value(value: Any) -> Any:
    """What a column value JSON has no type for becomes in the document: the text
    PostgreSQL reads back as the same value (json_to_recordset gives a string's
    text to the column type's input function)."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.timedelta):
        # Every part signed: under IntervalStyle sql_standard PostgreSQL applies a
        # leading minus to the unsigned parts after it ("-1 days 86399 seconds"
        # would read as a day and 23:59:59 back, not one second back).
        return f"{value.days:+d} days {value.seconds:+d} seconds {value.microseconds:+d} microseconds"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"{type(value).__name__} has no JSON form for rows_insert")


def _json_document(keys: Sequence[str], columns: Sequence[list[Any]]) -> str | None:
    """The rows as a JSON array of objects (keys ``c0``, ``c1``...), or None when
    a value has no exact JSON form (a float NaN or infinity, a type not known here):
    the arrays carry those."""
    rows = [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
    try:
        return json.dumps(
            rows, default=_json_value, allow_nan=False, ensure_ascii=False, check_circular=False
        )
    except (ValueError, TypeError):
        return None


def db_value(field: Field, value: Any, connection, kinds: ValueKinds) -> Any:
    """``field.get_db_prep_save(value)``, skipped for a value that needs none: None,
    or one ``kinds`` takes as it is (``value_kinds``)."""
    return value if kinds.as_is(value) else field.get_db_prep_save(value, connection)


def rows_insert(
    model: type[Model],
    objs: Sequence[Model],
    *,
    returning: bool = False,
    ignore_conflicts: bool = False,
    unique_fields: Sequence[str] = (),
    update_fields: Sequence[str] = (),
) -> None:
    """INSERT ``objs`` (new instances of ``model``, their primary keys unset) in one
    statement of a fixed shape. With ``returning``, each instance gets its new
    primary key, as after ``bulk_create``. ``ignore_conflicts``: a row that would
    break a unique constraint is skipped (not with ``returning``: the ids would no
    longer match the rows). ``update_fields``: a row whose ``unique_fields`` match
    an existing one's updates these fields of it instead, as bulk_create's
    ``update_conflicts`` (not with ``returning`` either)."""
    if not objs:
        return
    if returning and (ignore_conflicts or update_fields):
        raise ValueError("rows_insert cannot return the ids of rows it may skip or merge")
    if bool(unique_fields) != bool(update_fields):
        raise ValueError("rows_insert updates on a conflict given both unique_fields and update_fields")
    alias = router.db_for_write(model)
    connection = connections[alias]
    # One row on PostgreSQL: the VALUES form (see above). SQLite's is the same either way.
    one = len(objs) == 1 and connection.vendor == "postgresql"
    statement = _statement(
        model,
        alias,
        returning=returning,
        ignore_conflicts=ignore_conflicts,
        unique_fields=tuple(unique_fields),
        update_fields=tuple(update_fields),
        one=one,
    )
    columns = [_values(column, objs, connection) for column in statement.columns]
    # Prepared on PostgreSQL: a statement's text is fixed per shape, planned once per connection.
    with prepared_cursor(alias) as cursor:
        if statement.vendor == "postgresql":
            if one:
                cursor.execute(statement.sql, [values[0] for values in columns])
            else:
                document = _json_document(statement.keys, columns)
                if document is None:
                    cursor.execute(statement.arrays_sql, columns)
                else:
                    cursor.execute(statement.sql, [document])
            if returning:
                for obj, (pk,) in zip(objs, cursor.fetchall(), strict=True):
                    obj.pk = pk
        elif statement.vendor == "sqlite":
            cursor.executemany(statement.sql, list(zip(*columns, strict=True)))
            if returning:
                cursor.execute("SELECT last_insert_rowid()")
                (last,) = cursor.fetchone()
                for pk, obj in enumerate(objs, start=last - len(objs) + 1):
                    obj.pk = pk
        else:
            raise NotImplementedError(f"rows_insert knows PostgreSQL and SQLite, not {statement.vendor}")
    for obj in objs:
        obj._state.adding = False
        obj._state.db = alias


def rows_insert_linked(parent: Model, child: Model, *, link: str) -> None:
    """INSERT a new ``parent`` and a new ``child`` whose foreign key ``link`` points
    at it (their primary keys unset), as ``rows_insert`` of the parent (returning its
    id) and then of the child would: the parent gets its new primary key and the
    child's link is set to it (the child's own id is not read back, as ``rows_insert``
    without ``returning``).

    On PostgreSQL in one statement, the child's INSERT taking the parent's id from
    a data-modifying WITH: one round trip, and atomic by itself, so a caller in
    autocommit needs no transaction (BEGIN and COMMIT, two more) to keep the two
    together. Elsewhere, the two INSERTs: call it in a transaction there.

    The statement has a parameter for every column of both models (47 for a task
    and its event): psycopg keeps its parse of a statement of at most 50
    (``psycopg._queries.MAX_CACHED_STATEMENT_PARAMS``), and parses a longer one in
    Python at every call (tests/kaizen_web/test_rows.py checks the task's)."""
    alias = router.db_for_write(type(parent))
    connection = connections[alias]
    field = _field(type(child), link)
    if (
        field.remote_field is None
        or field.remote_field.model is not type(parent)
        or getattr(field, "target_field", None) is not type(parent)._meta.pk
    ):
        raise ValueError(
            f"{type(child).__name__}.{link} is not a foreign key to {type(parent).__name__}'s primary key"
        )
    if connection.vendor != "postgresql":
        rows_insert(type(parent), [parent], returning=True)
        setattr(child, field.attname, parent.pk)
        rows_insert(type(child), [child])
        return
    statement = _linked_statement(type(parent), type(child), field, alias)
    values = [_values(column, [parent], connection)[0] for column in statement.parent_columns]
    values += [_values(column, [child], connection)[0] for column in statement.child_columns]
    with prepared_cursor(alias) as cursor:
        cursor.execute(statement.sql, values)
        (parent_pk,) = cursor.fetchone()
    parent.pk = parent_pk
    setattr(child, field.attname, parent_pk)
    for obj in (parent, child):
        obj._state.adding = False
        obj._state.db = alias


@dataclass(frozen=True)
class _LinkedStatement:
    sql: str
    parent_columns: tuple[_Column, ...]
    # The child's, but the link (its value is the parent's new id).
    child_columns: tuple[_Column, ...]


_linked_statements: dict[tuple, _LinkedStatement] = {}


def _linked_statement(
    parent_model: type[Model], child_model: type[Model], link: Field, alias: str
) -> _LinkedStatement:
    """``rows_insert_linked``'s statement on PostgreSQL, built once per process."""
    key = (parent_model, child_model, link.name, alias)
    statement = _linked_statements.get(key)
    if statement is not None:
        return statement
    quote = connections[alias].ops.quote_name

    def values(columns: Sequence[_Column]) -> str:
        return ", ".join("%s::jsonb" if column.json else "%s" for column in columns)

    def names(columns: Sequence[_Column]) -> str:
        return ", ".join(quote(_column_name(column.field)) for column in columns)

    vendor = connections[alias].vendor
    parent_columns = _columns(parent_model, vendor)
    rest = tuple(column for column in _columns(child_model, vendor) if column.field is not link)
    parent_pk = quote(_column_name(parent_model._meta.pk))
    link_column = quote(_column_name(link))
    sql = (
        f"WITH parent AS (INSERT INTO {quote(parent_model._meta.db_table)} ({names(parent_columns)}) "
        f"VALUES ({values(parent_columns)}) RETURNING {parent_pk}) "
        f"INSERT INTO {quote(child_model._meta.db_table)} ({link_column}, {names(rest)}) "
        f"VALUES ((SELECT {parent_pk} FROM parent), {values(rest)}) "
        f"RETURNING {link_column}"
    )
    statement = _LinkedStatement(sql=sql, parent_columns=parent_columns, child_columns=rest)
    with _lock:
        _linked_statements[key] = statement
    return statement
