"""Ivanti's ``$filter`` / ``$orderby`` dialect, compiled to SQLite.

Parsing uses the ``odata-query`` package's real lexer and grammar (no regular
expressions over the filter text). The result is turned into a small boolean tree
(``Leaf`` / ``AllOf`` / ``AnyOf`` / ``Negation``) and compiled to a parameterised
SQLite ``WHERE`` clause, so the simulator's store can answer queries over 100,000
incidents through indexes instead of scanning and sorting in Python.

Two readings of a filter exist:

* ``quirks=False`` — standard OData v4: normal precedence, parentheses honoured,
  ``not`` negates, the string functions ``contains``/``startswith``/``endswith``
  and the scalar functions listed in ``_SCALAR_FUNCTIONS`` work.
* ``quirks=True`` — what the reference measured on a live Ivanti tenant
  (tyrunasj/ivanti-mcp-standalone, ``src/ivanti/odata/filter.ts``):

  1. *Functions are silently dropped.* A clause that calls any function
     (``contains(...)``, ``year(X) eq 2026`` …) is removed together with the
     operator that joined it to the clause before it (or after it, when it is
     first); the rest still filters. ``substringof()`` and unknown functions are
     refused by the grammar itself (400).
  2. *``not`` is not honoured.* ``not (...)`` is dropped like a function clause
     (measured: ``not (Status eq 'Closed')`` counted every incident, ``A and not
     (B)`` counted ``A``); a bare ``not A`` is a 400.
  3. *Parentheses count only at the very start.* A group that opens the filter
     (or opens an honoured group: ``((A or B) and C)`` holds) is evaluated as a
     unit; any other group has its parentheses ignored and its clauses spliced
     into the surrounding sequence.
  4. *An ``and`` after an ``or`` is misread.* Within one group, every ``or``
     that has an ``and`` somewhere after it is read as ``and``. So
     ``A or B and C`` means ``A and B and C`` — neither ``A or (B and C)`` nor
     ``(A or B) and C``. This concrete misreading is the one that fits both
     measurements in the reference: ``Logged or Active and P1`` counted 0 (30 and
     6 for the two sane readings) and ``(A and B) or (C and D)`` counted 0. An
     ``and`` before an ``or`` keeps normal precedence (``A and B or C`` is
     ``(A and B) or C``).
  5. ``Owner ne '$NULL'`` matches every row, empty owners included (measured);
     with quirks off it matches non-empty text only.

Behaviour common to both readings: string comparisons are case-insensitive
(SQLite ``NOCASE``, i.e. ASCII case folding only); ``'$NULL'`` matches empty
text and is refused on date/number fields; bare datetime literals (``Z``, a
numeric offset, or none = UTC; date-only = midnight UTC) are compared as UTC
instants; OData-v2 typed literals such as ``datetime'…'`` are refused with a 400
that names the field; the ``in`` operator and arithmetic are refused (Ivanti
documents only ``eq ne lt le gt ge and or``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from odata_query import ast
from odata_query import exceptions as odata_exc
from odata_query.grammar import ODataLexer, ODataParser

NULL_TEXT = "$NULL"
_TYPED_LITERAL_PREFIXES = frozenset(
    {"datetime", "datetimeoffset", "guid", "time", "binary", "x", "date"}
)
_BOOL_OPS = ("AND", "OR")


class FieldType(enum.Enum):
    TEXT = "text"
    INT = "int"
    BOOL = "bool"
    DATETIME = "datetime"


@dataclass(frozen=True)
class Column:
    """One field of a simulated business object.

    ``sparse`` columns store NULL while the value equals ``default``: most of the
    ~110 incident fields are the same on every record, and storing them for
    100,000 rows would cost hundreds of megabytes.
    """

    name: str
    type: FieldType
    default: Any = None
    sparse: bool = False

    @property
    def ref(self) -> str:
        return '"' + self.name + '"'


class FilterError(Exception):
    """A filter Ivanti answers with 400 ISM_4000."""


class OrderByEmpty(Exception):
    """``$orderby=`` with nothing in it: Ivanti answers 500 ISM_5000."""


class OrderByInvalid(Exception):
    """Unknown field or direction in ``$orderby``: 204 with quirks, 400 without."""


# ----- the boolean tree ----------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    node: ast._Node


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class Negation:
    part: Expr


Expr = Leaf | AllOf | AnyOf | Negation


# ----- parsing -------------------------------------------------------------------------
def _tokens(text: str) -> list[Any]:
    try:
        return [t for t in ODataLexer().tokenize(text) if t.type != "WS"]
    except odata_exc.TokenizingException as exc:
        raise FilterError(f"Invalid filter expression near position {exc.token.index}") from exc


def _parse_ast(text: str) -> ast._Node:
    try:
        node: ast._Node = ODataParser().parse(ODataLexer().tokenize(text))
    except odata_exc.UnknownFunctionException as exc:
        raise FilterError(f"Function '{exc.function_name}' is not supported") from exc
    except odata_exc.ParsingException as exc:
        where = "at the end" if exc.eof or exc.token is None else f"at position {exc.token.index}"
        raise FilterError(f"Invalid filter expression: unexpected input {where}") from exc
    except odata_exc.ODataException as exc:
        raise FilterError(f"Invalid filter expression: {exc}") from exc
    if node is None:
        raise FilterError("Invalid filter expression")
    return node


def _reject_typed_literals(text: str, toks: Sequence[Any]) -> None:
    """``datetime'…'`` lexes as an identifier glued to a string; Ivanti blames the field."""
    for i in range(len(toks) - 1):
        ident, nxt = toks[i], toks[i + 1]
        if (
            ident.type == "ODATA_IDENTIFIER"
            and nxt.type == "STRING"
            and ident.value.name.lower() in _TYPED_LITERAL_PREFIXES
            and not ident.value.namespace
            and text[ident.index : nxt.index].strip().lower() == ident.value.name.lower()
        ):
            blamed = next(
                (t.value.full_name() for t in reversed(toks[:i]) if t.type == "ODATA_IDENTIFIER"),
                ident.value.name,
            )
            raise FilterError(f"The filter on field '{blamed}' is not valid")


def parse_filter(text: str, *, quirks: bool) -> Expr | None:
    """Parse ``$filter``; None means "no restriction" (empty, or every clause dropped)."""
    text = text.strip()  # the grammar has no rule for leading or trailing blanks
    if not text:
        return None
    toks = _tokens(text)
    _reject_typed_literals(text, toks)
    full = _parse_ast(text)  # syntax errors and unknown functions are 400 in both readings
    if not quirks:
        return _standard(full)
    group = _GroupParser(text, toks).parse()
    return _quirky(group, honour_leading=True)


def _standard(node: ast._Node) -> Expr:
    if isinstance(node, ast.BoolOp):
        left, right = _standard(node.left), _standard(node.right)
        if isinstance(node.op, ast.And):
            return AllOf(_merge(AllOf, left, right))
        return AnyOf(_merge(AnyOf, left, right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return Negation(_standard(node.operand))
    return Leaf(node)


def _merge(kind: type[AllOf] | type[AnyOf], *parts: Expr) -> tuple[Expr, ...]:
    out: list[Expr] = []
    for p in parts:
        out.extend(p.parts if isinstance(p, kind) else (p,))
    return tuple(out)


# Quirky reading: a token-level structure of groups and clauses -------------------------
@dataclass
class _Clause:
    node: ast._Node | None  # None: dropped (a function call or ``not (...)``)


@dataclass
class _Group:
    items: list[_Group | _Clause] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)  # "and"/"or", one fewer than items


class _GroupParser:
    """Splits the filter into parenthesised groups and clauses, as Ivanti sees them.

    The structure comes from the odata-query lexer's tokens; each clause is then
    parsed by the odata-query grammar on its own.
    """

    def __init__(self, text: str, toks: list[Any]) -> None:
        self.text = text
        self.toks = toks

    def parse(self) -> _Group:
        return self._group(0, len(self.toks))

    def _group(self, lo: int, hi: int) -> _Group:
        group = _Group()
        i = lo
        while True:
            item, i = self._operand(i, hi)
            group.items.append(item)
            if i >= hi:
                return group
            tok = self.toks[i]
            if tok.type not in _BOOL_OPS or i + 1 >= hi:
                raise FilterError("Invalid filter expression")
            group.ops.append(tok.type.lower())
            i += 1

    def _closing(self, i: int, hi: int) -> int:
        depth = 0
        for j in range(i, hi):
            if self.toks[j].type == "(":
                depth += 1
            elif self.toks[j].type == ")":
                depth -= 1
                if depth == 0:
                    return j
        raise FilterError("Unbalanced parentheses in filter")

    def _ends_operand(self, j: int, hi: int) -> bool:
        return j >= hi or self.toks[j].type in _BOOL_OPS

    def _operand(self, i: int, hi: int) -> tuple[_Group | _Clause, int]:
        if i >= hi:
            raise FilterError("Invalid filter expression")
        tok = self.toks[i]
        if tok.type == "NOT":
            if i + 1 < hi and self.toks[i + 1].type == "(":
                j = self._closing(i + 1, hi)
                if self._ends_operand(j + 1, hi):
                    return _Clause(None), j + 1
            raise FilterError("The 'not' operator is not supported")
        if tok.type == "(":
            j = self._closing(i, hi)
            if self._ends_operand(j + 1, hi):
                return self._group(i + 1, j), j + 1
        return self._clause(i, hi)

    def _clause(self, i: int, hi: int) -> tuple[_Clause, int]:
        depth = 0
        k = i
        while k < hi:
            kind = self.toks[k].type
            if kind == "(":
                depth += 1
            elif kind == ")":
                depth -= 1
            elif depth == 0 and kind in _BOOL_OPS:
                break
            k += 1
        end = self.toks[k].index if k < len(self.toks) else len(self.text)
        node = _parse_ast(self.text[self.toks[i].index : end].strip())
        return _Clause(None if _calls_function(node) else node), k


def _calls_function(node: Any) -> bool:
    if isinstance(node, ast.Call):
        return True
    if isinstance(node, ast._Node):
        return any(_calls_function(getattr(node, f)) for f in node.__dataclass_fields__)
    if isinstance(node, list | tuple):
        return any(_calls_function(n) for n in node)
    return False


def _flatten(group: _Group) -> tuple[list[_Group | _Clause], list[str]]:
    """A group whose parentheses Ivanti ignores: splice its clauses into one sequence."""
    items: list[_Group | _Clause] = []
    ops: list[str] = []
    for n, item in enumerate(group.items):
        if n:
            ops.append(group.ops[n - 1])
        if isinstance(item, _Group):
            sub_items, sub_ops = _flatten(item)
            items.extend(sub_items)
            ops.extend(sub_ops)
        else:
            items.append(item)
    return items, ops


def _quirky(group: _Group, *, honour_leading: bool) -> Expr | None:
    items: list[_Group | _Clause] = []
    ops: list[str] = []
    for n, item in enumerate(group.items):
        if n:
            ops.append(group.ops[n - 1])
        if isinstance(item, _Group) and not (n == 0 and honour_leading):
            sub_items, sub_ops = _flatten(item)
            items.extend(sub_items)
            ops.extend(sub_ops)
        else:
            items.append(item)
    exprs, ops = _drop_clauses(items, ops)
    if not exprs:
        return None
    # Quirk 4: an ``or`` with an ``and`` anywhere after it in the group is read as ``and``.
    ops = ["and" if op == "or" and "and" in ops[k + 1 :] else op for k, op in enumerate(ops)]
    return _precedence(exprs, ops)


def _drop_clauses(items: list[_Group | _Clause], ops: list[str]) -> tuple[list[Expr], list[str]]:
    exprs: list[Expr] = []
    kept_ops: list[str] = []
    for n, item in enumerate(items):
        if isinstance(item, _Group):
            expr = _quirky(item, honour_leading=True)
        else:
            expr = Leaf(item.node) if item.node is not None else None
        if expr is None:
            continue  # the clause goes, and with it the operator that joined it
        if exprs:
            kept_ops.append(ops[n - 1])
        exprs.append(expr)
    return exprs, kept_ops


def _precedence(exprs: list[Expr], ops: list[str]) -> Expr:
    """Normal precedence over a flat sequence: ``and`` binds tighter than ``or``."""
    terms: list[list[Expr]] = [[exprs[0]]]
    for op, expr in zip(ops, exprs[1:], strict=True):
        if op == "and":
            terms[-1].append(expr)
        else:
            terms.append([expr])
    ands = [t[0] if len(t) == 1 else AllOf(_merge(AllOf, *t)) for t in terms]
    return ands[0] if len(ands) == 1 else AnyOf(_merge(AnyOf, *ands))


# ----- compiling to SQL ----------------------------------------------------------------
_SQL_OPS: dict[type, str] = {
    ast.Eq: "=",
    ast.NotEq: "<>",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_FLIPPED: dict[type, ast._Comparator] = {
    ast.Eq: ast.Eq(),
    ast.NotEq: ast.NotEq(),
    ast.Lt: ast.Gt(),
    ast.LtE: ast.GtE(),
    ast.Gt: ast.Lt(),
    ast.GtE: ast.LtE(),
}
_DATETIME_PARTS = {
    "year": "%Y",
    "month": "%m",
    "day": "%d",
    "hour": "%H",
    "minute": "%M",
    "second": "%S",
}


def value_sql(col: Column, params: list[Any]) -> str:
    """The SQL expression for a column's served value (sparse columns fall back to default)."""
    if not col.sparse:
        return col.ref
    params.append(to_db(col, col.default))
    return f"COALESCE({col.ref}, ?)"


