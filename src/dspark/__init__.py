"""dspark: DSpark speculative decoding (drafters, lossless verification, scheduling, training, serving).

Public API: `load_target`, `load_drafter`, `SpeculativeDecoder`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_target", "load_drafter", "SpeculativeDecoder", "__version__"]


def __getattr__(name: str):  # lazy: `import dspark` stays cheap for the CLI's --help
    if name == "load_target":
        from dspark.targets import load_target

        return load_target
    if name == "load_drafter":
        from dspark.formats import load_drafter

        return load_drafter
    if name == "SpeculativeDecoder":
        from dspark.engine.decoder import SpeculativeDecoder

        return SpeculativeDecoder
    raise AttributeError(f"module 'dspark' has no attribute {name!r}")
