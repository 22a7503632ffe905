"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""


class BreakASceneError(ValueError):
    """Base class for every user-facing error of break-a-scene."""


class SceneError(BreakASceneError):
    """The photo or its masks cannot be used (unreadable, wrong size, empty, ...)."""


class ConfigError(BreakASceneError):
    """The options contradict each other or name something that does not exist."""


class RunError(BreakASceneError):
    """An output/run folder is missing, incomplete, or would be overwritten."""


class SceneWarning(UserWarning):
    """The photo or its masks can be used, but probably not as the user intended (tiny or cropped concept)."""
