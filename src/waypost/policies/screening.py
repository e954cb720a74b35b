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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RULES",
    "SCREEN_CATEGORIES",
    "ScreenRule",
    "native_regex",
    "plain_pattern",
    "plain_regex",
    "rules_for",
]

Category = Literal["sqli", "xss", "traversal", "command"]
SCREEN_CATEGORIES: tuple[Category, ...] = ("sqli", "xss", "traversal", "command")
Where = Literal["path", "header", "text"]

# token -> (the character, its encoded forms). Both forms match everywhere: in a :path because
# Envoy sees the query as sent, and in decoded text because attackers encode twice (`%252e`,
# overlong UTF-8 `%c0%ae`) for an application that decodes once more.
_TOKENS: dict[str, tuple[str, str]] = {
    "Q": (r"['\"`]", r"%2[27]|%60|%u0027"),
    "SQ": (r"'", r"%27"),
    "S": (r"\s|\+|/\*.*?\*/", r"%20|%09|%0[abcd]|%a0|%2f\*.*?\*%2f"),
    "LT": (r"<", r"%3c|\\u003c|%u003c|\\x3c"),
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
    "SL": (r"/", r"%2f|%252f|%c0%af|%25c0%25af|%%32%66|%u2215|%e0%80%af"),
    "BS": (r"\\", r"%5c|%255c|%c1%9c|%25c1%259c|%%35%63|%u2216"),
    "DOT": (r"\.", r"%2e|%252e|%c0%ae|%25c0%25ae|%%32%65|%u002e|%e0%80%ae"),
    "COLON": (r":", r"%3a"),
    "HASH": (r"\#", r"%23"),
    # Not a raw line break: multi-line text (code in a JSON string) starts lines with `ruby ...`.
    "NL": (r"\\[rn]", r"%0[ad]|%250[ad]"),
    # A word start: in encoded text the character before a keyword may be the end of `%20`.
    "B": (r"\b", r"%[0-9a-f]{2}"),
}
# In a :path these characters arrive raw only where they are not query syntax (`&id=5` is not a
# command chain).
_RAW_IN_PATH = {"AMP": False, "HASH": False}


@dataclass(frozen=True, slots=True)
class ScreenRule:
    """One named pattern; ``id`` appears in block log lines and metrics labels."""

    id: str
    category: Category
    template: str


_COMMANDS = (
    r"cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|ping|sleep|echo|rm|chmod|chown|"
    r"python\d?|perl|ruby|php|nslookup|dig|ifconfig|ip|netstat|ps|kill|dir|type|net|netsh|reg|"
    r"ipconfig|systeminfo|powershell|cmd|certutil|bitsadmin|wmic|tasklist|telnet|ssh|nmap|touch|"
    r"sudo|env|find|head|tail|more|less|which|passwd|reboot|shutdown|hostname|pwd|xterm|uptime|ver|"
    r"sysinfo|wget|tftp|ftp|nohup|crontab|useradd|base64|mkfifo|socat"
)

# Commands that end an attack string on their own (`;id`); `; More` at the end of a title is prose.
_ALONE = (
    r"id|whoami|uname|ifconfig|ipconfig|netstat|sysinfo|systeminfo|hostname|pwd|ls|ps|env|uptime|tasklist"
)

