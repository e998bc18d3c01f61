"""The filter and sort language of `runstream runs --where/--sort`, translated to parameterised SQL.

    params.lr < 0.01 and metrics.acc > 0.9
    (params.optimizer.name = 'adamw' or params.batch_size in (32, 64)) and status != 'failed'
    not best.loss >= 0.2 and name like 'lr0.001%'

Fields: `params.KEY` (a param; dotted keys as logged, e.g. params.optimizer.name),
`metrics.NAME` (the final value: at the last step), `best.NAME` (the best value: by the metric's
declared goal, else min for loss-like metrics and max otherwise), `tags.KEY`, and the run attributes
in ATTRIBUTES. A key with characters outside [A-Za-z0-9_] (unicode, '-', spaces) is written in
backquotes: params.`warmup-steps`, metrics.`损失`; a filter naming one bare fails with a message
suggesting the backquoted form.

Every value, and every param, metric or tag key, travels to ClickHouse as a bound query parameter
({v0:Float64}); only fixed SQL written here and column names from fixed tables are pasted into the
statement, so a filter cannot inject SQL. Fields are checked against what the database holds, and an
unknown one is an error listing the closest known fields.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# attribute -> (column of run_summary, or an expression over its columns, kind)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "run_id": ("run_id", "string"),
    "name": ("run_name", "string"),
    "project": ("project", "string"),
    "status": ("status", "string"),
    "user": ("user", "string"),
    "host": ("host", "string"),
    "git_commit": ("git_commit", "string"),
    "started_at": ("started_at", "time"),
    "finished_at": ("finished_at", "time"),
    "gpu_hours": ("gpu_hours", "number"),
    # run labels (issue 13): '' when not given, read as NULL so a run without the label never matches
    "group": ("nullIf(run_group, '')", "string"),
    "job_type": ("nullIf(job_type, '')", "string"),
    "sweep": ("nullIf(sweep, '')", "string"),
    # the run lifecycle: the latest attempt (1 unless resumed), the fork's parent and step (NULL unless a fork)
    "attempt": ("attempt", "number"),
    "fork_from": ("fork_from", "string"),
    "fork_step": ("fork_step", "number"),
    "note": ("nullIf(note, '')", "string"),
}
PREFIXES = ("params", "metrics", "best", "tags")
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "like"}
COMPARISONS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
MAX_FILTER_LENGTH = 4000


class FilterError(ValueError):
    """A filter that cannot be translated; the message names the offending text and its position."""


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, field, op, lparen, rparen, comma, keyword
    text: str
    value: Any
    position: int


_SEGMENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[^`\x00-\x1f]+`|[0-9]+)"
_TOKEN = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_]))"
    r"|(?P<string>'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\")"
    r"|(?P<op><=|>=|!=|<>|==|=|<|>)"
    r"|(?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)"
    rf"|(?P<field>(?:[A-Za-z_][A-Za-z0-9_]*|`[^`\x00-\x1f]+`)(?:\.{_SEGMENT})*)"
)


def _unquote_string(text: str) -> str:
    quote = text[0]
    body = text[1:-1].replace(quote * 2, quote)
    return re.sub(r"\\(.)", r"\1", body)


def tokenize(text: str) -> list[Token]:
    """The filter's tokens. A filter is tokenised up to three times per question (the fields it names,
    the optimistic translation, the translation the rows prove): memoised, as that was ~0.4 ms each of a
    ~5 ms answer at 100 runs (measured)."""
    return list(_tokenize(text))


@functools.lru_cache(maxsize=256)
def _tokenize(text: str) -> tuple[Token, ...]:
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter: longer than {MAX_FILTER_LENGTH} characters ({len(text)})")
    control = next((i for i, ch in enumerate(text) if ord(ch) < 32 and ch not in "\t\n\r"), None)
    if control is not None:
        raise FilterError(f"filter: control character {text[control]!r} at position {control + 1}")
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterError(
                f"filter: unexpected character {text[position]!r} at position {position + 1} in {text!r} "
                "(expected a field, a comparison, a number, a quoted string, 'and', 'or', 'not' or parentheses)"
                + _backquote_hint(text, position)
            )
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "number":
            tokens.append(Token("number", raw, float(raw), position))
        elif kind == "string":
            tokens.append(Token("string", raw, _unquote_string(raw), position))
        elif kind == "field":
            lowered = raw.lower()
            if lowered in KEYWORDS:
                tokens.append(Token("keyword", raw, lowered, position))
            else:
                tokens.append(Token("field", raw, _split_field(raw), position))
        elif kind != "space":
            tokens.append(Token(kind, raw, raw, position))
        position = match.end()
    return tuple(tokens)


_WORD_END = re.compile(r"[\s()<>=!,'\"]")


def _backquote_hint(text: str, position: int) -> str:
    """`metrics.损失 > 0` stops at the '.': a field whose name has characters outside [A-Za-z0-9_]
    needs backquotes, which a new user cannot guess from "unexpected character", so name the fix."""
    start = position
    while start > 0 and not _WORD_END.match(text[start - 1]):
        start -= 1
    end = position
    while end < len(text) and not _WORD_END.match(text[end]):
        end += 1
    word = text[start:end]
    prefix, dot, name = word.partition(".")
    if not dot or not name or prefix.lower() not in PREFIXES or "`" in word:
        return ""
    return f"; names with characters other than A-Z, a-z, 0-9 and _ go in backquotes: {prefix}.`{name}`"


def _split_field(raw: str) -> list[str]:
    parts = re.findall(r"`[^`]+`|[^.`]+", raw)
    return [part[1:-1] if part.startswith("`") else part for part in parts]


@dataclass
class Vocabulary:
    """The fields a filter may name: what the database holds, so typos are caught before querying.

    `param_kinds` maps a param key to the kinds its values have ('number' and/or 'string').
    """

    param_kinds: dict[str, set[str]] = field(default_factory=dict)
    metrics: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)

    def fields(self) -> list[str]:
        names = list(ATTRIBUTES)
        names += [f"params.{key}" for key in sorted(self.param_kinds)]
        names += [f"metrics.{name}" for name in sorted(self.metrics)]
        names += [f"best.{name}" for name in sorted(self.metrics)]
        names += [f"tags.{key}" for key in sorted(self.tags)]
        return names


@dataclass(frozen=True)
class Column:
    """A resolved field: the SQL reading it, parameterised on its key, and the kind of values it holds."""

    name: str
    kinds: frozenset[str]
    number_sql: str | None
    string_sql: str | None


class Translator:
    """Turns filters and sort specs into SQL over the run_overview view plus their query parameters."""

    def __init__(self, vocabulary: Vocabulary, *, prefix: str = "f") -> None:
        self.vocabulary = vocabulary
        self.parameters: dict[str, Any] = {}
        self._prefix = prefix

    def _bind(self, value: Any, sql_type: str) -> str:
        name = f"{self._prefix}{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:{sql_type}}}"

    def column(self, parts: list[str], text: str) -> Column:
        name = ".".join(parts)
        if len(parts) == 1 and parts[0] in ATTRIBUTES:
            column, kind = ATTRIBUTES[parts[0]]
            if kind == "number":
                return Column(name, frozenset({"number"}), column, None)
            if kind == "time":
                return Column(name, frozenset({"time"}), None, column)
            return Column(name, frozenset({"string"}), None, column)
        prefix, key = parts[0], ".".join(parts[1:])
        vocabulary = self.vocabulary
        if prefix == "params" and key in vocabulary.param_kinds:
            bound = self._bind(key, "String")
            kinds = frozenset(vocabulary.param_kinds[key])
            return Column(name, kinds, f"params_num[{bound}]", f"params[{bound}]")
        if prefix in ("metrics", "best") and key in vocabulary.metrics:
            bound = self._bind(key, "String")
            return Column(name, frozenset({"number"}), f"{'final' if prefix == 'metrics' else 'best'}[{bound}]", None)
        if prefix == "tags" and key in vocabulary.tags:
            bound = self._bind(key, "String")
            return Column(name, frozenset({"string"}), None, f"if(mapContains(tags, {bound}), tags[{bound}], NULL)")
        raise FilterError(self._unknown(name, text))

    def _unknown(self, name: str, text: str) -> str:
        known = self.vocabulary.fields()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        if "." in name:  # a known key under another prefix: metrics.lr -> params.lr
            tail = name.split(".", 1)[1]
            close = [k for k in known if k.split(".", 1)[-1] == tail and k not in close][:3] + close
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        if name.split(".")[0] not in (*PREFIXES, *ATTRIBUTES):
            hint += f" Fields are params.KEY, metrics.NAME, best.NAME, tags.KEY or one of {', '.join(ATTRIBUTES)}"
        return f"filter {text!r}: unknown field {name!r}{hint}"

    def sort_sql(self, spec: str) -> str:
        """`-metrics.acc,name` -> ORDER BY terms; missing values (NULL) sort last either way."""
        terms = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            descending = item.startswith("-")
            body = item.lstrip("+-").strip()
            tokens = tokenize(body)
            if len(tokens) != 1 or tokens[0].kind != "field":
                raise FilterError(f"sort {spec!r}: expected a field such as -metrics.acc or params.lr, got {item!r}")
            column = self.column(tokens[0].value, spec)
            if "number" in column.kinds and column.number_sql is not None:
                sql = column.number_sql
            else:
                sql = column.string_sql or ""
            terms.append(f"{sql} {'DESC' if descending else 'ASC'} NULLS LAST")
        return ", ".join(terms)


class _Parser:
    def __init__(self, text: str, translator: Translator) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.t = translator

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise FilterError(f"filter {self.text!r}: ends too early (expected more after the last word)")
        self.index += 1
        return token

    def is_keyword(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "keyword" and token.value in words

    def expect(self, kind: str, what: str) -> Token:
        token = self.take()
        if token.kind != kind:
            raise FilterError(f"filter {self.text!r}: expected {what} at position {token.position + 1}, "
                              f"got {token.text!r}")
        return token

    def parse(self) -> str:
        if not self.tokens:
            raise FilterError("filter: empty (expected a condition such as params.lr < 0.01)")
        sql = self.or_expr()
        token = self.peek()
        if token is not None:
            raise FilterError(f"filter {self.text!r}: unexpected {token.text!r} at position {token.position + 1} "
                              "(join conditions with 'and' or 'or')")
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.is_keyword("or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.not_expr()]
        while self.is_keyword("and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def not_expr(self) -> str:
        if self.is_keyword("not"):
            self.take()
            # NOT of an unknown (NULL: a missing param or metric) stays unknown: the run is left out.
            return f"(NOT {self.not_expr()})"
        token = self.peek()
        if token is not None and token.kind == "lparen":
            self.take()
            inner = self.or_expr()
            self.expect("rparen", "')'")
            return inner
        return self.comparison()

    def literal(self) -> Token:
        token = self.take()
        if token.kind in ("number", "string") or (token.kind == "keyword" and token.value in ("true", "false")):
            return token
        raise FilterError(f"filter {self.text!r}: expected a number, a quoted string, true or false at position "
                          f"{token.position + 1}, got {token.text!r}")

    def operand(self, column: Column, token: Token) -> tuple[str, str]:
        """The column's SQL and the bound value, typed alike; a type mismatch is an error naming both."""
        if token.kind == "keyword":  # true/false: bool params are stored as 1/0 numbers
            value: Any = 1.0 if token.value == "true" else 0.0
            kind = "number"
        elif token.kind == "number":
            value, kind = token.value, "number"
        else:
            value, kind = token.value, "string"
        if "time" in column.kinds:
            if kind != "string":
                raise FilterError(f"filter {self.text!r}: {column.name} is a time; compare it with a quoted date "
                                  f"such as '2024-05-01 12:00', got {token.text}")
            return column.string_sql or "", f"parseDateTime64BestEffort({self.t._bind(value, 'String')}, 6, 'UTC')"
        if kind == "number":
            if column.number_sql is None or "number" not in column.kinds:
                raise FilterError(f"filter {self.text!r}: {column.name} holds text, not numbers; compare it with a "
                                  f"quoted string, got {token.text}")
            return column.number_sql, self.t._bind(value, "Float64")
        if column.string_sql is None or "string" not in column.kinds:
            raise FilterError(f"filter {self.text!r}: {column.name} holds numbers; compare it with a number, "
                              f"got {token.text}")
        return column.string_sql, self.t._bind(value, "String")

    def comparison(self) -> str:
        token = self.take()
        if token.kind != "field":
            raise FilterError(f"filter {self.text!r}: expected a field such as params.lr at position "
                              f"{token.position + 1}, got {token.text!r}")
        column = self.t.column(token.value, self.text)
        if self.is_keyword("is"):
            self.take()
            negate = self.is_keyword("not")
            if negate:
                self.take()
            null = self.take()
            if not (null.kind == "keyword" and null.value == "null"):
                raise FilterError(f"filter {self.text!r}: expected 'null' after 'is' at position {null.position + 1}")
            sql = column.string_sql or column.number_sql or ""
            return f"({sql} IS {'NOT ' if negate else ''}NULL)"
        negate = self.is_keyword("not")
        if negate:
            self.take()
            if not self.is_keyword("in", "like"):
                raise FilterError(f"filter {self.text!r}: expected 'in' or 'like' after {token.text} not")
        if self.is_keyword("in"):
            self.take()
            self.expect("lparen", "'(' after 'in'")
            values = [self.literal()]
            while (nxt := self.peek()) is not None and nxt.kind == "comma":
                self.take()
                values.append(self.literal())
            self.expect("rparen", "')' closing the list")
            pairs = [self.operand(column, value) for value in values]
            sql = pairs[0][0]
            return f"({sql} {'NOT ' if negate else ''}IN ({', '.join(bound for _, bound in pairs)}))"
        if self.is_keyword("like"):
            self.take()
            pattern = self.literal()
            if pattern.kind != "string" or column.string_sql is None:
                raise FilterError(f"filter {self.text!r}: 'like' compares a text field with a quoted pattern")
            return f"({column.string_sql} {'NOT ' if negate else ''}LIKE {self.t._bind(pattern.value, 'String')})"
        operator = self.take()
        if operator.kind != "op":
            raise FilterError(f"filter {self.text!r}: expected a comparison (=, !=, <, <=, >, >=, in, like, is) "
                              f"after {token.text} at position {operator.position + 1}, got {operator.text!r}")
        sql, bound = self.operand(column, self.literal())
        return f"({sql} {COMPARISONS[operator.text]} {bound})"


def translate(text: str, vocabulary: Vocabulary, translator: Translator | None = None) -> tuple[str, dict[str, Any]]:
    """(SQL condition over run_overview, its query parameters)."""
    translator = translator or Translator(vocabulary)
    sql = _Parser(text, translator).parse()
    return sql, translator.parameters


def vocabulary_from_rows(params: Iterable[tuple[str, str]], metrics: Iterable[str], tags: Iterable[str]) -> Vocabulary:
    """Build the vocabulary from (param key, value_type) rows, metric names and tag keys."""
    kinds: dict[str, set[str]] = {}
    for key, value_type in params:
        kinds.setdefault(key, set()).add("string" if value_type in ("string", "null") else "number")
    return Vocabulary(kinds, set(metrics), set(tags))
