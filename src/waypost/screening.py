"""The ``core`` injection rule set: SQL injection, XSS, path traversal, command injection.

Written for waypost in the manner of OWASP CRS's core rules (not copied from them): each rule
is one pattern over request text, in a small template language whose tokens stand for the
characters attacks need (quotes, angle brackets, separators). One rule renders two ways:

- :func:`native_regex`, for Envoy (RE2, matched against the whole ``:path`` or a header value):
  in a ``:path`` every token also matches its percent-encoded forms (``'`` as ``%27``, a space as
  ``+`` or ``%20``), because Envoy matches the query string as the client sent it;
- :func:`plain_regex`, for text already decoded (header values, and bodies in the decision
  service, :mod:`waypost.filters.protect.screen`).

Used by the compiler (Envoy RBAC policies) and the decision service alike, so a rule means the
same on both paths. Patterns use only syntax RE2 and Python's ``re`` read alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["RULES", "ScreenRule", "native_regex", "plain_pattern", "plain_regex", "rules_for"]

Category = Literal["sqli", "xss", "traversal", "command"]
Where = Literal["path", "header", "text"]

# token -> (decoded text, extra forms in a raw :path). Separators of a query string (& and =)
# are never themselves screened as raw characters in a path: `&id=5` is not command injection.
_TOKENS: dict[str, tuple[str, str]] = {
    "Q": (r"['\"`]", r"%2[27]|%60"),
    "SQ": (r"'", r"%27"),
    "S": (r"(?:\s|/\*.*?\*/)", r"\+|%20|%09|%0[abcd]|%2f\*.*?\*%2f"),
    "LT": (r"<", r"%3c|\\u003c"),
    "GT": (r">", r"%3e"),
    "SEMI": (r";", r"%3b"),
    "PIPE": (r"\|", r"%7c"),
    "AMP": (r"&", r"%26"),
    "BT": (r"`", r"%60"),
    "DOL": (r"\$", r"%24"),
    "LP": (r"\(", r"%28"),
    "RP": (r"\)", r"%29"),
    "LB": (r"\{", r"%7b"),
    "EQ": (r"=", r"%3d"),
    "SL": (r"/", r"%2f|%252f"),
    "BS": (r"\\", r"%5c|%255c"),
    "DOT": (r"\.", r"%2e|%252e|%c0%ae"),
    "COLON": (r":", r"%3a"),
    "HASH": (r"\#", r"%23"),
    "NL": (r"[\r\n]", r"%0[ad]"),
}
# In a :path these characters arrive raw only where they are not query syntax.
_RAW_IN_PATH = {"AMP": False, "EQ": True, "HASH": False}


@dataclass(frozen=True, slots=True)
class ScreenRule:
    """One named pattern; ``id`` appears in block log lines and metrics labels."""

    id: str
    category: Category
    template: str


RULES: tuple[ScreenRule, ...] = (
    # SQL injection: breaking out of a quoted literal into boolean logic, unions, stacked queries,
    # comments that cut the rest of a statement, and functions only an attacker calls.
    ScreenRule(
        "sqli-tautology",
        "sqli",
        r"{Q}{RP}*{S}*(?:or|and|xor|{PIPE}{PIPE}|{AMP}{AMP}){S}*{LP}*{S}*"
        r"(?:{Q}?[\w-]*{Q}?{S}*(?:{EQ}|<>|!{EQ}|like|{LT}|{GT}|is{S})|true\b|false\b|not\b|\d|{Q}|sleep|select)",
    ),
    ScreenRule(
        "sqli-numeric-tautology",
        "sqli",
        r"(?:^|[^\w.])(?:or|and){S}+{LP}*(\d+|{Q}\w*{Q}){S}*(?:{EQ}|<>|like){S}*{LP}*(?:\d+|{Q}\w*{Q})\b",
    ),
    ScreenRule("sqli-union", "sqli", r"\bunion(?:{S}|{LP})+(?:all{S}+|distinct{S}+)?{LP}*{S}*select\b"),
    ScreenRule(
        "sqli-stacked",
        "sqli",
        r"{SEMI}{S}*(?:drop|select|insert|update|delete|shutdown|exec|execute|declare|create|alter|truncate)"
        r"{S}",
    ),
    ScreenRule("sqli-comment", "sqli", r"{Q}{S}*{RP}*{S}*(?:--|{HASH}|{SL}\*|{SEMI}\x00)"),
    ScreenRule(
        "sqli-keyword",
        "sqli",
        r"{Q}{RP}*{S}+(?:and|or|union|select|order{S}+by|group{S}+by|having|waitfor|exec|procedure)"
        r"{S}+",
    ),
    ScreenRule(
        "sqli-function",
        "sqli",
        r"\b(?:sleep|benchmark|pg_sleep|extractvalue|updatexml|load_file|char|chr|concat|concat_ws|"
        r"substring|ascii|dbms_pipe\.receive_message|utl_inaddr\.get_host_name|xp_cmdshell|ord|hex|"
        r"version|user|database|if|elt|count|cast)(?:{S}|/\*.*?\*/)*{LP}[^)]*?(?:\bselect\b|{Q}|@@|\d{S}*{RP})",
    ),
    ScreenRule(
        "sqli-schema",
        "sqli",
        r"\b(?:information_schema|sysobjects|syscolumns|mysql\.user|pg_catalog|sqlite_master|all_tables|"
        r"waitfor{S}+delay|into{S}+(?:out|dump)file|@@version|@@datadir)\b",
    ),
    # Cross-site scripting: markup that runs script, script URLs, event handlers, sinks.
    ScreenRule(
        "xss-tag",
        "xss",
        r"{LT}{S}*{SL}?{S}*(?:script|iframe|frame|frameset|object|embed|applet|svg|math|base|meta|link|"
        r"style|form|isindex|marquee|xss|body|img|image|video|audio|details|input|textarea|select|"
        r"button|a|div|table|td|bgsound|layer|xml|html|keygen|x)\b",
    ),
    ScreenRule(
        "xss-handler",
        "xss",
        r"\bon(?:error|load|mouse\w+|focus\w*|blur|click|dblclick|key\w+|change|submit|reset|select|"
        r"abort|drag\w*|drop|input|invalid|toggle|begin|end|start|finish|animation\w+|transition\w+|"
        r"pointer\w+|wheel|scroll|resize|unload|beforeunload|hashchange|message|popstate|pageshow|"
        r"copy|cut|paste|contextmenu|play\w*|pause|ended|readystatechange|search|show)\s*{EQ}",
    ),
    ScreenRule(
        "xss-url",
        "xss",
        r"(?:javascript|vbscript|livescript|mocha){S}*{COLON}|data{S}*{COLON}{S}*(?:text{SL}html|"
        r"image{SL}svg|application{SL}x)",
    ),
    ScreenRule(
        "xss-sink",
        "xss",
        r"\b(?:alert|prompt|confirm|eval|settimeout|setinterval|fromcharcode|atob)(?:{S}|{LP}|{BT})*"
        r"(?:{LP}|{BT})|\bdocument{S}*{DOT}{S}*(?:cookie|domain|write|location)|"
        r"\bwindow{S}*{DOT}{S}*(?:location|open|name)|{LT}{S}*!\[cdata\[|&#x?0*(?:60|3c)\b|"
        r"\bexpression{S}*{LP}|\\x3c|\\u003c",
    ),
    # Path traversal and local files: dot-dot segments in any encoding, well-known system files,
    # stream wrappers.
    ScreenRule("traversal-dotdot", "traversal", r"(?:{DOT}{DOT}(?:{SL}|{BS}))|(?:(?:{SL}|{BS}){DOT}{DOT})$"),
    ScreenRule(
        "traversal-file",
        "traversal",
        r"(?:{SL}|{BS}|^|{EQ})(?:etc(?:{SL}|{BS})(?:passwd|shadow|hosts|group|issue|master\.passwd)|"
        r"proc(?:{SL}|{BS})self|windows(?:{SL}|{BS})(?:win\.ini|system32)|boot\.ini|win\.ini|"
        r"\.htaccess|\.htpasswd|\.ssh(?:{SL}|{BS})|web\.config)",
    ),
    ScreenRule(
        "traversal-wrapper", "traversal", r"\b(?:file|php|expect|phar|zip|glob|gopher|dict){COLON}{SL}{SL}"
    ),
    ScreenRule("traversal-nul", "traversal", r"%00|\x00"),
    # Command injection: a shell separator or substitution followed by a command.
    ScreenRule(
        "command-chain",
        "command",
        r"(?:{SEMI}|{PIPE}|{AMP}|{BT}|{DOL}{LP}|{NL})\s*(?:{SL}(?:usr{SL})?s?bin{SL})?"
        r"(?:cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ping|sleep|echo|rm|chmod|"
        r"python\d?|perl|ruby|php|nslookup|dig|ifconfig|ip|netstat|ps|kill|dir|type|net|ipconfig|"
        r"systeminfo|powershell|cmd|telnet|ssh|nmap|touch|sudo|env|find|head|tail|more|less|which|"
        r"passwd|reboot|shutdown|hostname|pwd|xterm)(?:{S}|{SEMI}|{PIPE}|{AMP}|{BT}|{RP}|{NL}|$)",
    ),
    ScreenRule("command-substitution", "command", r"{DOL}{LP}[^)]*{RP}|{DOL}{LB}(?:ifs|path|home|shell)\b"),
    ScreenRule("command-ifs", "command", r"\bifs\b\s*(?:{EQ}|\})|{DOL}ifs\b"),
)


def rules_for(categories: tuple[str, ...]) -> tuple[ScreenRule, ...]:
    return tuple(rule for rule in RULES if rule.category in categories)


_TOKEN_RE = re.compile(r"\{([A-Z]+)\}")


def _render(template: str, encoded: bool) -> str:
    def token(match: re.Match[str]) -> str:
        plain, extra = _TOKENS[match.group(1)]
        if not encoded:
            return plain
        if not _RAW_IN_PATH.get(match.group(1), True):
            return f"(?:{extra})"
        return f"(?:{plain}|{extra})"

    return _TOKEN_RE.sub(token, template)


def plain_pattern(rule: ScreenRule) -> str:
    """The rule over decoded text, without flags: match it case-insensitively, dot-all."""
    return _render(rule.template, encoded=False)


def plain_regex(rule: ScreenRule) -> str:
    """The rule over decoded text (a header value, a body string), case-insensitive, unanchored."""
    return "(?is)" + plain_pattern(rule)


def native_regex(rule: ScreenRule, where: Where) -> str:
    """The rule as an RE2 pattern Envoy matches against a whole value (hence the ``.*`` ends)."""
    body = _render(rule.template, encoded=where == "path")
    return f"(?is).*(?:{body}).*"