def to_db(col: Column, value: Any) -> Any:
    """Python value -> what the SQLite column stores."""
    if value is None:
        return None
    if col.type is FieldType.DATETIME:
        return to_micros(value)
    if col.type is FieldType.BOOL:
        return 1 if value else 0
    return value


def to_micros(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def guid_order_key(text: str) -> str:
    """SQL Server's ``uniqueidentifier`` order of a 32-hex RecId: the last group first
    (bytes 10-15, then 8-9, 6-7, 4-5, 0-3), not the text order ``gt`` compares in."""
    t = text.upper()
    if len(t) != 32:
        return t
    return t[20:32] + t[16:20] + t[12:16] + t[8:12] + t[0:8]


def guid_collation(a: str, b: str) -> int:
    ka, kb = guid_order_key(a), guid_order_key(b)
    return (ka > kb) - (ka < kb)


def from_micros(micros: int) -> datetime:
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)


@dataclass
class _Compiler:
    columns: Mapping[str, Column]
    quirks: bool
    params: list[Any] = field(default_factory=list)

    def expr(self, e: Expr) -> str:
        if isinstance(e, AllOf):
            return "(" + " AND ".join(self.expr(p) for p in e.parts) + ")"
        if isinstance(e, AnyOf):
            return "(" + " OR ".join(self.expr(p) for p in e.parts) + ")"
        if isinstance(e, Negation):
            return f"(NOT COALESCE({self.expr(e.part)}, 0))"
        return self.leaf(e.node)

    # leaves -----------------------------------------------------------------------
    def leaf(self, node: ast._Node) -> str:
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.bool_call(node)
        if isinstance(node, ast.Identifier):
            col = self.column(node)
            if col.type is not FieldType.BOOL:
                raise FilterError(f"Field '{col.name}' is not a boolean condition")
            return f"({value_sql(col, self.params)} = 1)"
        if isinstance(node, ast.Boolean):
            return "1" if node.py_val else "0"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            raise FilterError("The 'not' operator is not supported")
        raise FilterError("Invalid filter expression")

    def column(self, node: ast.Identifier) -> Column:
        col = self.columns.get(node.full_name())
        if col is None:
            raise FilterError(f"Field '{node.full_name()}' does not exist in the business object")
        return col

    def compare(self, node: ast.Compare) -> str:
        comparator, left, right = node.comparator, node.left, node.right
        if isinstance(comparator, ast.In):
            raise FilterError("The 'in' operator is not supported")
        if isinstance(left, ast._Literal) and not isinstance(right, ast._Literal):
            left, right, comparator = right, left, _FLIPPED[type(comparator)]
        if not isinstance(right, ast._Literal) or isinstance(right, ast.List):
            raise FilterError("A comparison needs a field on one side and a value on the other")
        op = _SQL_OPS[type(comparator)]
        if isinstance(left, ast.Identifier):
            col = self.column(left)
            return self.compare_column(col, op, right)
        if isinstance(left, ast.Call):
            sql, ftype = self.scalar_call(left)
            return self.compare_typed(sql, ftype, op, right, name=left.func.full_name())
        if isinstance(left, ast.UnaryOp) and isinstance(left.op, ast.Not):
            raise FilterError("The 'not' operator is not supported")
        raise FilterError("Invalid filter expression")

    def compare_column(self, col: Column, op: str, lit: ast._Literal) -> str:
        if isinstance(lit, ast.String) and lit.val == NULL_TEXT:
            if col.type is not FieldType.TEXT:
                raise FilterError(f"No such entry exists: '$NULL' on field '{col.name}'")
            ref = value_sql(col, self.params)
            if op == "=":
                return f"(COALESCE({ref}, '') = '')"
            if op == "<>":
                return "1" if self.quirks else f"(COALESCE({ref}, '') <> '')"
            raise FilterError(f"'$NULL' can only be compared with eq or ne on field '{col.name}'")
        if isinstance(lit, ast.Null):
            return self.compare_null(col, op)
        return self.compare_typed(value_sql(col, self.params), col.type, op, lit, name=col.name)

    def compare_null(self, col: Column, op: str) -> str:
        if op not in ("=", "<>"):
            raise FilterError(f"null can only be compared with eq or ne on field '{col.name}'")
        ref = value_sql(col, self.params)
        if col.type is FieldType.TEXT:
            return f"(COALESCE({ref}, '') {op} '')"
        if col.type is FieldType.DATETIME:
            return f"({ref} IS {'' if op == '=' else 'NOT '}NULL)"
        return "0" if op == "=" else "1"

    def compare_typed(
        self, ref: str, ftype: FieldType, op: str, lit: ast._Literal, *, name: str
    ) -> str:
        self.params.append(self.literal(ftype, lit, name))
        if ftype is FieldType.TEXT:
            return f"({ref} COLLATE NOCASE {op} ?)"
        return f"({ref} {op} ?)"

    def literal(self, ftype: FieldType, lit: ast._Literal, name: str) -> Any:
        """Type-check a literal against the field (a mismatch is Ivanti's 400 ISM_4000)."""
        if ftype is FieldType.TEXT and isinstance(lit, ast.String | ast.Integer | ast.Float):
            # Numbers compare by their text: SQL Server converts ``Priority eq 1`` the same way.
            return str(lit.val)
        if ftype is FieldType.INT:
            if isinstance(lit, ast.Integer):
                return lit.py_val
            if isinstance(lit, ast.Float):
                return lit.py_val
            if isinstance(lit, ast.String) and lit.val.strip().lstrip("+-").isdigit():
                return int(lit.val)
        if ftype is FieldType.BOOL and isinstance(lit, ast.Boolean):
            return 1 if lit.py_val else 0
        if ftype is FieldType.DATETIME:
            if isinstance(lit, ast.DateTime):
                try:
                    when = lit.py_val
                except ValueError as exc:
                    raise FilterError(f"The filter on field '{name}' is not valid") from exc
                return to_micros(when if when.tzinfo else when.replace(tzinfo=UTC))
            if isinstance(lit, ast.Date):
                try:
                    day: date = lit.py_val
                except ValueError as exc:
                    raise FilterError(f"The filter on field '{name}' is not valid") from exc
                return to_micros(datetime(day.year, day.month, day.day, tzinfo=UTC))
        raise FilterError(f"The filter on field '{name}' is not valid")

    # functions (standard reading only; the quirky reading drops them) ------------
    def bool_call(self, node: ast.Call) -> str:
        name = node.func.full_name().lower()
        if name not in ("contains", "startswith", "endswith"):
            raise FilterError(f"Function '{node.func.full_name()}' is not a condition")
        target, needle = node.args
        if not isinstance(target, ast.Identifier) or not isinstance(needle, ast.String):
            raise FilterError(f"Function '{name}' needs a field and a quoted value")
        col = self.column(target)
        if col.type is not FieldType.TEXT:
            raise FilterError(f"Function '{name}' needs a text field, not '{col.name}'")
        escaped = needle.val.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {
            "contains": f"%{escaped}%",
            "startswith": f"{escaped}%",
            "endswith": f"%{escaped}",
        }[name]
        ref = value_sql(col, self.params)
        self.params.append(pattern)
        return f"({ref} LIKE ? ESCAPE '\\')"

    def scalar_call(self, node: ast.Call) -> tuple[str, FieldType]:
        name = node.func.full_name().lower()
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Identifier):
            raise FilterError(f"Function '{name}' needs exactly one field argument")
        col = self.column(node.args[0])
        ref = value_sql(col, self.params)
        if name in ("tolower", "toupper", "trim", "length") and col.type is FieldType.TEXT:
            if name == "length":
                return f"length({ref})", FieldType.INT
            sql_fn = {"tolower": "lower", "toupper": "upper", "trim": "trim"}[name]
            return f"{sql_fn}({ref})", FieldType.TEXT
        if name in _DATETIME_PARTS and col.type is FieldType.DATETIME:
            fmt = _DATETIME_PARTS[name]
            return (
                f"CAST(strftime('{fmt}', {ref} / 1000000, 'unixepoch') AS INTEGER)",
                FieldType.INT,
            )
        raise FilterError(f"Function '{name}' is not supported on field '{col.name}'")


