"""Imports: the standard library (`import std.pre`) and user modules (`import "x.medas"`).

The whole standard library is read once per process (it is small, and knowing every
operator lets an unknown name be answered with "`resample` is in std.pre"). Imports
decide only what is visible to a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medasl.diagnostics import Diagnostics, label
from medasl.semantics import snapshot
from medasl.semantics.signatures import EnumDef, OpSig, TypeError_, signature_from_decl
from medasl.source import SourceFile, Span
from medasl.syntax import ast
from medasl.syntax.parser import cache_dir, check_nesting, parse, write_atomically

STDLIB_DIR = Path(__file__).resolve().parents[2] / "stdlib"


def display_path(path: Path) -> str:
    """A path as the user would write it: relative to the working folder when inside it."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


class InternalError(Exception):
    """A bug in medasl itself (including its standard library), not in the user's file."""


@snapshot.register
@dataclass
class Module:
    """What one module offers to a file that imports it."""

    name: str
    ops: dict[str, OpSig] = field(default_factory=dict)
    enums: dict[str, EnumDef] = field(default_factory=dict)
    transforms: dict[str, ast.TransformDef] = field(default_factory=dict)
    docs: tuple[str, ...] = ()
    # the names a user module's transforms see: its own imports, not the importer's
    scope: FileScope | None = field(default=None, compare=False, repr=False)


class Stdlib:
    """Every `stdlib/*.medas` module, parsed and typed (from a JSON snapshot in the
    cache when one matches the files)."""

    def __init__(self, directory: Path = STDLIB_DIR) -> None:
        self.modules: dict[str, Module] = {}
        self.sources: dict[str, SourceFile] = {}
        files = sorted(directory.glob("*.medas"))
        for path in files:
            name = f"<std.{path.stem}>"
            self.sources[name] = SourceFile(name, path.read_text(encoding="utf-8"))
        cached = cache_dir() / f"stdlib-{snapshot.fingerprint(files)}.json"
        try:
            self.modules, self.enums = snapshot.loads(cached.read_text(encoding="utf-8"))  # type: ignore[misc]
            return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self._build(files)
        write_atomically(cached, snapshot.dumps((self.modules, self.enums)))

    def _build(self, files: list[Path]) -> None:
        decls: list[tuple[str, ast.OpDecl]] = []
        enums: dict[str, EnumDef] = {}
        for path in files:
            name = f"std.{path.stem}"
            source = self.sources[f"<{name}>"]
            diags = Diagnostics()
            tree = parse(source, diags)
            if tree is None:
                raise InternalError(f"the standard library module {name} does not parse: {diags.items[0].message}")
            module = Module(name)
            self.modules[name] = module
            for item in tree.items:
                if isinstance(item, ast.EnumDecl):
                    enum = EnumDef(item.name, item.values, name, item.docs)
                    module.enums[item.name] = enums[item.name] = enum
                elif isinstance(item, ast.OpDecl):
                    decls.append((name, item))
        for module_name, decl in decls:
            try:
                sig = signature_from_decl(decl, module_name, enums)
            except TypeError_ as exc:
                raise InternalError(f"{module_name}.{decl.name}: {exc.message}") from None
            self.modules[module_name].ops[decl.name] = sig
        self.enums = enums

    def find_op(self, name: str) -> OpSig | None:
        for module in self.modules.values():
            if name in module.ops:
                return module.ops[name]
        return None

    def all_ops(self) -> dict[str, OpSig]:
        if not hasattr(self, "_all_ops"):
            self._all_ops = {n: op for m in self.modules.values() for n, op in m.ops.items()}
        return self._all_ops

    def conversions(self) -> list[OpSig]:
        """The operators the checker may insert by itself."""
        if not hasattr(self, "_conversions"):
            self._conversions = [op for op in self.all_ops().values() if op.has("conversion") and op.params]
        return self._conversions


_STDLIB: Stdlib | None = None


def stdlib() -> Stdlib:
    global _STDLIB
    if _STDLIB is None:
        _STDLIB = Stdlib()
    return _STDLIB


@dataclass
class FileScope:
    """Names visible at the top level of one file, after its imports."""

    ops: dict[str, OpSig] = field(default_factory=dict)
    enums: dict[str, EnumDef] = field(default_factory=dict)
    transforms: dict[str, ast.TransformDef] = field(default_factory=dict)
    aliases: dict[str, Module] = field(default_factory=dict)
    failed_aliases: set[str] = field(default_factory=set)  # imports already reported as broken
    imported_std: dict[str, Span] = field(default_factory=dict)

    def home_of(self, transform: ast.TransformDef) -> FileScope:
        """The scope a transform's body is checked in: the file that defines it."""
        for module in [*self.aliases.values(), *self.imported_modules]:
            if module.scope is not None and any(t is transform for t in module.transforms.values()):
                return module.scope
        return self

    imported_modules: list[Module] = field(default_factory=list)


