"""Pieces of Python source that make prompts: functions (header → body) and prose (docstrings, comments).

Pure functions of one source string, used by `dspark.reference.prompts` on the held-out split (the
evaluation prompt sets) and on the train split (the chat-formatted documents mixed into pretraining,
so the target knows the chat format the prompt sets are rendered in). Files that do not parse give
nothing; nothing here raises on odd input.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")


@dataclass(frozen=True)
class FunctionSnippet:
    """A documented function: `header` is decorators + signature + docstring, `body` the rest."""

    name: str
    signature: str  # `name(args) -> ret`, one line
    header: str
    body: str
    summary: str  # first paragraph of the docstring, one line
    line: int  # 1-based line of the `def` in the file


def _dedent_lines(lines: list[str], indent: int) -> list[str]:
    """Strip `indent` leading columns when they are whitespace (method bodies inside classes)."""
    return [line[indent:] if line[:indent].strip() == "" else line for line in lines]


def _summary(docstring: str) -> str:
    first = docstring.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def extract_functions(
    source: str, min_body_lines: int = 2, max_body_lines: int = 40, max_header_lines: int = 30
) -> list[FunctionSnippet]:
    """Every documented function or method whose body (after the docstring) is of a usable length."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = source.split("\n")
    snippets: list[FunctionSnippet] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
            continue
        docstring = ast.get_docstring(node)
        if not docstring or len(node.body) < 2:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        doc_end = node.body[0].end_lineno or node.body[0].lineno
        header_lines = lines[start:doc_end]
        body_lines = lines[doc_end : node.end_lineno]
        body_code = [line for line in body_lines if line.strip()]
        if not (min_body_lines <= len(body_code) <= max_body_lines) or len(header_lines) > max_header_lines:
            continue
        header = "\n".join(_dedent_lines(header_lines, node.col_offset))
        body = "\n".join(_dedent_lines(body_lines, node.col_offset)).rstrip() + "\n"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
        signature = f"{node.name}({ast.unparse(node.args)}){returns}"
        snippets.append(FunctionSnippet(node.name, signature, header, body, _summary(docstring), node.lineno))
    snippets.sort(key=lambda s: s.line)
    return snippets


def _docstrings(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                found.append(doc)
    return found


def _comment_blocks(source: str) -> list[str]:
    """Runs of consecutive full-line `#` comments, joined into one text each."""
    blocks: list[str] = []
    current: list[str] = []
    last_row = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                text = tok.string.lstrip("#").strip()
                if tok.start[0] != last_row + 1 and current:
                    blocks.append("\n".join(current))
                    current = []
                if text and not text.startswith("!") and "noqa" not in text and "type:" not in text:
                    current.append(text)
                last_row = tok.start[0]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if current:
        blocks.append("\n".join(current))
    return blocks


def extract_prose(source: str, min_chars: int = 160, max_chars: int = 2000, comments: bool = True) -> list[str]:
    """English-ish text from docstrings (and comment blocks, the slow part), of a usable length."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    texts = [textwrap.dedent(d).strip() for d in _docstrings(tree)]
    if comments:
        texts += _comment_blocks(source)
    kept = []
    for text in texts:
        letters = sum(ch.isalpha() or ch.isspace() for ch in text)
        boilerplate = "copyright" in text.lower() or "license" in text.lower()
        if min_chars <= len(text) <= max_chars and letters >= 0.8 * len(text) and not boilerplate:
            kept.append(text)
    return kept


def split_prose(text: str) -> tuple[str, str] | None:
    """Cut a text at the sentence boundary nearest its middle: (opening, continuation), or None."""
    cuts = [m.start() for m in _SENTENCE_END.finditer(text)]
    if not cuts:
        return None
    middle = len(text) // 2
    cut = min(cuts, key=lambda c: abs(c - middle))
    head, tail = text[:cut].strip(), text[cut:].strip()
    if len(head) < 40 or len(tail) < 40:
        return None
    return head, tail
