"""The token-id check run when a prepared directory's shards are opened (``load_prepared``).

Every id in the shards must be below the vocabulary size, taken as the smaller of

* ``index.json``'s ``vocab_size``: training builds the model's embedding from it, and UL2's mode
  tokens and sentinels take the ids right above it (an id there in a shard would read as a UL2
  token; an id past the embedding is an index error, a device assert on CUDA), and
* the number of ids in ``tokenizer.json`` (read as JSON, so no ``tokenizers`` package is needed):
  the one that decodes them, which may have been swapped for a smaller one.

Cost: ``index.json`` records each shard's largest id (``"max_id"``, written while preparing), so
the check reads no shard. A directory prepared before that was recorded has its shards read
once, with numpy, when opened, and ``PreparedData.notes`` says so. After the check,
``ShardedTokens`` also refuses any read that meets an out-of-range id (shards edited later).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megaraptr.data.shards import ShardedTokens
from megaraptr.errors import DataError


def tokenizer_ids(path: Path) -> int:
    """The number of token ids a ``tokenizer.json`` has (largest id + 1, added tokens included).

    Args:
        path: The file.

    Returns:
        The count.

    Raises:
        DataError: The file is unreadable or not a tokenizer.
    """
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        vocab = spec["model"]["vocab"]
        ids = [len(vocab) - 1] if isinstance(vocab, list) else [int(i) for i in vocab.values()]
        ids += [int(t["id"]) for t in spec.get("added_tokens") or []]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError, AttributeError) as err:
        raise DataError(f"data: {path}: not a tokenizers tokenizer.json "
                        f"({type(err).__name__}: {err})") from None
    return max(ids, default=-1) + 1


def check_token_ids(directory: Path, index: dict[str, Any], vocab_size: int,
                    tokenizer: Path, splits: dict[str, ShardedTokens]) -> list[str]:
    """Checks the shards' largest ids against the vocabulary, then arms the read check.

    Args:
        directory: The prepared directory.
        index: Its ``index.json`` content.
        vocab_size: ``index.json``'s ``vocab_size``.
        tokenizer: Its ``tokenizer.json``.
        splits: The opened splits by name.

    Returns:
        Notes for ``PreparedData.notes`` (one when shards had to be read).

    Raises:
        DataError: A shard holds an id at or above the vocabulary size (the message names the
            file, the id and both sizes), or a recorded ``max_id`` is malformed.
    """
    tok_ids = tokenizer_ids(tokenizer)
    limit = min(vocab_size, tok_ids)
    read = 0
    for name, tokens in splits.items():
        entries = [s for s in index["splits"][name]["shards"] if int(s["tokens"])]
        for entry, path, ids in zip(entries, tokens.files, tokens.shards):
            if entry.get("max_id") is None:
                largest, read = int(ids.max()), read + 1
            elif isinstance(entry["max_id"], int):
                largest = entry["max_id"]
            else:
                raise DataError(f"data: {directory / 'index.json'}: bad max_id "
                                f"{entry['max_id']!r} for {path.name}; prepare the data again")
            if largest >= limit:
                raise DataError(
                    f"data: {path}: largest token id {largest} is outside the vocabulary of "
                    f"{limit} ids (index.json vocab_size {vocab_size}, {tokenizer.name} "
                    f"{tok_ids} ids); prepare the data again with the tokenizer to be used")
        tokens.id_limit = limit
    if not read:
        return []
    return [f"token ids checked against the vocabulary by reading {read} shard(s) once "
            f"(index.json records no largest id; preparing again records it)"]