def compile_filter(
    expr: Expr | None, columns: Mapping[str, Column], *, quirks: bool
) -> tuple[str, list[Any]]:
    """A ``WHERE`` body and its parameters (``"1"`` when nothing restricts)."""
    if expr is None:
        return "1", []
    compiler = _Compiler(columns, quirks)
    return compiler.expr(expr), compiler.params


def parse_orderby(text: str, columns: Mapping[str, Column]) -> list[tuple[Column, bool]]:
    """``Field [asc|desc], ...`` -> [(column, descending)]."""
    if not text.strip():
        raise OrderByEmpty("The parameter 'orderby' cannot be empty")
    keys: list[tuple[Column, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2:
            raise OrderByInvalid(part)
        col = columns.get(words[0])
        direction = words[1].lower() if len(words) == 2 else "asc"
        if col is None or direction not in ("asc", "desc"):
            raise OrderByInvalid(part)
        keys.append((col, direction == "desc"))
    return keys


def compile_orderby(
    keys: Sequence[tuple[Column, bool]], collations: Mapping[str, str] | None = None
) -> tuple[str, list[Any]]:
    """``ORDER BY`` body; ``collations`` names a SQLite collation per column, for a
    tenant that sorts a column in another order than its comparisons use."""
    params: list[Any] = []
    parts = []
    for col, desc in keys:
        ref = value_sql(col, params)
        if collations and col.name in collations:
            ref += f" COLLATE {collations[col.name]}"
        elif col.sparse and col.type is FieldType.TEXT:
            ref += " COLLATE NOCASE"
        parts.append(f"{ref} {'DESC' if desc else 'ASC'}")
    return ", ".join(parts), params
