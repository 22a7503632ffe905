"""The errors a user sees: each becomes one line on stderr. Bad input exits 2, a failure while running exits 1."""


class BreakASceneError(ValueError):
    """Base class for every user-facing error of break-a-scene: the input is wrong (exit status 2)."""

    exit_code = 2


class SceneError(BreakASceneError):
    """The photo or its masks cannot be used (unreadable, wrong size, empty, ...)."""


class ConfigError(BreakASceneError):
    """The options contradict each other or name something that does not exist."""


class RunError(BreakASceneError):
    """An output/run folder is missing, incomplete, damaged, busy, or would be overwritten."""


class RunFailure(BreakASceneError):
    """The input was fine but running failed: a full disk, a read-only folder, a loss that became non-finite
    (exit status 1). The message says what to do, e.g. resume from the last checkpoint."""

    exit_code = 1


class SceneWarning(UserWarning):
    """The photo or its masks can be used, but probably not as the user intended (tiny or cropped concept)."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to paragraphs), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
