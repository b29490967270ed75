"""Querysets compiled to SQL once per process and database, then run with new values.

Django compiles a queryset to SQL every time it is evaluated. For the line's hottest
lookups (a handful of filters, a subquery or two) that compilation cost 1 to 3.5 ms of
CPU per call on these machines, ten times what the database spent answering, once or
more for every task. A ``Prepared`` query is built once with stand-in values and
compiled; the positions of the stand-ins among the SQL's parameters are noted, and
each call then only puts its own values in their places and runs the SQL.

It is for ``values_list()`` shapes: rows come back as tuples, converted as Django
converts them (a boolean from SQLite's integer, a datetime from its text). A value
that changes the SQL itself (None becomes ``IS NULL``) makes another shape: each
combination of None values is compiled on its own.

A list of integers (``pk__in=ids``) or of text (``capability__in=names``) has one
placeholder per item, so its length is part of the shape too. It is padded to the
next power of two by repeating its last item, which ``IN`` does not mind: a batch of
1 to 200 ids makes at most nine shapes, each compiled once (and prepared once per
connection on PostgreSQL), not one per length.

A datetime (``created_at__gte=since``) goes to the database as a DateTimeField's
value does (on SQLite, as text in UTC; a naive one made aware in the default time
zone, with Django's warning).

Django writes a slice's bounds into the SQL itself (``LIMIT 21``). An integer the
build slices by (``tasks[:limit]``) is made a parameter of the compiled SQL
(``LIMIT %s``), so that every limit runs the one statement.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections
from django.db.models import DateTimeField, Model, QuerySet
from django.db.transaction import TransactionManagementError

M = TypeVar("M", bound=Model)

# Stand-ins, only ever compiled, never run: a text no input normalises to, and
# integers within a small integer's positive range (Django turns a lookup of a value
# out of its field's range into no query at all, or into a constant) and unlike any
# constant a query of ours holds as a parameter.
_TEXT = "\x00prepared:{}"
_INT = 32_700
# A list's stand-ins: distinct integers (Django drops repeated items from an ``IN``
# list when it compiles it), in a range of their own for each list of a query. An
# ``IN`` list is not checked against its field's range, so they can be large.
_LIST = 1_000_000_000
_LIST_SPAN = 1_000_000
# Datetimes' stand-ins: aware, long before any row, a microsecond apart. A
# datetime's value is prepared as a DateTimeField's (a lookup's right-hand side).
_DATETIME = datetime(1901, 2, 3, 4, 5, 6, 700, tzinfo=UTC)
_DATETIME_FIELD = DateTimeField()
# A list of text's stand-ins: distinct texts no input normalises to.
_LIST_TEXT = "\x00prepared:{}:{}"
# Where Django writes a slice's bounds (SQLCompiler.as_sql, limit_offset_sql).
_BOUND = re.compile(r"\b(LIMIT|OFFSET) (\d+)\b")
# What a parameter's placeholder is in compiled SQL, and a literal percent sign.
_PLACEHOLDER = re.compile(r"%%|%s")


@dataclass(frozen=True)
class _Compiled:
    alias: str
    sql: str
    params: list
    # (index among the parameters, the value's name, or a list's name and the
    # item's position in it)
    places: list[tuple[int, str | tuple[str, int]]]
    # Kept for its converters (none needed: None); they use only the connection's
    # operations, never its socket, so they serve every thread.
    compiler: Any
    converters: dict
    # SELECT ... FOR UPDATE: run only inside a transaction, as Django checks when
    # it compiles one (here, once).
    locks: bool = False
    # The values the SQL takes as a LIMIT or an OFFSET.
    bounds: frozenset[str] = frozenset()
    # The datetime values, prepared as a DateTimeField's.
    datetimes: frozenset[str] = frozenset()


class Prepared:
    """``build(**values)`` returns the queryset (a ``values_list()``, sliced if one row
    is wanted); ``kinds`` says which values are integers, which are text and which
    are lists of integers or of text, e.g. ``Prepared(build, agent_id=int,
    input_key=str, since=datetime, ids=list, names=list[str], limit=int)``
    (``list`` is ``list[int]``). ``rows(**values)`` runs it. A list's None items are left out, as
    Django leaves them out, and what is left must not be empty: Django runs no
    query for an empty ``IN``, and what that means depends on the query, so it is
    its caller's to answer. An integer the build slices by must not be negative,
    as Django's slices must not be."""

    def __init__(self, build: Callable[..., QuerySet], *, prepare: bool = True, **kinds: type) -> None:
        self._build = build
        # On PostgreSQL, prepared once per connection (see prepared_cursor). Every value of
        # the SQL is then a parameter, the build's constants too, and after five
        # calls PostgreSQL may keep one plan for all values: a query whose best plan
        # depends on such a constant's rarity (status = 'running', a few rows of
        # many) says prepare=False.
        self._prepare = prepare
        self._stand_ins: dict[str, Any] = {}
        # A list's stand-in for each of its positions.
        self._lists: dict[str, Callable[[int], Any]] = {}
        for index, (name, kind) in enumerate(kinds.items()):
            if kind is int:
                self._stand_ins[name] = _INT + index
            elif kind is str:
                self._stand_ins[name] = _TEXT.format(name)
            elif kind is datetime:
                self._stand_ins[name] = _DATETIME.replace(microsecond=_DATETIME.microsecond + index)
            elif kind in (list, list[int]):
                self._lists[name] = functools.partial(int.__add__, _LIST + _LIST_SPAN * index)
            elif kind == list[str]:
                self._lists[name] = functools.partial(_LIST_TEXT.format, name)
            else:
                raise TypeError(
                    "a prepared value is an int, a str, a datetime or a list of ints or of strs, "
                    f"not {kind} ({name})"
                )
            if name in self._lists:
                self._stand_ins[name] = [self._lists[name](0)]
        self._compiled: dict[tuple[str, Hashable, Hashable], _Compiled] = {}
        self._lock = threading.Lock()

    def _compile(self, nulls: frozenset[str], sizes: tuple[tuple[str, int], ...]) -> _Compiled:
        values = {name: None if name in nulls else stand_in for name, stand_in in self._stand_ins.items()}
        for name, size in sizes:
            values[name] = [self._lists[name](item) for item in range(size)]
        queryset = self._build(**values)
        alias = queryset.db
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        sql, params, bounds = _bounds_as_parameters(sql, list(params), values)
        # What SQLCompiler.results_iter does to the rows it reads.
        converters = compiler.get_converters(
            [column for column, _, _ in compiler.select[: compiler.col_count]]
        )
        # A list's items are named (name, position in the list); a datetime is
        # found as the backend adapts it.
        by_value: dict[Any, str | tuple[str, int]] = {}
        adapt = functools.partial(_DATETIME_FIELD.get_db_prep_value, connection=connections[alias])
        datetimes = frozenset(name for name, value in values.items() if isinstance(value, datetime))
        for name, stand_in in values.items():
            if name in datetimes:
                by_value[adapt(stand_in)] = name
            elif isinstance(stand_in, list):
                by_value.update({item: (name, position) for position, item in enumerate(stand_in)})
            elif stand_in is not None:
                by_value[stand_in] = name
        places = [
            (index, by_value[param]) for index, param in enumerate(params) if _hashable_in(param, by_value)
        ]
        missing = {
            name if isinstance(name, str) else name[0]
            for name in set(by_value.values()) - {name for _, name in places}
        }
        if missing:
            # A value the query does not use as a parameter (turned into SQL, or
            # transformed on the way): running the SQL again would ignore it.
            raise ValueError(f"prepared query: {', '.join(sorted(missing))} not found among the parameters")
        locks = bool(queryset.query.select_for_update) and connections[alias].features.has_select_for_update
        return _Compiled(
            alias,
            sql,
            params,
            places,
            compiler if converters else None,
            converters,
            locks,
            bounds,
            datetimes,
        )

    def rows(self, **values: Any) -> list[tuple]:
        nulls = frozenset(name for name, value in values.items() if value is None)
        for listed in self._lists:
            if listed not in nulls:
                # A set or any iterable: indexed below. None is no item of an IN
                # list (Django leaves it out too).
                values[listed] = [item for item in values[listed] if item is not None]
        sizes = tuple((name, _padded(name, values[name])) for name in self._lists if name not in nulls)
        alias = self._compiled_alias()
        key = (alias, nulls, sizes)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key) or self._compile(nulls, sizes)
                self._compiled[key] = compiled
        for name in compiled.bounds:
            if values[name] < 0:
                raise ValueError(f"prepared query: {name} is negative ({values[name]}), as no slice may be")
        for name in compiled.datetimes:
            values[name] = _DATETIME_FIELD.get_db_prep_value(values[name], connections[alias])
        params = list(compiled.params)
        for index, place in compiled.places:
            if isinstance(place, str):
                params[index] = values[place]
            else:
                items = values[place[0]]
                params[index] = items[min(place[1], len(items) - 1)]
        if compiled.locks and connections[alias].get_autocommit():
            raise TransactionManagementError("select_for_update cannot be used outside of a transaction.")
        with prepared_cursor(alias, prepare=self._prepare) as cursor:
            cursor.execute(compiled.sql, params)
            rows = cursor.fetchall()
        if compiled.compiler is not None and rows:
            rows = [tuple(row) for row in compiled.compiler.apply_converters(rows, compiled.converters)]
        return rows

    def instances(
        self,
        model: type[M],
        annotations: Sequence[str] = (),
        *,
        columns: Sequence[str] | None = None,
        **values: Any,
    ) -> list[M]:
        """The rows as ``model`` instances, for a build that reads ``fields(model)``
        and then, if any, the ``annotations`` named (``values_list(*fields(model),
        "task_count")``): each is set on its instance as annotate() sets it. A build
        that reads only some fields names them in ``columns``, in the model's field
        order; the others are deferred, as with only()."""
        names = list(columns) if columns is not None else fields(model)
        alias = self._compiled_alias()
        if not annotations:
            return [model.from_db(alias, names, row) for row in self.rows(**values)]
        width = len(names)
        found = []
        for row in self.rows(**values):
            instance = model.from_db(alias, names, row[:width])
            for name, value in zip(annotations, row[width:], strict=True):
                setattr(instance, name, value)
            found.append(instance)
        return found

    def first(self, **values: Any) -> tuple | None:
        rows = self.rows(**values)
        return rows[0] if rows else None

    def _compiled_alias(self) -> str:
        # The database the queryset reads from; "default" unless a router says
        # otherwise, and the same for every call of one shape.
        alias = getattr(self, "_alias", None)
        if alias is None:
            alias = self._alias = self._build(**self._stand_ins).db
        return alias


