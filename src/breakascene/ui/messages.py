"""Every text the page shows is escaped for where it goes (:func:`message_html` for gradio's toasts,
:func:`markdown_text`/:func:`markdown_code` for Markdown), so ``<asset0>`` shows as itself, never as a tag."""

from __future__ import annotations

import html
import re


def message_html(text: object) -> str:
    """``text`` for gradio's toasts (``gr.Error``, ``gr.Warning``, ``gr.Info``), HTML-escaped.

    Gradio renders a toast's message as HTML (sanitised): a handle such as ``<aset0>`` is an unknown element to the
    browser, which the sanitiser drops together with the rest of the message, so "unknown handle <aset0> in ..."
    showed as "unknown handle". Escaped, every character shows as it is.
    """
    return html.escape(str(text), quote=False)


# Every ASCII punctuation character: CommonMark lets a backslash make any of them literal, and one of them starts
# each piece of Markdown syntax (<tag>, *emphasis*, [link], `code`, # heading, - list, 1. list, | table, ...).
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_text(text: object) -> str:
    """``text`` as Markdown that shows it verbatim: each ASCII punctuation character backslash-escaped.

    For user and library text in a ``gr.Markdown`` (status lines): ``<asset0>`` must not become an HTML tag nor
    ``a_b_c`` emphasis. Whitespace is left alone (a newline stays a soft break).
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))


def markdown_code(text: object) -> str:
    """``text`` as a Markdown code span, verbatim (code spans take no escapes, and gradio escapes their HTML).

    The fence is one backtick longer than the longest run of backticks inside, and padded with spaces when the
    text starts or ends with a backtick, as CommonMark asks; so no text can close the span early. A newline
    becomes a space (a code span is inline: Markdown would do the same).
    """
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
