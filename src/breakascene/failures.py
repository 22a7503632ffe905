"""Unexpected failures as one line a user can act on: a full disk, a read-only folder, a refused pickle.

The library raises :class:`~breakascene.errors.BreakASceneError` for everything it foresees. What it cannot
foresee comes from the operating system or a library, often as a paragraph that names the wrong cause (safetensors
reports a full disk as ``IoError(Os { code: 28, kind: StorageFull, ... })``). :func:`describe_failure` turns those
into one line that says which file, what happened and what to do, and an exit status: 1 (running failed).
"""

from __future__ import annotations

import errno
import pickle
import re

from .errors import RunFailure, first_line

_OS_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free some space and run the same command again"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space and run the same command again"),
    errno.EROFS: ("the file system is read-only", "write to a folder on a writable disk (--out)"),
    errno.EACCES: ("permission denied", "write to a folder you may write to (--out), or fix its permissions"),
    errno.EPERM: ("operation not permitted", "write to a folder you may write to (--out), or fix its permissions"),
}
# The same conditions as Rust's and C libraries print them, for errors that are not OSError (safetensors, PIL).
_OS_TEXTS = (
    (re.compile(r"No space left on device|StorageFull|os error 28", re.I), errno.ENOSPC),
    (re.compile(r"Disk quota exceeded|os error 122", re.I), errno.EDQUOT),
    (re.compile(r"Read-only file system|ReadOnlyFilesystem|os error 30", re.I), errno.EROFS),
    (re.compile(r"Permission denied|os error 13", re.I), errno.EACCES),
)
_PICKLE_TEXT = re.compile(r"Weights only load failed|UnpicklingError|unpickl", re.I)


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe_failure(error: BaseException, resumable: bool = False,
                     traceback_hint: str = "run with --debug for the traceback") -> tuple[str, int]:
    """One line (without "error: ") and an exit status for an exception nothing else handled.

    Args:
        resumable: the command can continue from a checkpoint (``extract``): the advice then says ``--resume``.
        traceback_hint: where the traceback of an unrecognised error can be seen ("" for none).
    """
    for link in _chain(error):
        code, where = None, None
        if isinstance(link, OSError) and link.errno in _OS_REASONS:
            code, where = link.errno, link.filename
        else:
            code = next((c for pattern, c in _OS_TEXTS if pattern.search(str(link))), None)
        if code is not None:
            reason, advice = _OS_REASONS[code]
            if resumable and code in (errno.ENOSPC, errno.EDQUOT):
                advice += " with --resume (a run continues from its last checkpoint, if it had one)"
            target = f"cannot write {where}" if where else "cannot write the output"
            return f"{target}: {reason}; {advice}", RunFailure.exit_code
        if isinstance(link, pickle.UnpicklingError) or _PICKLE_TEXT.search(str(link)):
            return ("a pickled file was refused (pickles can run code when loaded; break-a-scene loads only "
                    f".safetensors): {first_line(link)}"), RunFailure.exit_code
    hint = f" ({traceback_hint})" if traceback_hint else ""
    return f"{type(error).__name__}: {first_line(error)}{hint}", RunFailure.exit_code
