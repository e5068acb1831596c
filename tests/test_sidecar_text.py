"""Text extraction and chunking (pure functions)."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.chunking import split
from sidecar.extract import UnreadableDocumentError, extract_text, media_type, normalise


def pdf_with(line: str) -> bytes:
    """A minimal one-page PDF showing ``line`` (ASCII) in Helvetica."""
    stream = f"BT /F1 24 Tf 72 720 Td ({line}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_media_type_parses_parameters() -> None:
    assert media_type("Text/HTML; Charset=latin-1") == ("text/html", {"charset": "latin-1"})
    assert media_type("text/plain; charset*=utf-8''latin-1") == (
        "text/plain",
        {"charset": "latin-1"},
    )
    assert media_type("") == media_type("pdf") == ("", {})  # no type/subtype: unsupported


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (b"\xef\xbb\xbfhello  world\r\n\r\n\r\nnext", "text/plain", "hello world\n\nnext"),
        (b"caf\xe9", "text/plain; charset=iso-8859-1", "caf\u00e9"),
        (
            b"<html><head><title>T</title><style>p{}</style></head><body><h1>Head</h1>"
            b"<p>One &amp; two</p><script>alert(1)</script><ul><li>a</li><li>b</li></ul>",
            "text/html",
            "T\n\nHead\n\nOne & two\n\na\n\nb",
        ),
        (
            b"# Title\n\n- **bold** item\n- [link](http://x) and `code`\n\n> quoted _it_",
            "text/markdown",
            "Title\n\nbold item\nlink and code\n\nquoted it",
        ),
        (b"snake_case_name stays", "text/markdown", "snake_case_name stays"),
        (b"<p>a</p><![foo x", "text/html", "a"),  # an unclosed declaration ends the text
        (b"<a title=\"x > y\" href='>'>link</a> 1 < 2 &lt; 3", "text/html", "link 1 < 2 < 3"),
        (b"<p>kept</p><a href='x' swallowed, as a browser does", "text/html", "kept"),
        (b"<TITLE>a <b> &amp; c</TITLE><SCRIPT>x = '</p>'</SCRIPT >d", "text/html", "a <b> & c\nd"),
        (b"<template><p>no</p></template><noscript>no</noscript><br/>yes", "text/html", "yes"),
        (b"<!-- <p>no</p> --><!DOCTYPE html><?php no ?>yes</ br>", "text/html", "yes"),
        (
            b"&#x41;&#65;&#0000066;&#9999999999999999999;&notin;&amp",
            "text/html",
            "AAB\ufffd\u2209&",
        ),
    ],
)
def test_extract_text(content: bytes, content_type: str, expected: str) -> None:
    assert extract_text(content, content_type) == expected


def test_extract_pdf() -> None:
    assert extract_text(pdf_with("Hello PDF world"), "application/pdf") == "Hello PDF world"


@pytest.mark.parametrize(
    ("content", "content_type", "reason"),
    [
        (b"x", "image/png", "unsupported content type 'image/png'"),
        (b"x", "pdf", "unsupported content type 'pdf'"),
        (b"x", "text/plain; charset=undefined", "cannot decode as 'undefined'"),
        (b"\xff\xfe\xfa", "text/plain", "not valid utf-8-sig text"),
        (b"x", "text/plain; charset=klingon", "unknown charset 'klingon'"),
        (b"%PDF-1.4 garbage", "application/pdf", "not a readable PDF"),
        (b"<script>only()</script>", "text/html", "no text to extract"),
    ],
)
def test_unreadable_documents_say_why(content: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(UnreadableDocumentError, match=reason):
        extract_text(content, content_type)


@pytest.mark.parametrize("unclosed", ["**a ", "_a ", "*a ", "[a](", "![a]("])
def test_markdown_with_unclosed_markup_on_every_word_is_read_in_one_pass(unclosed: str) -> None:
    # Each of these took the first extractor quadratic time (minutes for 100 KB).
    text = extract_text((unclosed * 30_000).encode(), "text/markdown")
    assert text.count("a") == 30_000


ADVERSARIAL_HTML = ["<a ", "<a", "<a\n", "<a b=c ", "<a x='", '<a x="', "<!--", "<!", "</a ", "<a>"]
ADVERSARIAL_HTML += ["<script>", "<title>", "&#1", "&amp", "< ", '<a x="y>', "<p>x</p>"]


def cpu_seconds(content: bytes, content_type: str) -> float:
    started = time.process_time()  # CPU time: not the time other processes took the CPU
    with contextlib.suppress(UnreadableDocumentError):
        extract_text(content, content_type)
    return time.process_time() - started


def doubling_ratio(content: bytes, content_type: str) -> tuple[float, float]:
    """(time for ``content`` twice over / time for it, time for it): the best of up to ten
    interleaved runs each, the least disturbed by other work on the machine."""
    once: list[float] = []
    twice: list[float] = []
    while len(once) < 10 and sum(once) + sum(twice) < 0.5:
        once.append(cpu_seconds(content, content_type))
        twice.append(cpu_seconds(content * 2, content_type))
    return min(twice) / max(min(once), 1e-6), min(once)


ADVERSARIAL_MARKDOWN = ["**a ", "_a ", "*a ", "[a](", "![a](", "`a ", "- - - x\n", "> # "]


@pytest.mark.parametrize(
    ("unit", "content_type"),
    [(unit, "text/html") for unit in ADVERSARIAL_HTML]
    + [(unit, "text/markdown") for unit in ADVERSARIAL_MARKDOWN],
)
def test_text_extraction_is_linear_in_its_input(unit: str, content_type: str) -> None:
    # The standard HTML parser is quadratic on unclosed markup: 16 KB of "<a " took 4 s,
    # 32 KB took 19 s. Doubling the input must at most a little more than double the time.
    small = (unit * (16_384 // len(unit))).encode()
    for _ in range(3):  # a busy machine can spoil one measurement, not three
        ratio, seconds = doubling_ratio(small, content_type)
        if ratio < 3.0 or seconds > 0.5:  # quadratic: no point measuring again
            break
    assert ratio < 3.0, f"{unit!r}: doubling the input took {ratio:.1f} times as long"


def test_normalise_drops_controls_and_lone_surrogates() -> None:
    assert normalise("a\x00b\x1b c\ud800d\t\te") == "ab cd e"


def test_split_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="overlap < size"):
        split("text", size=10, overlap=10)


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "First sentence here. Second one.\n\nNew paragraph starts and goes on for a while."
    chunks = split(text, size=50, overlap=10)
    assert chunks[0].text == "First sentence here. Second one."
    assert chunks[1].text.startswith("one.") or chunks[1].text.startswith("New paragraph")


words = st.lists(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Cc")),
        min_size=1,
        max_size=30,
    ),
    min_size=0,
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    words=words,
    separators=st.lists(st.sampled_from([" ", "\n", "\n\n", ". "]), min_size=200, max_size=200),
    size=st.integers(min_value=1, max_value=300),
    overlap_share=st.floats(min_value=0, max_value=0.9),
)
def test_split_covers_the_text_in_order_within_size(
    words: list[str], separators: list[str], size: int, overlap_share: float
) -> None:
    text = "".join(w + s for w, s in zip(words, separators, strict=False)).strip()
    overlap = min(int(size * overlap_share), size - 1)
    chunks = split(text, size=size, overlap=overlap)
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
    for previous, chunk in itertools.pairwise(chunks):
        assert previous.start < chunk.start
        assert chunk.start <= previous.end or text[previous.end : chunk.start].isspace()
        assert previous.end - chunk.start <= overlap
    covered = "".join(
        text[c.start : c.end] if i == 0 else text[max(c.start, chunks[i - 1].end) : c.end]
        for i, c in enumerate(chunks)
    )
    assert "".join(covered.split()) == "".join(text.split())
