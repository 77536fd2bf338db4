"""Regenerated training data for pretrained (non-chat) targets: the target continues document prefixes.

Drafters learn best from the target's own outputs (SPEC §2.5 regenerates every answer). For a base
language model the analogue of "answer the prompt" is "continue the document": take a window of
`prompt_tokens` from each document, let the target sample `new_tokens` more, and train on the
continuation only (loss mask 0 on the prompt, 1 on the continuation). Output lines are
`{"id", "input_ids", "loss_mask"}`, the pre-tokenized record type `dspark.train.data` reads.

    python -m dspark.train.continuations --target DIR --prompts prompts.jsonl --out data.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)


def prompt_windows(token_lists: Iterable[list[int]], prompt_tokens: int, seed: int = 0) -> list[list[int]]:
    """One random window of `prompt_tokens` per document long enough to hold it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for ids in token_lists:
        if len(ids) > prompt_tokens:
            start = int(torch.randint(0, len(ids) - prompt_tokens + 1, (1,), generator=g))
            out.append(list(ids[start: start + prompt_tokens]))
    return out


@torch.no_grad()
def regenerate_continuations(target: Any, prompts: list[list[int]], out_path: str | Path, new_tokens: int = 192,
                             batch_size: int = 256, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """Sample continuations in equal-length batches; write JSONL atomically (temp file + rename)."""
    out_path = Path(out_path)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    eos = target.token_id("eos_token_id")
    torch.manual_seed(seed)
    kept = tokens = 0
    with tmp.open("w") as f:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start: start + batch_size]
            width = len(chunk[0])
            if any(len(p) != width for p in chunk):
                raise ValueError("prompt windows must share one length")
            ids = torch.tensor(chunk, device=target.device)
            out = target.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                                        temperature=temperature if temperature > 0 else None, top_p=top_p, top_k=0,
                                        max_new_tokens=new_tokens, min_new_tokens=1, eos_token_id=eos,
                                        pad_token_id=eos if eos is not None else 0)
            for i, row in enumerate(out[:, width:].tolist()):
                if eos is not None and eos in row:
                    row = row[: row.index(eos) + 1]
                if len(row) < 2:
                    continue
                f.write(json.dumps({"id": start + i, "input_ids": chunk[i] + row,
                                    "loss_mask": [0] * width + [1] * len(row)}) + "\n")
                kept += 1
                tokens += len(row)
            log.info("regenerated %d/%d", min(start + batch_size, len(prompts)), len(prompts))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out_path)
    return {"samples": kept, "continuation_tokens": tokens, "temperature": temperature, "top_p": top_p,
            "new_tokens": new_tokens, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    from dspark.targets import load_target

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--prompts", required=True, help="JSONL with {'input_ids': [...]} prompt windows of one length")
    p.add_argument("--out", required=True)
    p.add_argument("--new-tokens", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    target = load_target(a.target, device=a.device)
    prompts = [json.loads(line)["input_ids"] for line in Path(a.prompts).read_text().splitlines() if line.strip()]
    stats = regenerate_continuations(target, prompts, a.out, a.new_tokens, a.batch_size, a.temperature, a.top_p, a.seed)
    Path(a.out + ".meta.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
