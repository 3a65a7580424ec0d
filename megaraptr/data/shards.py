"""Token shards: flat binary files of token ids, written in order and read back memory-mapped.

A split's token stream is stored as ``<split>_00000.bin``, ``<split>_00001.bin``, ... holding
the ids back to back in native byte order (little-endian on every supported machine), as
``uint16`` when the vocabulary has fewer than 65536 entries, else ``uint32``. A shard holds at
most ``max_tokens`` ids; the stream simply continues in the next one (documents may span
shards). The writer records each shard's largest id (``index.json``'s ``"max_id"``).
``ShardedTokens`` presents the shards of a split as one read-only sequence; given the
vocabulary size (``id_limit``), it refuses any read that meets an id at or above it, so a shard
edited after preparing fails with one line naming the file instead of an embedding-lookup
error (a device assert on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from megaraptr.errors import DataError

DEFAULT_SHARD_TOKENS = 64 * 1024 * 1024


def token_dtype(vocab_size: int) -> np.dtype:
    """The on-disk dtype for a vocabulary size.

    Args:
        vocab_size: Number of token ids.

    Returns:
        ``uint16`` below 65536 ids, else ``uint32``.
    """
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def shard_name(split: str, number: int) -> str:
    """The file name of a shard.

    Args:
        split: ``"train"`` or ``"val"``.
        number: Shard number, from 0.

    Returns:
        E.g. ``"train_00000.bin"``.
    """
    return f"{split}_{number:05d}.bin"


class ShardWriter:
    """Appends token ids to a split's shards, starting a new shard when one is full.

    Args:
        out_dir: Directory to write into.
        split: Split name, the file name prefix.
        dtype: Token dtype (see ``token_dtype``).
        max_tokens: Largest number of tokens in one shard.
    """

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype,
                 max_tokens: int = DEFAULT_SHARD_TOKENS):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {max_tokens}")
        self.out_dir, self.split, self.dtype, self.max_tokens = out_dir, split, dtype, max_tokens
        self.shards: list[dict] = []  # {"file": name, "tokens": count, "max_id": largest id}
        self.documents = 0
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        """Appends ids to the stream.

        Args:
            ids: 1-D array of token ids (any integer dtype; values must fit ``dtype``).
        """
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        while ids.size:
            if self._file is None or self.shards[-1]["tokens"] == self.max_tokens:
                self._next_shard()
            room = self.max_tokens - self.shards[-1]["tokens"]
            chunk, ids = ids[:room], ids[room:]
            self._file.write(chunk.tobytes())
            self.shards[-1]["tokens"] += int(chunk.size)
            self.shards[-1]["max_id"] = max(self.shards[-1]["max_id"], int(chunk.max()))

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        name = shard_name(self.split, len(self.shards))
        self._file = open(self.out_dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0, "max_id": -1})

    def close(self) -> dict:
        """Finishes writing.

        Returns:
            The split's index entry: ``{"shards": [...], "tokens": n, "documents": d}``.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        return {"shards": [dict(s) for s in self.shards],
                "tokens": sum(s["tokens"] for s in self.shards), "documents": self.documents}


class ShardedTokens:
    """A split's shards as one read-only sequence of token ids.

    ``len(t)`` is the token count; ``t[i]`` an id; ``t[a:b]`` (step 1) an ``np.ndarray`` that is
    a memory-mapped view when it lies in one shard and a copy when it spans shards.

    Args:
        directory: Directory holding the shards.
        shards: ``(file name, token count)`` pairs in stream order.
        dtype: Token dtype.
    """

    def __init__(self, directory: Path, shards: Iterable[tuple[str, int]], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.id_limit: int | None = None  # set by load_prepared: the vocabulary size
        self.files: list[Path] = []  # the non-empty shards, as _maps
        self._maps: list[np.ndarray] = []
        starts = [0]
        for name, count in shards:
            path = directory / name
            expected = count * self.dtype.itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != expected:
                found = "missing" if size is None else f"{size} bytes"
                raise DataError(f"data: {path}: {found}, index.json says {count} tokens "
                                f"({expected} bytes); prepare the data again")
            if count:
                self._maps.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(count,)))
                self.files.append(path)
                starts.append(starts[-1] + count)
        self._starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shards(self) -> Sequence[np.ndarray]:
        """The per-shard memory maps, in stream order."""
        return tuple(self._maps)

    def __getitem__(self, key: int | slice) -> np.ndarray | int:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("ShardedTokens slices must have step 1")
            return self.read(start, max(0, stop - start))
        index = int(key) + (n if key < 0 else 0)
        if not 0 <= index < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return int(self._checked(shard, self._maps[shard][index - self._starts[shard]:][:1])[0])

    def _checked(self, shard: int, ids: np.ndarray) -> np.ndarray:
        """``ids`` (read from ``shard``), after checking them against ``id_limit``."""
        if self.id_limit is not None and ids.size and int(ids.max()) >= self.id_limit:
            raise DataError(f"data: {self.files[shard]}: holds token id {int(ids.max())}, "
                            f"outside the vocabulary of {self.id_limit} ids (edited after "
                            f"preparing?); prepare the data again")
        return ids

    def read(self, start: int, length: int) -> np.ndarray:
        """Reads ``length`` ids from position ``start``.

        Args:
            start: First position.
            length: Number of ids; ``start + length`` must not pass the end.

        Returns:
            The ids (a view when in one shard, else a copy).
        """
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) out of range for {len(self)}")
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        offset = start - int(self._starts[first])
        if offset + length <= self._maps[first].shape[0]:
            return self._checked(first, self._maps[first][offset:offset + length])
        parts, left, shard = [], length, first
        while left:
            piece = self._checked(shard, self._maps[shard][offset:offset + left])
            parts.append(piece)
            left -= piece.shape[0]
            shard, offset = shard + 1, 0
        return np.concatenate(parts)
