"""Text out of a stored document, by its content type.

:func:`extract_text` supports ``text/plain``, ``text/markdown`` (markup removed),
``text/html`` (visible text, blocks on their own lines; read in one forward pass, as a
browser tokenises it: an unclosed tag or comment hides the rest) and ``application/pdf``
(through pypdf). Text types honour a ``charset`` parameter (UTF-8 by default, a BOM is
skipped), and their extraction takes time linear in the input, whatever the input.
Anything it cannot read raises :class:`UnreadableDocumentError` with a reason fit to show
the caller; it never raises anything else for bad input.
"""

from __future__ import annotations

import email.utils
import html
import io
import logging
import re
from collections.abc import Callable
from email.message import Message

__all__ = ["SUPPORTED_TYPES", "UnreadableDocumentError", "extract_text", "media_type"]


class UnreadableDocumentError(ValueError):
    """The document's bytes cannot be turned into text; the message says why."""


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """``"Text/HTML; charset=latin-1"`` -> ``("text/html", {"charset": "latin-1"})``.

    A value without a ``type/subtype`` gives ``("", {})`` (unsupported, not plain text).
    """
    if "/" not in content_type.split(";", 1)[0]:
        return "", {}
    header = Message()
    header["content-type"] = content_type
    params = {
        str(k).lower(): email.utils.collapse_rfc2231_value(v)  # RFC 2231 values are tuples
        for k, v in header.get_params(failobj=[])[1:]
    }
    return header.get_content_type(), params


