"""Text -> AST. Lark parses with the LALR grammar in grammar/medas.lark; a transformer
builds the AST with spans; Lark's exceptions become diagnostics in user vocabulary."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from medasl.diagnostics import Diagnostics, label
from medasl.source import SourceFile, Span
from medasl.syntax import ast

GRAMMAR_PATH = Path(__file__).resolve().parents[2] / "grammar" / "medas.lark"


def cache_dir() -> Path:
    """Where derived, re-creatable data is kept (parser tables, stdlib signatures)."""
    if "MEDASL_CACHE_DIR" in os.environ:
        return Path(os.environ["MEDASL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medasl"


def write_atomically(path: Path, text: str) -> None:
    """Write a cache file so that a reader never sees half of it; failures are ignored
    (the cache only saves time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


@lru_cache(maxsize=1)
def _lark() -> Lark:
    """The LALR parser.

    Building the tables takes ~0.1 s, a tenth of a cold `medasc check`; they are kept as
    JSON (never pickle) under cache_dir(), keyed by the grammar text and Lark's version.
    """
    grammar = GRAMMAR_PATH.read_text(encoding="utf-8")
    key = hashlib.sha256(f"{lark.__version__}\n{grammar}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"parser-{key}.json"
    try:
        data = _decode(json.loads(cached.read_text(encoding="utf-8")))
        return Lark.__new__(Lark)._load(data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    parser = Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                  maybe_placeholders=True)
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = parser.memo_serialize([TerminalDef, Rule])
    write_atomically(cached, json.dumps(_encode({"data": data, "memo": memo})))
    return parser


def _encode(obj: object) -> object:
    """JSON keeps only string keys; Lark's tables have integer and tuple keys."""
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v) for k, v in obj.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_encode(x) for x in obj]
    return obj


def _decode(obj: object) -> object:
    if isinstance(obj, dict):
        if "__items__" in obj:
            return {_hashable(_decode(k)): _decode(v) for k, v in obj["__items__"]}
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def _hashable(key: object) -> object:
    return tuple(key) if isinstance(key, list) else key


MAX_SYNTAX_ERRORS = 10

# Calls, tuples, fields and types nested deeper than this are refused (E0114) before
# anything walks them: the checker follows nesting by recursion, and no real pipeline
# comes near it. A chain `a |> f |> g` is not nesting (it is checked in a loop).
MAX_NESTING = 64

# The largest magnitude of a number literal (E0242, refused by the checker): 2**53, above
# which whole numbers are no longer exact as floats (and JSON, the IR and the cache keys
# carry them as such). Beyond it a value means nothing a pipeline could use, and would
# only make the run allocate or loop without limit (`--set n=99999999999999999999`).
MAX_MAGNITUDE = 2**53
BYTE_ORDER_MARK = "\ufeff"
NO_ARITHMETIC = "medas has no arithmetic: write the number you mean, e.g. `0.5` or `-100`"

# A line that begins a statement or an item: where recovery may resume.
_STATEMENT_START = re.compile(
    r"^\s*(param|show|report|resources|import|pipeline|op|enum)\b|^\s*[@}]|^\s*##"
    r"|^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|\()"
)