def prepared_cursor(alias: str, *, prepare: bool = True) -> Any:
    """A cursor of ``alias``, as ``connection.cursor()`` gives it (wrapped, so
    query logging, execute wrappers and test query counts see it), which on
    PostgreSQL prepares each statement it runs, with ``execute`` or
    ``executemany``: PostgreSQL plans it once per connection (the pool keeps
    connections, and psycopg their prepared statements) rather than at every
    call. Django's own cursors bind values in the client and never prepare (its
    server_side_binding option binds on the server without preparing, which cost
    more: bench/README.md).

    For statements of a fixed text run again and again, not one text per call.
    psycopg prepares a text once for each list of parameter types it is run
    with, and keeps the last PREPARED_MAX per connection. So that the types vary as
    little as they can, every int goes as a bigint (psycopg would pick the
    smallest integer type that holds it, another statement each time an id
    grows past 32,767 or a position turns negative); a str goes as "unknown",
    for PostgreSQL to infer, and a None as "unknown" too, so a column that is
    sometimes None makes at most two statements of one text."""
    connection = connections[alias]
    if not prepare or connection.vendor != "postgresql" or not settings.KAIZEN_DB_PREPARE:
        return connection.cursor()
    # BaseDatabaseWrapper._cursor, with a cursor of ours (without the per-cursor
    # time zone loader Django's create_cursor adds only when DATABASES sets a
    # TIME_ZONE, which the settings never do).
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(_kept_cursor(connection.connection))  # type: ignore[attr-defined]


