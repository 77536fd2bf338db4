"""Reference targets: small LMs we train ourselves, since no pretrained weights can be downloaded.

Flow: `corpus` (local Python sources → deduplicated train/validation/test splits) → `prompts`
(held-out prompt sets, chat documents) → `tokenizer` (byte-level BPE, HF format) → `packing`
(token streams) → `pretrain` (Qwen3 causal LM, sizes in `presets`). Driven by `dspark data corpus`,
`dspark tokenizer`, `dspark pretrain` and `recipes/reference_target.sh`.
"""