def parse(source: SourceFile, diags: Diagnostics) -> ast.Module | None:
    """Parse one file; on syntax errors, report them and return None.

    After an error the parser resumes at the next statement (panic-mode recovery): the
    statement in error is blanked out, keeping every position, and the text parsed
    again, so one run reports the syntax errors of several statements.
    """
    # a UTF-8 byte-order mark (some Windows editors write one) is not text: it parses as a
    # space, so that every column stays where the editor shows it
    text = source.text
    if text.startswith(BYTE_ORDER_MARK):
        text = " " + text[1:]
    lines = text.split("\n")
    last_line = 0
    failed = False
    reported: set[tuple[int, int]] = set()
    for _ in range(MAX_SYNTAX_ERRORS):
        try:
            tree = _lark().parse("\n".join(lines))
        except UnexpectedInput as exc:
            at_end = isinstance(exc, UnexpectedEOF) or (
                isinstance(exc, UnexpectedToken) and exc.token.type == "$END")
            line = getattr(exc, "line", 0) or len(lines)
            if failed and (at_end or line <= last_line):
                break  # what follows is a consequence of the first error, not news
            position = (line, getattr(exc, "column", 0))
            if position in reported:
                break
            reported.add(position)
            _report_syntax_error(exc, source, diags)
            failed = True
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            if at_end or not text[:1].isspace():
                break  # recover only inside blocks: a broken item at the top level derails the rest
            first, last_line = _statement_around(lines, exc, line)
            for i in range(first - 1, last_line):
                lines[i] = " " * len(lines[i])
            continue
        if failed:
            return None
        builder = _Builder(source.name)
        module = builder.transform(tree)
        for problem in builder.errors:
            diags.error(problem.code, problem.message, label(problem.span, problem.label), help=problem.help)
        return None if builder.errors else module
    return None


def check_nesting(module: ast.Module, diags: Diagnostics) -> bool:
    """Whether `module` nests calls, tuples, fields and types at most MAX_NESTING levels
    deep; else E0114 at the first place that goes deeper. The checker calls this before
    it walks a module (by recursion)."""
    too_deep = _too_deeply_nested(module)
    if too_deep is None:
        return True
    diags.error("E0114", f"this is nested more than {MAX_NESTING} levels deep",
                label(too_deep, f"level {MAX_NESTING + 1}"),
                help="give inner values names of their own (`x = ...`), or write a transform")
    return False


