"""Text out of a stored document, by its content type.

:func:`extract_text` supports ``text/plain``, ``text/markdown`` (markup removed),
``text/html`` (visible text, blocks on their own lines) and ``application/pdf`` (through
pypdf). Text types honour a ``charset`` parameter (UTF-8 by default, a BOM is skipped).
Anything it cannot read raises :class:`UnreadableDocumentError` with a reason fit to show
the caller; it never raises anything else for bad input.
"""

from __future__ import annotations

import email.utils
import io
import logging
import re
from collections.abc import Callable
from email.message import Message
from html.parser import HTMLParser

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


class _VisibleText(HTMLParser):
    """Collects the text a browser shows; block elements start new lines."""

    HIDDEN = frozenset({"script", "style", "template", "noscript", "head"})
    BLOCKS = frozenset(
        {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt"}
        | {"figcaption", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header"}
        | {"hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th"}
        | {"title", "tr", "ul"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self.HIDDEN and tag != "head":
            self.hidden_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and tag != "head" and self.hidden_depth:
            self.hidden_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden_depth:
            self.parts.append(data)


def _html(text: str) -> str:
    parser = _VisibleText()
    try:
        parser.feed(text)
        parser.close()
    except Exception as exc:  # the standard parser asserts on some malformed markup
        raise UnreadableDocumentError(f"malformed HTML ({type(exc).__name__})") from None
    return "".join(parser.parts)


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
