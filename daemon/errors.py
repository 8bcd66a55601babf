"""Typed errors a user can hit; the CLI prints them as one line and exits 2."""


class IntentdError(Exception):
    """An expected failure with a message fit for one line: what, which thing, what to do."""


class AudioFileError(IntentdError):
    """A WAV file that cannot be read as audio."""


class AudioDeviceError(IntentdError):
    """A capture device that cannot be found or opened."""


class ModelError(IntentdError):
    """A checkpoint folder that cannot be loaded or does not fit the task."""


class ConfigError(IntentdError):
    """A config file or flag with a bad key or value."""