def _decode(content: bytes, params: dict[str, str]) -> str:
    charset = params.get("charset", "utf-8").strip().lower() or "utf-8"
    if charset in ("utf-8", "utf8"):
        charset = "utf-8-sig"  # skips a BOM if there is one
    try:
        return content.decode(charset)
    except LookupError:
        raise UnreadableDocumentError(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise UnreadableDocumentError(
            f"not valid {charset} text (byte {exc.start}: {exc.reason})"
        ) from None
    except (UnicodeError, ValueError, TypeError) as exc:  # codecs that refuse to decode at all
        raise UnreadableDocumentError(f"cannot decode as {charset!r}: {exc}") from None


# Every rule is linear in the input: no unbounded repetition that can run past the next
# delimiter (an unclosed "**" or "[" on every line must not make a document take minutes).
_MARKDOWN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^```.*$|^~~~.*$", re.MULTILINE), ""),  # code fences (the code stays)
    (re.compile(r"!\[([^\]\n]{0,500})\]\([^)\n]{0,2000}\)"), r"\1"),  # images: alt text
    (re.compile(r"\[([^\]\n]{1,500})\]\([^)\n]{0,2000}\)"), r"\1"),  # links: their text
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE), ""),  # headings
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+", re.MULTILINE), ""),  # list markers
    (re.compile(r"^[ \t]{0,3}(?:[-*_][ \t]*){3,}$", re.MULTILINE), ""),  # horizontal rules
    (re.compile(r"\*\*([^*\n]+)\*\*|__([^_\n]+)__"), r"\1\2"),  # bold
    (re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])|(?<!\w)_([^_\n]+)_(?!\w)"), r"\1\2"),  # italics
    (re.compile(r"`([^`\n]*)`"), r"\1"),  # inline code
)


def _markdown(text: str) -> str:
    for pattern, replacement in _MARKDOWN_RULES:
        text = pattern.sub(replacement, text)
    return text


# HTML is read by one forward scan (the standard library's HTMLParser is quadratic on
# unclosed markup: 16 KB of "<a " took seconds). Each construct ends at the first delimiter
# that can end it, found with str.find or a regex without nested backtracking; one that runs
# to the end of the input ends the scan (what a browser does: an unclosed tag or comment
# swallows the rest), so no byte is scanned twice.
_HIDDEN = frozenset({"template", "noscript"})
"""Elements whose content is not shown (``script``/``style`` are raw text, below)."""
_RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes"})
"""Content up to the matching end tag is text, not markup; only ``xmp``'s is shown."""
_RCDATA = frozenset({"title", "textarea"})
"""Content up to the matching end tag is text with character references, not markup."""
_BLOCKS = frozenset(
    {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt"}
    | {"figcaption", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header"}
    | {"hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th"}
    | {"title", "tr", "ul"}
)
_END_TAGS = {
    name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE) for name in _RAW_TEXT | _RCDATA
}
_TAG_NAME = re.compile(r"/?+[A-Za-z][^\t\n\f\r />]*+")
_TAG_REST = re.compile(  # attributes up to ">"; a quoted value after "=" may hold ">"
    r"""(?:[^>"'=]++|=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+')?+|["'])*+>"""
)
_CHARREF = re.compile(r"&(?:#[xX]([0-9a-fA-F]++);?|#([0-9]++);?|([^\t\n\f <&#;]{1,32};?))")


def _charref(match: re.Match[str]) -> str:
    hex_digits, digits, name = match.groups()
    if name is not None:
        return html.unescape(match.group())
    number = (hex_digits if digits is None else digits).lstrip("0") or "0"
    if len(number) > 8:  # beyond U+10FFFF; also keeps int() off a megabyte of digits
        return "\ufffd"
    return html.unescape(f"&#{'x' if digits is None else ''}{number};")


def _unescape(text: str) -> str:
    """``html.unescape``, linear however long a numeric reference is."""
    return _CHARREF.sub(_charref, text) if "&" in text else text


def _html(text: str) -> str:
    parts: list[str] = []
    hidden = 0  # depth of open hidden elements
    pos, size = 0, len(text)
    while pos < size:
        lt = text.find("<", pos)
        if lt < 0:
            lt = size
        if lt > pos and not hidden:
            parts.append(_unescape(text[pos:lt]))
        if lt >= size:
            break
        nxt = text[lt + 1 : lt + 2]
        if text.startswith("<!--", lt):  # comment
            close = text.find("-->", lt + 4)
            pos = size if close < 0 else close + 3
            continue
        if nxt in ("!", "?") or (nxt == "/" and not _TAG_NAME.match(text, lt + 1)):
            close = text.find(">", lt + 1)  # doctype, bogus comment, "</ >"
            pos = size if close < 0 else close + 1
            continue
        name_match = _TAG_NAME.match(text, lt + 1)
        if name_match is None:  # "a < b": a literal "<"
            if not hidden:
                parts.append("<")
            pos = lt + 1
            continue
        rest = _TAG_REST.match(text, name_match.end())
        if rest is None:  # unclosed tag: it swallows the rest of the document
            break
        pos = rest.end()
        name = name_match.group().lower()
        closing = name.startswith("/")
        name = name.lstrip("/")
        if name in _BLOCKS:
            parts.append("\n")
        if closing:
            if name in _HIDDEN and hidden:
                hidden -= 1
            continue
        self_closing = rest.group().endswith("/>")
        if name in _HIDDEN and not self_closing:
            hidden += 1
        elif name in _RAW_TEXT or name in _RCDATA:
            end = _END_TAGS[name].search(text, pos)
            content_end = size if end is None else end.start()
            content = text[pos:content_end]
            if not hidden and name in _RCDATA:
                parts.append(_unescape(content))
            elif not hidden and name == "xmp":
                parts.append(content)
            if end is None:
                break
            close = text.find(">", end.end() - 1)
            pos = size if close < 0 else close + 1
            if name in _BLOCKS:
                parts.append("\n")
    return "".join(parts)


def _pdf(content: bytes) -> str:
    from pypdf import PdfReader  # imported on first use: most documents are text
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns about every quirk
    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            raise UnreadableDocumentError("the PDF is encrypted")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (UnreadableDocumentError, MemoryError):
        raise
    except PyPdfError as exc:
        raise UnreadableDocumentError(f"not a readable PDF ({type(exc).__name__})") from None
    except Exception as exc:  # pypdf also asserts, or raises NotImplementedError, on odd files
        raise UnreadableDocumentError(f"not a readable PDF ({type(exc).__name__})") from None


_TEXT_READERS: dict[str, Callable[[str], str]] = {
    "text/plain": lambda text: text,
    "text/markdown": _markdown,
    "text/x-markdown": _markdown,
    "text/html": _html,
    "application/xhtml+xml": _html,
}
SUPPORTED_TYPES = (*_TEXT_READERS, "application/pdf")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")


def normalise(text: str) -> str:
    """One space between words, at most one blank line between paragraphs; no control
    characters or lone surrogates (which PostgreSQL text cannot hold)."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def extract_text(content: bytes, content_type: str) -> str:
    """The document's text, normalised (see :func:`normalise`); never empty.

    Raises :class:`UnreadableDocumentError` for an unsupported type, undecodable bytes, a
    broken PDF or a document without text.
    """
    kind, params = media_type(content_type)
    if kind == "application/pdf":
        raw = _pdf(content)
    elif kind in _TEXT_READERS:
        raw = _TEXT_READERS[kind](_decode(content, params))
    else:
        supported = ", ".join(SUPPORTED_TYPES)
        raise UnreadableDocumentError(
            f"unsupported content type {content_type!r} (supported: {supported})"
        )
    text = normalise(raw)
    if not text:
        raise UnreadableDocumentError("the document has no text to extract")
    return text
