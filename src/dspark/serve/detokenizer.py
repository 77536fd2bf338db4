"""`TextStream`: one choice's output tokens -> text deltas that are never taken back, stop strings cut.

Each update decodes every output token so far (`skip_special_tokens`, so EOS and end-of-turn markers
do not show) and emits only what can no longer change: a trailing U+FFFD (a multi-byte character cut
between tokens) and a tail that could still grow into a stop string are held back until the next
tokens or the end. The concatenated deltas therefore equal the final text, which is what a
non-streamed response returns for the same tokens.
"""

from __future__ import annotations

from typing import Any


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.sent = ""  # text emitted so far
        self.stopped = False  # a stop string was found (the text is cut before it)

    def decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def update(self, token_ids: list[int], finished: bool) -> str:
        """The new text after this step's tokens (`finished`: nothing more will come)."""
        if self.stopped:
            return ""
        text = self.decode(token_ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        if not (finished or self.stopped):
            text = text.rstrip("\ufffd")
            text = text[: len(text) - _stop_prefix_len(text, self.stop)]
        if len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent):]
        self.sent += delta
        return delta
