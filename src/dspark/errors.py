"""Exceptions with messages a user can act on. The CLI prints them as one line and exits non-zero."""


class DSparkError(Exception):
    """Base class: anything wrong with the user's input, files or configuration."""


class ConfigError(DSparkError, ValueError):
    """A config file or value is missing, malformed or inconsistent."""


class CheckpointError(DSparkError, ValueError):
    """A checkpoint directory is missing, unreadable or in no format we know."""


class IncompatibleModelsError(DSparkError, ValueError):
    """The drafter does not fit the target (hidden size, vocabulary, layer ids)."""


class UnsupportedModelError(DSparkError, ValueError):
    """The target architecture cannot be used (no hidden states, not a causal LM)."""


class DataError(DSparkError, ValueError):
    """A data file (JSONL, cache shard, index) is malformed or corrupt."""
