"""A built-in training corpus: the documentation inside the local Python installation.

Every machine that runs this package has a Python standard library, and it is full of
English prose about programming: module, class and function docstrings, and the language
reference topics that `help()` shows (`pydoc_data.topics`). `build_corpus` reads them with
`ast` (no module is imported or run), in sorted file order, and writes them once to a
`.jsonl` file (one document per module, one per reference topic) in the cache folder; later
calls reuse that file. For CPython 3.11.7: 534 documents, 2.3 MB, 660,184 GPT-2 tokens; the
exact text depends on the Python version, which is part of the file name. No network is
involved.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from ..fileio import atomic_open

CORPUS_VERSION = 2
# Folders of the standard library that hold tests, demos or third-party packages.
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
             "turtledemo", "ensurepip", "pydoc_data", "__pycache__", "config-3"}


def default_cache_dir() -> Path:
    """$LLM_CACHE_DIR, else $XDG_CACHE_HOME/llm, else ~/.cache/llm."""
    if os.environ.get("LLM_CACHE_DIR"):
        return Path(os.environ["LLM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm"


def corpus_path(cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None) -> Path:
    v = sys.version_info
    size = f"-max{max_bytes}" if max_bytes else ""
    name = f"stdlib-docs-py{v.major}.{v.minor}.{v.micro}-v{CORPUS_VERSION}{size}.jsonl"
    return Path(cache_dir or default_cache_dir()) / name


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Public standard-library modules (`.py`), sorted by path relative to the library."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if d not in SKIP_DIRS and not d.startswith((".", "_", "config-"))]
        for name in filenames:
            if name.endswith(".py") and (not name.startswith("_") or name == "__init__.py"):
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def module_document(path: Path, root: Path) -> str:
    """One module's docstrings as a text document ('' when it has none)."""
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    module = ".".join(parts)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    sections = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(doc)
    sections.extend(_definitions(tree.body, module))
    if not sections:
        return ""
    return f"{module}\n{'=' * len(module)}\n\n" + "\n\n".join(sections)


def _definitions(body, prefix: str) -> Iterator[str]:
    """'def name(args):\\ndocstring' for the documented classes and functions of a body."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                kind = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
                yield f"{kind} {prefix}.{node.name}({ast.unparse(node.args)}):\n{doc}"
        elif isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            if doc:
                yield f"class {prefix}.{node.name}" + (f"({bases})" if bases else "") + f":\n{doc}"
            yield from _definitions(node.body, f"{prefix}.{node.name}")


def reference_topics(root: Path) -> list[tuple[str, str]]:
    """(topic, text) of the language reference topics in `pydoc_data/topics.py`, sorted."""
    path = root / "pydoc_data" / "topics.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            try:
                topics = ast.literal_eval(node.value)
            except ValueError:
                return []
            return sorted((k, v) for k, v in topics.items() if isinstance(v, str) and v.strip())
    return []


def harvest_documents(root: str | os.PathLike | None = None,
                      max_bytes: int | None = None) -> Iterator[str]:
    """The corpus documents in order: the modules, with a reference topic after every few.

    Stops after the document that brings the total past `max_bytes` (UTF-8), if given.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    total = 0

    def documents():
        # Reference topics are spread evenly between the modules, so any contiguous part
        # of the corpus (a validation split is the tail) holds both kinds of text.
        files, topics = stdlib_files(root), reference_topics(root)
        after = {}  # file index -> the topics that follow it
        for j, topic in enumerate(topics):
            after.setdefault((j + 1) * len(files) // (len(topics) + 1), []).append(topic)
        for i, path in enumerate(files):
            for topic, text in after.get(i, []):
                yield f"The Python language reference: {topic}\n\n{text.strip()}"
            yield module_document(path, root)

    for doc in documents():
        if not doc:
            continue
        yield doc
        total += len(doc.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            return


def build_corpus(cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Path of the built-in corpus (`.jsonl`, a `text` field per line), harvested once.

    `max_bytes` takes only the first documents (for quick tests); it is part of the file
    name, so it never shadows the full corpus.
    """
    path = corpus_path(cache_dir, max_bytes)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        n = 0
        for doc in harvest_documents(root, max_bytes):
            fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            n += 1
        if n == 0:
            raise ValueError(f"no documentation found in the standard library at {root}")
    return path