RULES: tuple[ScreenRule, ...] = (
    # SQL injection: breaking out of a quoted literal into boolean logic, unions, stacked queries,
    # comments that cut the rest of a statement, and functions only an attacker calls.
    ScreenRule(
        "sqli-tautology",
        "sqli",
        # A quote, then boolean logic that is SQL, not prose: `' or 1=1`, `" or ""="`, `') or ('a'='a`
        # (`"Failures" and "Successes"` is a title, not an attack).
        r"{Q}{RP}*(?:{S})*(?:(?:or|and|xor)\b|{PIPE}{PIPE}|{AMP}{AMP})(?:{S})*{LP}*(?:{S})*"
        r"(?:{Q}?[\w-]*{Q}?(?:{S})*(?:{EQ}|<>|!{EQ}|\blike\b|is(?:{S})+(?:not(?:{S})+)?null)|"
        r"true\b|false\b|not\b|\d+(?:{S})*(?:{EQ}|<>|{LT}|{GT}|--|{HASH}|$)|sleep\b|select\b|exists\b)",
    ),
    ScreenRule(
        "sqli-numeric-tautology",
        "sqli",
        r"\b(?:or|and)(?:{S})+{LP}*(\d+|{Q}\w*{Q})(?:{S})*(?:{EQ}|<>|like)(?:{S})*{LP}*(?:\d+|{Q}\w*{Q})\b",
    ),
    ScreenRule(
        "sqli-union", "sqli", r"\bunion(?:{S}|{LP})+(?:all(?:{S})+|distinct(?:{S})+)?{LP}*(?:{S})*select\b"
    ),
    ScreenRule(
        "sqli-stacked",
        "sqli",
        r"{SEMI}(?:{S})*(?:drop|select|insert|update|delete|shutdown|exec|execute|declare|create|alter|"
        r"truncate|waitfor)\b",
    ),
    ScreenRule(
        "sqli-comment",
        "sqli",
        # `admin'--`, `admin'#`, `1'/*`: a single quote closed and the rest of the statement cut
        # (a double quote before `#` is a hashtag in quotes).
        r"{SQ}(?:{S})*{RP}*(?:{S})*(?:--|{SL}\*|{HASH}(?:{S}|$)|{SEMI}(?:{S})*$)|{Q}(?:{S})*{RP}*(?:{S})*--",
    ),
    ScreenRule(
        "sqli-keyword",
        "sqli",
        r"{Q}{RP}*(?:{S})+(?:union|select|order(?:{S})+by|group(?:{S})+by|having|waitfor|exec|procedure)\b",
    ),
    ScreenRule(
        "sqli-function",
        "sqli",
        # Functions only an attacker calls, then common ones given away by their arguments.
        r"\b(?:sleep|benchmark|pg_sleep)(?:{S})*{LP}(?:{S})*\d|\b(?:extractvalue|updatexml|load_file|"
        r"dbms_pipe\.receive_message|utl_inaddr\.get_host_name|xp_cmdshell|current_setting|randomblob|"
        r"make_set|name_const|group_concat)(?:{S})*{LP}|\b(?:char|chr)(?:{S})*{LP}\d+(?:,\d+)*{RP}|"
        r"\b(?:version|user|database|current_user|system_user|schema)(?:{S})*{LP}(?:{S})*{RP}|"
        r"\b(?:concat|concat_ws|substring|substr|mid|ascii|ord|hex|unhex|if|elt|count|cast|char|chr)"
        r"(?:{S})*{LP}[^)]*?(?:\bselect\b|@@|0x[0-9a-f]+)",
    ),
    ScreenRule(
        "sqli-schema",
        "sqli",
        r"\b(?:information_schema|sysobjects|syscolumns|mysql\.user|pg_catalog|pg_shadow|sqlite_master|"
        r"all_tables|user_tables|waitfor(?:{S})+delay|into(?:{S})+(?:out|dump)file|@@version|@@datadir|"
        r"sys\.(?:objects|tables|columns|databases|schemas|sql_logins|user_objects))\b",
    ),
    ScreenRule(
        "sqli-clause",
        "sqli",
        r"\b(?:order|group)(?:{S})+by(?:{S})+\d+(?:{S})*(?:--|{HASH}|{SEMI}|,|$)|"
        r"\bhaving(?:{S})+\d+(?:{S})*{EQ}|\bselect(?:{S})+(?:\*|@@\w+|(?:user|version|database|"
        r"current_\w+|pg_\w+|name|password|table_name|column_name)(?:{S})*(?:{LP}|,|(?:{S})+from\b))",
    ),
    # Cross-site scripting: markup that runs script, script URLs, event handlers, sinks.
    ScreenRule(
        "xss-tag",
        "xss",
        r"{LT}(?:{S})*{SL}?(?:{S})*(?:script|iframe|frame|frameset|object|embed|applet|svg|math|base|meta|"
        r"link|style|form|isindex|marquee|xss|body|img|image|video|audio|details|input|textarea|select|"
        r"button|a|div|table|td|bgsound|layer|xml|html|keygen|x|\?php|\?=|%)\b",
    ),
    ScreenRule(
        "xss-handler",
        "xss",
        r"\bon(?:error|load|mouse\w+|focus\w*|blur|click|dblclick|key\w+|change|submit|reset|select|"
        r"abort|drag\w*|drop|input|invalid|toggle|begin|end|start|finish|animation\w+|transition\w+|"
        r"pointer\w+|wheel|scroll|resize|unload|beforeunload|hashchange|message|popstate|pageshow|"
        r"copy|cut|paste|contextmenu|play\w*|pause|ended|readystatechange|search|show)(?:{S})*{EQ}",
    ),
    ScreenRule(
        "xss-url",
        "xss",
        r"(?:javascript|vbscript|livescript|mocha)(?:{S})*{COLON}|data(?:{S})*{COLON}(?:{S})*(?:text{SL}html|"
        r"image{SL}svg|application{SL}x)",
    ),
    ScreenRule(
        "xss-sink",
        "xss",
        r"\b(?:alert|prompt|confirm|eval|settimeout|setinterval|fromcharcode|atob)(?:{S})*"
        r"(?:{LP}(?:{S})*[^)\s%]|{LP}(?:{S})*{RP}{S}*$|{BT})|\bdocument(?:{S})*{DOT}(?:{S})*(?:cookie|domain|write|location)|"
        r"\bwindow(?:{S})*{DOT}(?:{S})*(?:location|open|name)|{LT}(?:{S})*!\[cdata\[|&#x?0*(?:60|3c)\b|"
        r"\bexpression(?:{S})*{LP}|\+adw-",
    ),
    # Path traversal and local files: dot-dot segments in any encoding, well-known system files,
    # stream wrappers.
    ScreenRule(
        "traversal-dotdot",
        "traversal",
        # `../` in any encoding, and dots or backslashes encoded twice or more (`%252e`, `%25c0%25ae`,
        # `%%32%65`): only an attacker encodes a dot for an application that decodes twice.
        r"{DOT}{DOT}(?:{SL}|{BS})|(?:%25(?:25)*2e){2}|%25(?:25)*c0%25(?:25)*a[ef]|%25(?:25)*c1%25(?:25)*9c|"
        r"%25(?:25)*5c|%(?:25)?%(?:25)*3[0-9a-f](?:%|%25)",
    ),
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
    ScreenRule("traversal-nul", "traversal", r"%00|\x00|\\0"),
    # Command injection: a shell separator or substitution followed by a command; interpreters
    # told to run code; template and lookup expressions.
    ScreenRule(
        "command-chain",
        "command",
        # A separator, a command, then what only a shell line has: another separator right after
        # it, or an option, a path or a variable (`; More …` and `| Tail &` are prose).
        # The separator is not the end of an HTML entity (`&amp;reg;`, `&gt;`).
        r"(?:^|[^a-z])(?:{SEMI}|{PIPE}|{AMP}|{BT}|{DOL}{LP}|{NL})(?:{S})*(?:{SL}(?:usr{SL})?s?bin{SL})?"
        r"(?:(?:" + _COMMANDS + r")(?:{SEMI}|{PIPE}|{AMP}|{BT}|{RP}|{NL}|\\n|"
        r"(?:{S})+(?:-\w|{SL}|{BS}|{DOL}|https?{COLON}|[a-z]{COLON}{BS}|\d+(?:{S})*(?:$|{SEMI}|{PIPE}|{AMP}|{BT})))|"
        r"(?:" + _ALONE + r")(?:{S})*$)|"
        r"(?:{SEMI}|{PIPE}|{AMP}|{BT}|^)(?:{S})*(?:net(?:{S})+(?:user|view|localgroup|group|share|use)|"
        r"netsh(?:{S})+(?:firewall|advfirewall|interface|wlan)|reg(?:{S})+(?:add|query|delete|save)|"
        r"sc(?:{S})+(?:query|create|config|stop))\b",
    ),
    ScreenRule(
        "command-start",
        "command",
        r"^(?:{S})*(?:{SL}(?:usr{SL})?s?bin{SL})?(?:"
        + _COMMANDS
        + r")(?:{S})+(?:-\w|{SL}|{DOL}|\d+(?:{S})*$)",
    ),
    ScreenRule(
        "command-interpreter",
        "command",
        r"\b(?:perl|python\d?|php|ruby|node|bash|sh|zsh|powershell|cmd(?:\.exe)?)(?:{S})+(?:-[ceirc]|{SL}c)"
        r"(?:{S})",
    ),
    ScreenRule(
        "command-substitution",
        "command",
        r"{DOL}{LP}(?:{S})*(?:"
        + _COMMANDS
        + r")\b|{LP}(?:{S})*{RP}(?:{S})*{LB}(?:{S})*{COLON}(?:{S})*{SEMI}|"
        r"{DOL}{LB}@|\bphpinfo(?:{S})*{LP}|{DOL}{LB}(?:ifs|path|home|shell|jndi|env|sys|java|lower|upper|::-|{DOL}{LB}|"
        r"\w+{LP})|\{(?:{S})*{DOL}\w+\[|\b(?:system|exec|shell_exec|passthru|popen|proc_open)(?:{S})*{LP}(?:{S})*{Q}",
    ),
    ScreenRule("command-ifs", "command", r"\bifs\b(?:{S})*(?:{EQ}|\})|{DOL}ifs\b"),
)


