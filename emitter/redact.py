"""Secret redaction for script output stored in the journal.

Only called when output is stored (on failure, by default), so ``re`` is
imported here and never on a successful hook's path.
"""

import re

MASK = "[REDACTED]"

#: (pattern, replacement).  Keys are kept so a reader still sees *what* leaked.
BUILTIN = (
    (r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", MASK),
    (r"(?i)\b(authorization:\s*(?:bearer|basic|token)\s+)[^\s'\"]+", r"\1" + MASK),
    (r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", r"\1" + MASK),
    (r"(?i)((?:[a-z0-9_.-]*)(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
     r"|credentials?)[a-z0-9_.-]*\s*[=:]\s*)(?:\"[^\"]*\"|'[^']*'|[^\s,;]+)", r"\1" + MASK),
    (r"(?i)(--(?:password|passwd|token|secret|api-key)[= ])\S+", r"\1" + MASK),
    (r"([a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+(@)", r"\1" + MASK + r"\2"),
    (r"\bAKIA[0-9A-Z]{16}\b", MASK),
    (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", MASK),
    (r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b", MASK),
    (r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", MASK),
)


class Redactor:
    """Compiled once per run: builtin patterns (optional) plus the site's own."""

    def __init__(self, extra=(), builtin=True):
        pats = list(BUILTIN) if builtin else []
        pats += [(p, MASK) for p in extra]
        self._subs = [(re.compile(p, re.DOTALL), r) for p, r in pats]

    def __call__(self, text):
        for rx, repl in self._subs:
            text = rx.sub(repl, text)
        return text