class Loader:
    """Loads the modules one file imports, reporting problems as diagnostics."""

    def __init__(self, diags: Diagnostics, sources: dict[str, SourceFile]) -> None:
        self.diags = diags
        self.sources = sources
        self.std = stdlib()
        self.user_modules: dict[Path, Module | None] = {}
        self.loading: set[Path] = set()

    def scope_for(self, tree: ast.Module, base_dir: Path) -> FileScope:
        scope = FileScope(enums=dict(self.std.enums))
        for item in tree.items:
            if isinstance(item, ast.Import):
                self._import(item, base_dir, scope)
        own = self.module_of(tree, tree.file)
        self._merge(scope, own, None)
        return scope

    def _import(self, item: ast.Import, base_dir: Path, scope: FileScope) -> None:
        if item.module is not None:
            dotted = ".".join(item.module)
            module = self.std.modules.get(dotted)
            if module is None:
                from medasl.semantics.suggest import did_you_mean

                known = sorted(self.std.modules)
                self.diags.error(
                    "E0111",
                    f"unknown module `{dotted}`",
                    label(item.span, "no such module"),
                    help=did_you_mean(dotted, known) or f"the standard modules are {', '.join(known)}",
                )
                return
            scope.imported_std[dotted] = item.span
            self._merge(scope, module, None)
            return
        path = (base_dir / item.file).resolve()  # type: ignore[operator]
        if path.suffix != ".medas":
            # not read at all: a diagnostic would quote the file's lines (`import "/etc/passwd"`)
            self.diags.error("E0112", f"`{item.file}` is not a .medas file", label(item.span, "not a medas module"),
                             help="only medas files are imported: `import \"common.medas\" as common`")
            module = None
        else:
            module = self._load_user(path, item.span)
        if module is not None:
            self._merge(scope, module, item.alias)
        elif item.alias:
            scope.failed_aliases.add(item.alias)

    def _merge(self, scope: FileScope, module: Module, alias: str | None) -> None:
        if alias:
            scope.aliases[alias] = module
            return
        if module.scope is not None:
            scope.imported_modules.append(module)
        scope.ops.update(module.ops)
        scope.enums.update(module.enums)
        scope.transforms.update(module.transforms)

    def _load_user(self, path: Path, span: Span) -> Module | None:
        if path in self.user_modules:
            return self.user_modules[path]
        if path in self.loading:
            self.diags.error("E0401", f"`{path.name}` imports itself (through other modules)",
                             label(span, "this import closes the cycle"))
            return None
        try:
            source = SourceFile.read(path)
            source = SourceFile(display_path(path), source.text)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a text file (UTF-8)"
            self.diags.error("E0112", f"cannot read the imported file `{display_path(path)}`",
                             label(span, reason or "cannot be read"),
                             help="the path is relative to the importing file")
            self.user_modules[path] = None
            return None
        self.sources[source.name] = source
        tree = parse(source, self.diags)
        if tree is None or not check_nesting(tree, self.diags):
            self.user_modules[path] = None
            return None
        self.loading.add(path)
        inner = self.scope_for(tree, path.parent)
        self.loading.discard(path)
        module = self.module_of(tree, source.name, inner)
        module.scope = inner
        self.user_modules[path] = module
        return module

    def module_of(self, tree: ast.Module, name: str, scope: FileScope | None = None) -> Module:
        """A user file's own definitions: its transforms, enums and operator signatures."""
        module = Module(name)
        enums = dict(self.std.enums)
        if scope is not None:
            enums.update(scope.enums)
        for item in tree.items:
            if isinstance(item, ast.EnumDecl):
                module.enums[item.name] = enums[item.name] = EnumDef(item.name, item.values, name, item.docs)
        for item in tree.items:
            if isinstance(item, ast.TransformDef):
                module.transforms[item.name] = item
            elif isinstance(item, ast.OpDecl):
                try:
                    module.ops[item.name] = signature_from_decl(item, name, enums)
                except TypeError_ as exc:
                    self.diags.error("E0113", exc.message, label(exc.span), help=exc.help)
        return module
