"""Conversations -> token ids with a loss mask on the assistant spans (and generation prompts).

`ChatFormatter` wraps a tokenizer. When the tokenizer has a chat template (`tokenizer.chat_template`)
the template renders the conversation; otherwise the documented PLAIN template below is used.

Loss spans (template case). For each assistant message `i` the formatter renders the conversation up
to `i` with the generation prompt (`before`) and up to and including `i` (`upto`). When both are
prefixes of the whole rendering, the assistant span is `upto[len(before):]` without trailing
whitespace: the answer plus the template's end-of-turn marker (e.g. `<|im_end|>`), which the drafter
must learn to predict. Templates that rewrite history (Qwen3 drops earlier reasoning blocks) break the
prefix property; then the answer text is located in the rendering and extended by the end-of-turn
marker probed once from the template. The text is cut at span boundaries and each piece is tokenized
on its own (`add_special_tokens=False`), which is exactly how the target sees a prompt and then its own
generated tokens at inference time.

PLAIN template (tokenizers without a chat template; BOS first when the tokenizer adds one, EOS as id):

    System:\\n{system}\\n\\nUser:\\n{user}\\n\\nAssistant:\\n{answer}<EOS>\\n\\nUser:\\n...

The loss covers `{answer}<EOS>`; the generation prompt for a turn ends with `Assistant:\\n`.

Documents (`{"text": ...}`) are tokenized whole, BOS first and EOS last when the tokenizer has them;
every token is a loss token.
"""

from __future__ import annotations

from typing import Any

from dspark.errors import DataError

Message = dict[str, str]

PLAIN_ROLE_HEADERS = {"system": "System:\n", "user": "User:\n", "assistant": "Assistant:\n"}
PLAIN_TURN_SEPARATOR = "\n\n"
_PROBE_ANSWER = "\u2063dspark-probe-answer\u2063"


def _plain_header(role: str) -> str:
    if role not in PLAIN_ROLE_HEADERS:
        raise DataError(f"role {role!r} is not one of {sorted(PLAIN_ROLE_HEADERS)}")
    return PLAIN_ROLE_HEADERS[role]


class ChatFormatter:
    """Tokenizes conversations, prompts and documents for one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        if tokenizer is None:
            raise DataError("text data needs a tokenizer; this target has none (use pre-tokenized "
                            "records with an 'input_ids' field instead)")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.bos_prefix = self._bos_prefix()
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.end_marker = self._probe_end_marker() if self.has_template else ""

    # -- tokenizer helpers --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _bos_prefix(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            return []
        ids = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        return [int(bos)] if ids and ids[0] == bos else []

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
        )

    def _probe_end_marker(self) -> str:
        """The text a template puts after an answer (e.g. `<|im_end|>`), without trailing whitespace."""
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE_ANSWER}], False)
        except Exception:  # a template that cannot render the probe simply has no known marker
            return ""
        at = text.rfind(_PROBE_ANSWER)
        return text[at + len(_PROBE_ANSWER):].rstrip() if at >= 0 else ""

    # -- conversations -----------------------------------------------------------------------------
    def encode_conversation(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        """`(input_ids, loss_mask)` for a whole conversation; loss on assistant answers only."""
        if self.has_template:
            return self._encode_with_template(messages)
        return self._encode_plain(messages)

    def _encode_with_template(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        full = self._render(messages, False)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = self._prefix_span(messages, i, full, cursor) or self._located_span(message["content"], full, cursor)
            if span is None:
                raise DataError(f"the chat template does not reproduce assistant message {i} verbatim; "
                                "cannot place its loss mask")
            spans.append(span)
            cursor = span[1]
        ids: list[int] = []
        mask: list[int] = []
        start = 0
        for lo, hi in spans:
            for text, loss in ((full[start:lo], 0), (full[lo:hi], 1)):
                piece = self.encode(text)
                ids += piece
                mask += [loss] * len(piece)
            start = hi
        tail = self.encode(full[start:])
        return ids + tail, mask + [0] * len(tail)

    def _prefix_span(self, messages: list[Message], i: int, full: str, cursor: int) -> tuple[int, int] | None:
        try:
            before = self._render(messages[:i], True) if i > 0 else ""
            upto = self._render(messages[: i + 1], False)
        except Exception:
            return None
        if not (full.startswith(before) and full.startswith(upto) and cursor <= len(before) <= len(upto)):
            return None
        end = len(upto.rstrip())
        return (len(before), end) if end > len(before) else None

    def _located_span(self, content: str, full: str, cursor: int) -> tuple[int, int] | None:
        at = full.find(content, cursor) if content else -1
        if at < 0:
            return None
        end = at + len(content)
        rest = full[end:]
        stripped = rest.lstrip()
        if self.end_marker and stripped.startswith(self.end_marker):
            end += len(rest) - len(stripped) + len(self.end_marker)
        return at, end

    def _encode_plain(self, messages: list[Message], open_answer: bool = False) -> tuple[list[int], list[int]]:
        """PLAIN template; `open_answer` ends with the header of a new assistant turn (a prompt)."""
        ids = list(self.bos_prefix)
        mask = [0] * len(ids)
        pending = ""  # non-loss text not yet tokenized
        for message in messages:
            pending += _plain_header(message["role"])
            if message["role"] != "assistant":
                pending += message["content"] + PLAIN_TURN_SEPARATOR
                continue
            head = self.encode(pending)
            answer = self.encode(message["content"]) + ([int(self.eos_id)] if self.eos_id is not None else [])
            ids += head + answer
            mask += [0] * len(head) + [1] * len(answer)
            pending = PLAIN_TURN_SEPARATOR
        if open_answer:
            pending += PLAIN_ROLE_HEADERS["assistant"]
        if open_answer or (messages and messages[-1]["role"] != "assistant"):
            tail = self.encode(pending)
            ids += tail
            mask += [0] * len(tail)
        return ids, mask

    # -- prompts and documents ---------------------------------------------------------------------
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the prompt that asks the model for the next assistant message."""
        if self.has_template:
            return self.encode(self._render(messages, True))
        return self._encode_plain(messages, open_answer=True)[0]

    def encode_document(self, text: str) -> list[int]:
        """A plain document: BOS (when the tokenizer adds one) + text + EOS (when it has one)."""
        eos = [int(self.eos_id)] if self.eos_id is not None else []
        return list(self.bos_prefix) + self.encode(text) + eos
