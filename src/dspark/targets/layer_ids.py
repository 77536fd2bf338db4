"""Which target layers feed a drafter: validation and DeepSpec-style defaults (pure functions).

Layer id `i` is the raw output of decoder layer `i` (HF `hidden_states[i + 1]`); `-1` is the embedding
output. The last decoder layer is not allowed: HF returns it after the final norm, so it is not the
raw layer output a drafter was trained on.
"""

from __future__ import annotations

from dspark.errors import IncompatibleModelsError


def validate_layer_ids(layer_ids: list[int], num_target_layers: int) -> list[int]:
    """Check ids are strictly increasing and in {-1} ∪ [0, N-2]; return them as ints."""
    ids = [int(i) for i in layer_ids]
    if not ids:
        raise IncompatibleModelsError("target_layer_ids must not be empty")
    last = num_target_layers - 1
    for i in ids:
        if i == last:
            raise IncompatibleModelsError(
                f"target_layer_ids contains {i}, the target's last layer (it has {num_target_layers} layers); "
                "HF returns the last layer after the final norm, so it cannot be used. Use ids in [-1, "
                f"{num_target_layers - 2}]"
            )
        if not (i == -1 or 0 <= i < last):
            raise IncompatibleModelsError(
                f"target_layer_id {i} is out of range: allowed are -1 (embeddings) and 0..{num_target_layers - 2}"
            )
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise IncompatibleModelsError(f"target_layer_ids must be strictly increasing, got {ids}")
    return ids


def default_layer_ids(num_target_layers: int, num_layers: int = 5) -> list[int]:
    """Spread `num_layers` ids over depth like DeepSpec ([1, 9, 17, 25, 33] for 36 layers).

    The rule: start at 1, end at N-3, evenly spaced, rounded. Small targets fall back to distinct ids.
    """
    usable = num_target_layers - 1  # ids 0..N-2
    if usable <= 0:
        raise IncompatibleModelsError(f"a target with {num_target_layers} layer(s) has no usable feature layer")
    num_layers = min(num_layers, usable)
    lo, hi = (1, num_target_layers - 3) if num_target_layers - 3 > 1 else (0, usable - 1)
    if num_layers == 1:
        return [hi]
    ids = sorted({round(lo + k * (hi - lo) / (num_layers - 1)) for k in range(num_layers)})
    candidates = [i for i in range(usable) if i not in ids]
    while len(ids) < num_layers:  # rounding collided on a shallow target
        ids = sorted(ids + [candidates.pop(0)])
    return ids
