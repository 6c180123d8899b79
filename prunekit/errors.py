"""Exceptions that carry enough context for a user to act on them."""


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class UnknownNameError(PrunekitError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(PrunekitError, FileNotFoundError):
    """A local data file or package is missing; the message says what and where."""


class CheckpointError(PrunekitError):
    """A checkpoint is corrupted or does not match the architecture."""


class ConfigError(PrunekitError, ValueError):
    """A malformed config, plan or option value."""


class UnsupportedOperationError(PrunekitError):
    """The engine met an operation whose channel semantics it does not know."""


class StageSettingsChanged(ConfigError):
    """A recipe's run folder holds a stage made under other settings; the message names each changed key."""


class ExportError(UnsupportedOperationError):
    """An exporter (ONNX, torch.export) refused the model or produced different outputs; the message says which."""