def _too_deeply_nested(module: ast.Module) -> Span | None:
    """The span of the first node nested more than MAX_NESTING levels deep, or None.
    Walked with a stack of its own, so that any depth is measured without recursion."""
    todo: list[tuple[object, int]] = [(module, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, tuple):
            todo.extend((item, depth) for item in node)
            continue
        if not hasattr(node, "__dataclass_fields__"):
            continue
        span = getattr(node, "span", None)
        if depth >= MAX_NESTING and isinstance(node, _NESTING) and isinstance(span, Span):
            return span
        # a level is a call, tuple, list, field, ascription or type inside another; the
        # left side of a pipe is the same level: `a |> f |> g` is a chain, not nesting
        nests = isinstance(node, _NESTING)
        for f in fields(node):  # type: ignore[arg-type]
            child = getattr(node, f.name)
            if hasattr(child, "__dataclass_fields__") or isinstance(child, tuple):
                todo.append((child, depth + 1 if nests or (isinstance(node, ast.Pipe) and f.name == "right")
                             else depth))
    return None


_NESTING = (ast.Call, ast.Tuple, ast.ListExpr, ast.Field, ast.Ascription, ast.TypeApp, ast.FnType)


def _statement_around(lines: list[str], exc: UnexpectedInput, line: int) -> tuple[int, int]:
    """The lines (1-based, inclusive) to blank so that parsing can resume."""
    column = getattr(exc, "column", 1) or 1
    starts_line = not lines[line - 1][: column - 1].strip()
    if starts_line and _STATEMENT_START.match(lines[line - 1]) and line > 1:
        # the error token begins a statement: the previous statement never ended
        end = line - 1
    else:
        end = line
    start = end
    while start > 1 and not _STATEMENT_START.match(lines[start - 1]):
        start -= 1
    if lines[start - 1].lstrip().startswith(("pipeline", "}")):
        start = min(start + 1, end)
    return start, end


# ----- tree -> AST --------------------------------------------------------------


def _token_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


def _docs(children: list[object]) -> tuple[tuple[str, ...], list[object]]:
    """Split leading `## ...` doc-comment tokens from the rest of a rule's children."""
    docs = []
    rest = list(children)
    while rest and isinstance(rest[0], Token) and rest[0].type == "DOC":
        docs.append(rest.pop(0)[2:].strip())
    return tuple(docs), rest


def _with_docs(node: object, docs: tuple[str, ...]) -> object:
    if docs and hasattr(node, "docs"):
        from dataclasses import replace

        return replace(node, docs=docs)
    return node


@dataclass(frozen=True)
class _Problem:
    """A mistake found while building the AST (an unknown escape in a string)."""

    code: str
    span: Span
    message: str
    label: str
    help: str


def _number(text: str) -> float | int:
    """The value of a number literal. A whole number of more digits than any value below
    MAX_MAGNITUDE has is infinite here: the checker refuses it by its magnitude (E0242),
    and Python's int() would refuse a text of more than 4300 digits with a traceback."""
    if any(c in text for c in ".eE"):
        return float(text)
    if len(text.lstrip("-").lstrip("0")) > len(str(MAX_MAGNITUDE)):
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def number_text(text: str) -> str:
    """A number literal as a diagnostic quotes it (one of 5000 digits, shortened)."""
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


@v_args(meta=True)
class _Builder(Transformer_NonRecursive):
    """Builds `medasl.syntax.ast` nodes from the Lark parse tree."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file
        self.errors: list[_Problem] = []  # problems found while building (string escapes)

    def _unquote(self, tok: Token) -> str:
        """The text of a string literal; escapes are `\\"`, `\\\\`, `\\n` and `\\t` only."""
        out, text, i = [], str(tok)[1:-1], 0
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                escaped = {"\"": "\"", "\\": "\\", "n": "\n", "t": "\t"}.get(text[i + 1])
                if escaped is None:
                    column = tok.column + 1 + i
                    self.errors.append(_Problem(
                        "E0004", Span(self.file, tok.line, column, tok.line, column + 2),
                        f"unknown escape `\\{text[i + 1]}` in a string", "not a valid escape",
                        "write `\\\\` for a backslash, e.g. in Windows paths, or use `/`"))
                    escaped = text[i + 1]
                out.append(escaped)
                i += 2
                continue
            out.append(char)
            i += 1
        return "".join(out)

    def _span(self, meta: object) -> Span:
        m = meta  # lark.tree.Meta
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)  # type: ignore[attr-defined]

    def _tok(self, tok: Token) -> Span:
        return _token_span(self.file, tok)

    # module structure
    def start(self, meta, children):
        items: list[object] = []
        for child in children:
            items.extend(child if isinstance(child, list) else [child])
        return ast.Module(self.file, tuple(items))

    def item(self, meta, children):
        docs, rest = _docs(children)
        node = rest[0]
        if isinstance(node, list):  # an import statement with several targets
            return [_with_docs(n, docs) for n in node]
        return _with_docs(node, docs)

    stmt = item

    def import_stmt(self, meta, children):
        return list(children)

    def import_module(self, meta, children):
        return ast.Import(tuple(children[0]), None, None, self._span(meta))

    def import_file(self, meta, children):
        path, alias = children
        return ast.Import(None, self._unquote(path), str(alias) if alias else None, self._span(meta))

    def dotted_name(self, meta, children):
        return [str(c) for c in children]

    def pipeline(self, meta, children):
        name, *stmts = children
        return ast.Pipeline(str(name), tuple(stmts), self._span(meta), self._tok(name))

    # statements
    def param_stmt(self, meta, children):
        name, type_, default, search = children
        return ast.Param(str(name), type_, default, search, self._span(meta), self._tok(name))

    def search_clause(self, meta, children):
        kind, args = children
        return ast.SearchSpace(str(kind), self._tok(kind), tuple(args or ()), self._span(meta))

    def binding(self, meta, children):
        name, value, goal = children
        return ast.Binding(str(name), value, goal, self._span(meta), self._tok(name))

    def maximize(self, meta, children):
        return "maximize"

    def minimize(self, meta, children):
        return "minimize"

    def transform_def(self, meta, children):
        name, params, body = children
        return ast.TransformDef(str(name), tuple(params), body, self._span(meta), self._tok(name))

    def fparams(self, meta, children):
        return list(children)

    def fparam(self, meta, children):
        name = children[0]
        type_ = children[1] if len(children) > 1 else None
        return ast.FParam(str(name), type_, self._span(meta))

    def show_stmt(self, meta, children):
        return ast.Show(tuple(children), self._span(meta))

    def report_stmt(self, meta, children):
        return ast.Report(tuple(children), self._span(meta))

    def resources_stmt(self, meta, children):
        return ast.Resources(tuple(children), self._span(meta))

    # expressions
    def pipe(self, meta, children):
        left, right = children
        return ast.Pipe(left, right, self._span(meta))

    def ascription(self, meta, children):
        value, type_ = children
        return ast.Ascription(value, type_, self._span(meta))

    def field(self, meta, children):
        value, name = children
        return ast.Field(value, str(name), self._tok(name), self._span(meta))

    def call(self, meta, children):
        func, args = children
        return ast.Call(func, tuple(args or ()), self._span(meta))

    def name(self, meta, children):
        (tok,) = children
        if isinstance(tok, Token):
            return ast.Name(str(tok), self._tok(tok))
        return tok  # a literal passed through `literal_or_name`

    def number(self, meta, children):
        tok, unit = children
        span = self._span(meta)
        return ast.Number(_number(str(tok)), str(tok), str(unit) if unit else None, span)

    def string(self, meta, children):
        (tok,) = children
        return ast.String(self._unquote(tok), self._span(meta))

    def true(self, meta, children):
        return ast.Bool(True, self._span(meta))

    def false(self, meta, children):
        return ast.Bool(False, self._span(meta))

    def tuple(self, meta, children):
        *items, unit = children
        items = [i for i in items if i is not None]
        return ast.Tuple(tuple(items), str(unit) if unit else None, self._span(meta))

    def empty_tuple(self, meta, children):
        return ast.Tuple((), None, self._span(meta))

    def list(self, meta, children):
        return ast.ListExpr(tuple(c for c in children if c is not None), self._span(meta))

    def args(self, meta, children):
        out = []
        for child in children:
            if isinstance(child, ast.Arg):
                out.append(child)
            else:
                out.append(ast.Arg(None, child, child.span))
        return out

    def named_arg(self, meta, children):
        name, value = children
        return ast.Arg(str(name), value, self._span(meta), self._tok(name))

    # operator declarations
    def op_decl(self, meta, children):
        attrs = [c for c in children if isinstance(c, ast.Attribute)]
        rest = [c for c in children if not isinstance(c, ast.Attribute)]
        name, type_vars, params, result = rest
        return ast.OpDecl(
            str(name),
            tuple(attrs),
            tuple(type_vars or ()),
            tuple(params or ()),
            result,
            self._span(meta),
            self._tok(name),
        )

    def attribute(self, meta, children):
        name, args = children
        values = []
        for a in args or ():
            values.append(a.id if isinstance(a, ast.Name) else getattr(a, "value", a))
        return ast.Attribute(str(name), tuple(values), self._span(meta))

    def attr_args(self, meta, children):
        return list(children)

    def type_vars(self, meta, children):
        return list(children)

    def type_var(self, meta, children):
        name, bound = (children + [None])[:2]
        return ast.TypeVar(str(name), bound, self._span(meta))

    def oparams(self, meta, children):
        return list(children)

    def oparam(self, meta, children):
        name, type_, default = children
        return ast.OpParam(str(name), type_, default, self._span(meta))

    def enum_decl(self, meta, children):
        name, *values = children
        return ast.EnumDecl(str(name), tuple(str(v) for v in values), self._span(meta))

    # types
    def fn_type(self, meta, children):
        *params, result = children
        params = [p for p in params if p is not None]
        return ast.FnType(tuple(params), result, self._span(meta))

    def type_app(self, meta, children):
        name, index, params, overrides = children
        return ast.TypeApp(
            str(name),
            tuple(index or ()),
            tuple(params or ()),
            tuple(overrides or ()),
            self._span(meta),
        )

    def type_index(self, meta, children):
        return list(children)

    def type_params(self, meta, children):
        return list(children)

    def type_override(self, meta, children):
        pairs = []
        for i in range(0, len(children), 2):
            pairs.append((str(children[i]), children[i + 1]))
        return pairs

    def targ_number(self, meta, children):
        span = self._span(meta)
        return ast.TypeArg("number", _number(str(children[0])), span)

    def targ_name(self, meta, children):
        return ast.TypeArg("name", str(children[0]), self._span(meta))

    def targ_unknown(self, meta, children):
        return ast.TypeArg("unknown", None, self._span(meta))

    def targ_shape(self, meta, children):
        span = self._span(meta)
        return ast.TypeArg("shape", tuple(_number(str(c)) for c in children), span)

    def targ_named(self, meta, children):
        name, value = children
        return ast.TypeArg("named", (str(name), value), self._span(meta))


# ----- syntax errors --------------------------------------------------------------

_TOKEN_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "UNIT": "a unit (mm, cm, um, deg, rad, GB, MB)",
    "DOC": "a `##` doc comment",
    "$END": "the end of the file",
}


def _describe_terminal(name: str) -> str:
    if name in _TOKEN_NAMES:
        return _TOKEN_NAMES[name]
    for term in _lark().terminals:
        if term.name == name:
            pattern = term.pattern
            if pattern.type == "str":
                return f"`{pattern.value}`"
    return name.lower()


def _describe_found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type in ("NAME",):
        return f"name `{tok}`"
    if tok.type == "NUMBER":
        return f"number `{tok}`"
    if tok.type == "STRING":
        return f"string {tok}"
    return f"`{tok}`"


def _expected_list(expected: set[str]) -> str:
    names = sorted({_describe_terminal(n) for n in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


def _report_syntax_error(exc: UnexpectedInput, source: SourceFile, diags: Diagnostics) -> None:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        span = _token_span(source.name, tok)
        expected = set(exc.accepts or exc.expected)
        diags.error(
            "E0001",
            f"unexpected {_describe_found(tok)}",
            label(span, f"expected {_expected_list(expected)}"),
            help=_syntax_hint(tok, expected, source),
        )
    elif isinstance(exc, UnexpectedCharacters):
        line, col = exc.line, exc.column
        char = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else ""
        span = Span(source.name, line, col, line, col + 1)
        help_text = None
        if char == '"':
            help_text = "a string must be closed with `\"` on the same line"
        elif char in "-+*/":
            help_text = NO_ARITHMETIC
        diags.error("E0002", f"unexpected character `{char}`", label(span, "not valid here"), help=help_text)
    else:  # UnexpectedEOF, or UnexpectedToken at the end of the file
        lines = source.text.splitlines() or [""]
        last = len(lines)
        span = Span(source.name, last, max(1, len(lines[-1])), last, max(2, len(lines[-1]) + 1))
        expected: set[str] = set(getattr(exc, "expected", None) or ())
        if isinstance(exc, UnexpectedToken):
            expected = set(exc.accepts or exc.expected)
        missing = "a closing `}`" if "RBRACE" in expected else _expected_list(expected) or "more input"
        diags.error("E0003", "the file ends too early", label(span, f"expected {missing} after this"))


def _syntax_hint(tok: Token, expected: set[str], source: SourceFile) -> str | None:
    starts_line = not source.line(tok.line)[: tok.column - 1].strip()
    if starts_line and tok.line > 1:
        for closer, name in (("RPAR", ")"), ("RSQB", "]"), ("RBRACE", "}")):
            if closer in expected:
                return f"is a `{name}` missing at the end of line {tok.line - 1}?"
    if tok.type == "NUMBER" and str(tok).startswith("-"):
        return NO_ARITHMETIC
    if tok.type in ("NAME", "NUMBER", "STRING") and ("COMMA" in expected or "RPAR" in expected):
        return "separate arguments with `,`"
    if tok.type == "EQUAL" and "COLON" in expected:
        return None
    if str(tok) in {"pipeline", "param", "show", "report", "import", "op", "search"}:
        return f"`{tok}` is a keyword and cannot be used as a name here"
    if tok.type == "UNIT":
        return "unit words (mm, cm, um, deg, rad, GB, MB) follow a number, like `1.5 mm`"
    return None


__all__ = ["parse", "UnexpectedEOF"]
