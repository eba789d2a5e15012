"""Source code and config files: one code block per file; the chunker splits it at definitions."""

from __future__ import annotations

from .blocks import Code, Document
from .textutil import decode_text

# Extension -> fence language. Also the list of extensions treated as code.
LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "jsx",
    ".ts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".m": "objectivec",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "zsh",
    ".ps1": "powershell",
    ".lua": "lua",
    ".pl": "perl",
    ".r": "r",
    ".sql": "sql",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".clj": "clojure",
    ".dart": "dart",
    ".vue": "vue",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".xml": "xml",
    ".proto": "protobuf",
    ".graphql": "graphql",
    ".tf": "hcl",
    ".css": "css",
    ".scss": "scss",
}
# Well-known files without an extension.
NAMED_FILES: dict[str, str] = {"dockerfile": "dockerfile", "makefile": "makefile", "jenkinsfile": "groovy"}


def parse_source(data: bytes, language: str) -> Document:
    text = decode_text(data).replace("\r\n", "\n").strip("\n")
    return Document(blocks=[Code(text=text, language=language)] if text.strip() else [])
