"""How a handler's failures and the library's warnings reach the page: as toasts, whose messages show as text."""

from __future__ import annotations

import functools
import warnings

import gradio as gr

from ...errors import BreakASceneError
from ..messages import message_html


def show_warning(message: object) -> None:
    """A yellow toast showing ``message`` as text. Gradio renders a toast's message as HTML, so it is escaped:
    unescaped, a handle like ``<asset0>`` would be taken for a tag and the message cut there."""
    gr.Warning(message_html(message))


def page_error(message: object) -> gr.Error:
    """The ``gr.Error`` (a red toast) that shows ``message`` as text, escaped like :func:`show_warning`'s."""
    return gr.Error(message_html(message), print_exception=False)


def guarded(fn):
    """Turns every failure of a handler into one line in the page (a toast), never a traceback.

    Bad input (the library's ``BreakASceneError``) shows its message; anything else shows its type and message,
    and the traceback goes to the server's log. The library's warnings (e.g. "mask is tiny") become toasts.
    Every message is shown as text (:func:`page_error`, :func:`show_warning`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                result = fn(*args, **kwargs)
            for warning in caught:
                if issubclass(warning.category, UserWarning):
                    show_warning(warning.message)
            return result
        except gr.Error:
            raise
        except BreakASceneError as error:
            raise page_error(error) from None
        except Exception as error:  # noqa: BLE001
            import traceback

            from ...failures import describe_failure

            traceback.print_exc()
            raise page_error(describe_failure(error, traceback_hint="")[0]) from None

    return wrapper