# Where a connection keeps its PreparingCursor between statements.
_KEPT = "_kaizen_prepared_cursor"


def _kept_cursor(raw: Any) -> Any:
    """The PreparingCursor ``raw`` (a psycopg connection) kept since its last
    statement, or a new one. Making a cursor (its adapters copied, the int
    dumper registered) cost a sixth of a short prepared statement's CPU, and a
    pull or a completion runs a dozen. Taken while in use, so a statement run
    while another's cursor is open gets a cursor of its own."""
    cursor = raw.__dict__.pop(_KEPT, None)
    return cursor if cursor is not None else _preparing_cursor_class()(raw)


# Prepared statements kept per connection (psycopg's prepared_max).
PREPARED_MAX = 500


@functools.cache
def _preparing_cursor_class() -> type:
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg.types.numeric import Int8Dumper

    class PreparingCursor(ServerBindingCursor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Every int a bigint, in an array too (see prepared_cursor).
            self.adapters.register_dumper(int, Int8Dumper)
            # The line's statements outnumber psycopg's default of 100 kept per
            # connection (a list makes up to nine shapes): past it, the oldest is
            # dropped and prepared again at its next call.
            if self.connection.prepared_max < PREPARED_MAX:
                self.connection.prepared_max = PREPARED_MAX

        @contextlib.contextmanager
        def _preparing(self):
            # Django leaves the connection's threshold at None, with which psycopg
            # prepares nothing, even when asked (and executemany prepares once, in
            # a pipeline, whenever it is set). Raised for this statement only: a
            # threshold left set would have psycopg track every statement of
            # Django's own cursors too (the last 100 texts, values and all) and
            # drop every prepared statement at any ROLLBACK among them.
            connection = self.connection
            threshold = connection.prepare_threshold
            connection.prepare_threshold = 2**31 - 1
            try:
                yield
            finally:
                connection.prepare_threshold = threshold

        def execute(self, query, params=None, *, prepare=None, binary=None):
            with self._preparing():
                return super().execute(query, params, prepare=True, binary=binary)

        def executemany(self, query, params_seq, *, returning=False):
            params_seq = list(params_seq)
            if len(params_seq) == 1 and not returning:
                # One row is one execute: executemany's pipeline cost a third more
                # CPU for it (the same statement, prepared the same).
                return self.execute(query, params_seq[0])
            with self._preparing():
                return super().executemany(query, params_seq, returning=returning)

        def close(self):
            # Given back to its connection for the next statement rather than
            # closed (_kept_cursor), its results let go as closing does.
            self._reset(reset_query=False)
            self.connection.__dict__[_KEPT] = self

        def _send_query_prepared(self, name, pgq, *, binary=None):
            # psycopg notes the query run (_query) only for statements it does not
            # prepare; Django's debug cursor (query logging, the tests' query
            # counts) reads the SQL from it.
            self._query = pgq
            super()._send_query_prepared(name, pgq, binary=binary)

    return PreparingCursor


def _padded(name: str, items: Sequence[int]) -> int:
    """How many placeholders a list of ``items`` takes: the next power of two."""
    if not items:
        raise ValueError(f"prepared query: {name} is an empty list (Django runs no query for it)")
    return 1 << (len(items) - 1).bit_length()


def fields(model: type[Model]) -> list[str]:
    """The columns a build reads for ``Prepared.instances``: every concrete field."""
    return [field.attname for field in model._meta.concrete_fields]


def _bounds_as_parameters(sql: str, params: list, values: dict[str, Any]) -> tuple[str, list, frozenset[str]]:
    """The SQL with each LIMIT or OFFSET that is an integer value's stand-in made
    a parameter, its parameters with the stand-in put in its place (found there
    as any value's), and the names of the values so made."""
    stand_ins = {str(value): name for name, value in values.items() if type(value) is int}
    found = [match for match in _BOUND.finditer(sql) if match.group(2) in stand_ins]
    # From the last, so that the positions and indexes before each stay as they were.
    for match in reversed(found):
        index = sum(1 for p in _PLACEHOLDER.finditer(sql, 0, match.start()) if p.group() == "%s")
        sql = f"{sql[: match.start()]}{match.group(1)} %s{sql[match.end() :]}"
        params.insert(index, int(match.group(2)))
    return sql, params, frozenset(stand_ins[match.group(2)] for match in found)


def _hashable_in(param: Any, table: dict) -> bool:
    try:
        return param in table
    except TypeError:  # a list or dict parameter
        return False
