"""Secret redaction for script output stored in the journal.

Only called when output is stored (on failure, by default), so ``re`` is
imported here and never on a successful hook's path.

Cost guarantee (docs/runner.md "Output and redaction"):

- The input is the kept tail (``output_bytes``), never the whole output.
- Built-in patterns run in time linear in that input: each pattern's first
  unbounded run is entered only where that run starts (a negative lookbehind
  of its own character class), every other repetition is bounded, and the
  private-key block is found with ``str.find``, not a lazy ``.*?``.
- A site's own patterns (``redact``) can be anything, so they run under a
  wall-clock budget (``BUDGET_S``): an interval timer interrupts the regex
  engine (it checks for signals while matching).  When the budget runs out,
  the output is withheld -- replaced by ``WITHHELD`` -- never stored
  unredacted, and the script's status is unaffected.
"""

import re

import _signal

MASK = "[REDACTED]"
#: What is stored instead of the output when the site patterns ran out of time.
WITHHELD = "[output withheld: the site's redact patterns exceeded their {budget:g} s budget on it]"
#: Wall-clock budget for the site's own patterns, per stored output.
BUDGET_S = 0.5

_KEYWORDS = ("password", "passwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey",
             "access_key", "access-key", "privatekey", "private_key", "private-key", "credential")

#: (pattern, replacement).  Keys are kept so a reader still sees *what* leaked.
BUILTIN = (
    (r"(?i)(?<![a-z0-9_-])(authorization:[ \t]{0,64}(?:bearer|basic|token)[ \t]{1,64})[^\s'\"]+", r"\1" + MASK),
    (r"(?i)(?<![a-z0-9_-])(bearer[ \t]{1,64})[A-Za-z0-9._~+/=-]{8,}", r"\1" + MASK),
    (r"(?i)(--(?:password|passwd|token|secret|api-key)[= ])\S+", r"\1" + MASK),
    (r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://[^:/\s@]{1,256}:)[^@\s/]{1,256}(@)", r"\1" + MASK + r"\2"),
    (r"(?<![0-9A-Za-z_])AKIA[0-9A-Z]{16}(?![0-9A-Za-z_])", MASK),
    (r"(?<![0-9A-Za-z_])gh[pousr]_[A-Za-z0-9]{36,}", MASK),
    (r"(?<![0-9A-Za-z_])xox[abprs]-[A-Za-z0-9-]{10,}", MASK),
    (r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", MASK),
)
#: NAME=value / NAME: value where NAME contains a keyword.  The name is one run
#: of [a-z0-9_.-] entered once (lookbehind); the keyword test is done in code.
_ASSIGN = r"(?i)(?<![a-z0-9_.-])([a-z0-9_.-]+)([ \t]{0,64}[=:][ \t]{0,64})(\"[^\"\n]{0,4096}\"|'[^'\n]{0,4096}'|[^\s,;]+)"
_KEY_BEGIN = r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----"
_KEY_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----")


class BudgetExceeded(Exception):
    pass


def _assign(m):
    name = m.group(1).lower()
    if any(k in name for k in _KEYWORDS):
        return m.group(1) + m.group(2) + MASK
    return m.group(0)


class Redactor:
    """Compiled once per run: builtin patterns (optional) plus the site's own."""

    def __init__(self, extra=(), builtin=True, budget_s=BUDGET_S):
        self._builtin = [(re.compile(p), r) for p, r in BUILTIN] if builtin else []
        self._assign = re.compile(_ASSIGN) if builtin else None
        self._key = re.compile(_KEY_BEGIN) if builtin else None
        self._site = [re.compile(p, re.DOTALL) for p in extra]
        self.budget_s = budget_s
        self.withheld = False

    def _keys(self, text):
        """Private-key blocks up to their END line (or the end of the text): linear."""
        out, pos = [], 0
        while True:
            m = self._key.search(text, pos)
            if m is None:
                out.append(text[pos:])
                return "".join(out)
            end = _KEY_END.search(text, m.end())
            out.append(text[pos:m.start()] + MASK)
            if end is None:
                return "".join(out)
            pos = end.end()

    def __call__(self, text):
        if self._key is not None:
            text = self._keys(text)
            text = self._assign.sub(_assign, text)
            for rx, repl in self._builtin:
                text = rx.sub(repl, text)
        if self._site:
            text = self._site_patterns(text)
        return text

    def _site_patterns(self, text):
        def expired(signum, frame):
            raise BudgetExceeded()

        try:
            old = _signal.signal(_signal.SIGALRM, expired)
        except ValueError:  # not the main thread: no timer, patterns run unbounded
            old = None
        try:
            if old is not None:
                _signal.setitimer(_signal.ITIMER_REAL, self.budget_s)
            for rx in self._site:
                text = rx.sub(MASK, text)
            return text
        except BudgetExceeded:
            self.withheld = True
            return WITHHELD.format(budget=self.budget_s)
        finally:
            if old is not None:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
                _signal.signal(_signal.SIGALRM, old)