def rules_for(categories: tuple[str, ...]) -> tuple[ScreenRule, ...]:
    return tuple(rule for rule in RULES if rule.category in categories)


_TOKEN_RE = re.compile(r"\{([A-Z]+)\}")


def _render(template: str, encoded: bool) -> str:
    def token(match: re.Match[str]) -> str:
        plain, extra = _TOKENS[match.group(1)]
        if encoded and not _RAW_IN_PATH.get(match.group(1), True):
            return f"(?:{extra})"
        return f"(?:{plain}|{extra})"

    return _TOKEN_RE.sub(token, template.replace(r"\b", "{B}"))


def plain_pattern(rule: ScreenRule) -> str:
    """The rule over decoded text, without flags: match it case-insensitively, dot-all."""
    return _render(rule.template, encoded=False)


def plain_regex(rule: ScreenRule) -> str:
    """The rule over decoded text (a header value, a body string), case-insensitive, unanchored."""
    return "(?is)" + plain_pattern(rule)


def native_regex(rule: ScreenRule | Sequence[ScreenRule], where: Where) -> str:
    """The rule (or any of several) as an RE2 pattern Envoy matches against a whole value (hence
    the ``.*`` ends). One pattern for several rules is one scan of the value instead of many."""
    rules = [rule] if isinstance(rule, ScreenRule) else list(rule)
    body = "|".join(_render(r.template, encoded=where == "path") for r in rules)
    return f"(?is).*(?:{body}).*"
