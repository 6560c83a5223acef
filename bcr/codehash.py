"""Rerun hashes derived from the code a command reaches, so they cannot drift from the imports.

Snakemake's ``code`` rerun trigger sees only a rule's own ``shell`` text, not the modules its command
imports.  Each rule therefore carries ``params: code=command_hash("dense", "run")``: a hash over the
``bcr`` source files that the handler of ``bcr dense run`` can execute, found by reading the
sources (nothing is imported but the CLI's parsers):

* the handler's own module (its module-level imports, the handler and the same-module functions it
  calls, with their function-level "lazy" imports — not those of the module's other commands);
* every ``bcr`` module those import, with all of its imports, module-level or lazy, transitively;
* the packages (``__init__.py``) on the way, and the data files (templates, YAML) beside them.

Not followed: the config's cross-field checks, reached by name (``bcr.config.TRACK_CHECKS``), and the
config schemas: they can refuse a config, never change what a valid one computes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGE = PACKAGE_ROOT.name
DATA_SUFFIXES = {".yaml", ".yml", ".j2", ".json", ".css", ".c"}  # .c: compiled into the package
VALIDATION_ONLY = {PACKAGE_ROOT / "schemas"}


def module_file(name: str) -> Path | None:
    """The source file of ``bcr`` module ``name`` (a package's ``__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.parent.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(nodes: Iterable[ast.AST], module: str, is_package: bool) -> set[str]:
    """``bcr`` modules imported anywhere inside ``nodes`` (``from X import Y`` counts X.Y if a module)."""
    out: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
    return {m for m in out if module_file(m)}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _handler_imports(func: Callable) -> set[str]:
    """Imports of the handler's module that the handler can reach (see the module docstring)."""
    path = Path(inspect.getsourcefile(func) or "").resolve()
    tree = _tree(path)
    functions = {
        n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    top = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    reached, todo = set(), [func.__name__]
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        todo.extend(n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name))
    nodes = [*top, *(functions[n] for n in reached)]
    return _imported(nodes, _module_name(path), path.name == "__init__.py")


def _with_packages(modules: Iterable[str]) -> set[str]:
    out = set()
    for m in modules:
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def reached_modules(func: Callable) -> set[str]:
    """Every ``bcr`` module the handler ``func`` can execute, its own module included."""
    own = _module_name(Path(inspect.getsourcefile(func) or "").resolve())
    seen: set[str] = set()
    todo = list(_with_packages([own, *_handler_imports(func)]))
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m == own:
            continue  # its imports are the handler's, already queued
        path = module_file(m)
        assert path is not None
        todo.extend(_with_packages(_imported([_tree(path)], m, path.name == "__init__.py")))
    return seen


def _data_files(package_dir: Path) -> list[Path]:
    """Data files of a package: beside its modules and in sub-folders that are not packages."""
    files = []
    for p in package_dir.iterdir():
        if p.is_file() and p.suffix in DATA_SUFFIXES:
            files.append(p)
        elif p.is_dir() and not (p / "__init__.py").exists() and p not in VALIDATION_ONLY:
            files.extend(f for f in p.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
    return files


def reached_files(func: Callable) -> list[Path]:
    files: set[Path] = set()
    for m in reached_modules(func):
        path = module_file(m)
        assert path is not None
        files.add(path)
        if path.name == "__init__.py":
            files.update(_data_files(path.parent))
    return sorted(files)


def files_hash(files: Iterable[Path]) -> str:
    """sha256 (16 hex) over the files' paths (relative to the package) and contents."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(PACKAGE_ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def command_files(track: str, command: str) -> list[Path]:
    """The source files ``bcr TRACK COMMAND`` can execute."""
    from bcr.cli import handler

    return reached_files(handler(track, command))


def command_hash(track: str, command: str) -> str:
    """The rerun hash of ``bcr TRACK COMMAND``: changes exactly when a file it can execute changes."""
    return files_hash(command_files(track, command))
