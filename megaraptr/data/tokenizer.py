"""Tokenizers: training a WordPiece (masked LM) or byte-level BPE (causal LM) tokenizer, loading
a given ``tokenizer.json``, and finding the special token ids a data kind needs.

* ``mlm`` -> WordPiece, BERT style: lowercased, accents stripped, BERT pre-tokenizer, special
  tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4 when trained here).
* ``causal`` -> byte-level BPE, GPT-2 style: special tokens ``<|endoftext|>`` (id 0) and
  ``<|pad|>`` (id 1). A loaded tokenizer without ``<|pad|>`` pads with ``<|endoftext|>``.
  UL2's mode tokens and sentinels are in no tokenizer: they take the ids right above the
  vocabulary when ``--objective ul2`` asks for them (``ul2.py``; ``add_ul2_tokens`` to decode).

Training is deterministic: the same texts in the same order give the same ``tokenizer.json``,
in any process (see ``_train_wordpiece`` for what that takes with WordPiece).

Long texts are trained on and encoded in pieces of at most ``PIECE_CHARS`` characters
(``token_pieces``), which bounds the tokenizer's memory (it needs ~150 bytes per character of
one call's text); the pieces give the same ids as the whole text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from megaraptr.errors import ConfigError, DataError

try:  # reading prepared data needs no tokenizer: a GPU machine may lack the package
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
except ImportError:  # pragma: no cover - depends on the installation
    Tokenizer = decoders = models = normalizers = pre_tokenizers = trainers = None

KINDS = ("mlm", "causal")
TOKENIZER_KINDS = {"mlm": "wordpiece", "causal": "bpe"}
KIND_NAMES = {"mlm": "masked LM", "causal": "causal LM"}
WORDPIECE_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]",
                      "mask": "[MASK]"}
BPE_SPECIALS = {"eos": "<|endoftext|>", "pad": "<|pad|>"}
MIN_VOCAB_SIZE = 260
MAX_VOCAB_SIZE = 2**32 - 1
PIECE_CHARS = 1 << 18


def token_pieces(text: str, limit: int | None = None) -> list[str]:
    """Cuts a long text into pieces that tokenize like the whole text.

    A cut is put just before the last single space between two non-space characters in the
    second half of a ``limit``-character window (both built-in pre-tokenizers, BERT's and
    byte-level BPE's, start a new word at such a space, and their normalizers are per
    character, so the ids are the same as for the whole text); a window without one is cut at
    its last whitespace, else at ``limit`` (text that is not words; ids there may differ).

    Args:
        text: The text.
        limit: Largest piece, in characters (default ``PIECE_CHARS``).

    Returns:
        Pieces that join to ``text``: ``[text]`` when it is at most ``limit`` characters.
    """
    limit = limit or PIECE_CHARS
    pieces, start = [], 0
    while len(text) - start > limit:
        lo, hi = start + limit // 2, start + limit
        at = text.rfind(" ", lo, hi)
        while at >= lo and (text[at - 1].isspace() or text[at + 1].isspace()):
            at = text.rfind(" ", lo, at)
        if at < lo:
            at = max(text.rfind(c, lo, hi) for c in " \n\t")
        end = at if at >= lo else hi
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def check_settings(kind: str, vocab_size: int) -> None:
    """Checks a data kind and vocabulary size.

    Args:
        kind: ``"mlm"`` or ``"causal"``.
        vocab_size: Wanted vocabulary size.

    Raises:
        ConfigError: Either is out of range.
    """
    if kind not in KINDS:
        raise ConfigError("kind", f"must be 'mlm' or 'causal', not {kind!r}")
    if not isinstance(vocab_size, int) or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError("vocab_size", f"must be an integer from {MIN_VOCAB_SIZE} to "
                          f"{MAX_VOCAB_SIZE}, not {vocab_size!r}")


def _need_tokenizers() -> None:
    if Tokenizer is None:
        raise DataError("data: training or loading a tokenizer needs the tokenizers package "
                        "(pip install tokenizers); prepared data reads without it")


def _bare_wordpiece(vocab: dict[str, int] | None = None) -> Tokenizer:
    """A BERT-style WordPiece tokenizer (untrained when ``vocab`` is None)."""
    _need_tokenizers()
    model = models.WordPiece(vocab or {}, unk_token="[UNK]", continuing_subword_prefix="##")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _train_wordpiece(texts: Iterable[str], vocab_size: int, show_progress: bool) -> Tokenizer:
    """Trains WordPiece deterministically (reads ``texts`` twice).

    The trainer numbers the ``##c`` continuation characters in hash-map order, and merge ties
    are broken by id, so plain training differs from process to process. Registering every
    ``##c`` up front (as temporary special tokens, in sorted order) fixes all ids; the result
    is then rebuilt with only the real special tokens and a canonical numbering (special
    tokens first, then the rest sorted).
    """
    bare = _bare_wordpiece()
    alphabet: set[str] = set()
    for text in texts:
        alphabet.update(bare.normalizer.normalize_str(text))
    alphabet.discard(" ")
    specials = list(WORDPIECE_SPECIALS.values())
    continuation = ["##" + c for c in sorted(alphabet)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials + continuation,
        continuing_subword_prefix="##", show_progress=show_progress)
    bare.train_from_iterator(texts, trainer)
    vocab = bare.get_vocab(with_added_tokens=False)
    rest = sorted(t for t in vocab if t not in WORDPIECE_SPECIALS.values())
    tok = _bare_wordpiece({t: i for i, t in enumerate(specials + rest)})
    tok.add_special_tokens(specials)
    return tok


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, *,
                    show_progress: bool = False) -> Tokenizer:
    """Trains the tokenizer for a data kind.

    Args:
        texts: Training documents. WordPiece training reads them twice, so pass a list or
            another re-iterable (a one-shot iterator is copied into a list).
        kind: ``"mlm"`` (WordPiece) or ``"causal"`` (byte-level BPE).
        vocab_size: Target vocabulary size, special tokens included (a small corpus may give
            fewer).
        show_progress: Show the ``tokenizers`` progress bar.

    Returns:
        The trained tokenizer.
    """
    check_settings(kind, vocab_size)
    _need_tokenizers()
    if kind == "mlm":
        if iter(texts) is texts:
            texts = list(texts)
        return _train_wordpiece(texts, vocab_size, show_progress)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a ``tokenizer.json``.

    Args:
        path: The file.

    Returns:
        The tokenizer.

    Raises:
        DataError: The file is missing or not a tokenizer.
    """
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise DataError(f"data: {p}: no such tokenizer file")
    _need_tokenizers()
    try:
        return Tokenizer.from_file(str(p))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"data: {p}: not a tokenizers tokenizer.json ({first})") from None


def special_ids(tok: Tokenizer, kind: str, source: str) -> dict[str, int]:
    """Finds the special token ids a data kind needs.

    Args:
        tok: The tokenizer.
        kind: ``"mlm"`` or ``"causal"``.
        source: Where the tokenizer came from, for messages.

    Returns:
        For ``mlm``: ``pad``, ``unk``, ``cls``, ``sep``, ``mask``; for ``causal``: ``eos``,
        ``pad`` (the eos id when the tokenizer has no ``<|pad|>``).

    Raises:
        DataError: A required token is missing.
    """
    names = WORDPIECE_SPECIALS if kind == "mlm" else BPE_SPECIALS
    ids: dict[str, int] = {}
    for key, token in names.items():
        token_id = tok.token_to_id(token)
        if token_id is None:
            if kind == "causal" and key == "pad":
                token_id = ids["eos"]
            else:
                raise DataError(f"data: {source}: tokenizer has no {token} token, needed for "
                                f"{KIND_NAMES[kind]} ({kind}) data")
        ids[key] = token_id
    return ids


def all_special_ids(tok: Tokenizer, named: dict[str, int]) -> list[int]:
    """Lists every special token id: the named ones and the tokenizer's own special tokens.

    Args:
        tok: The tokenizer.
        named: Ids from ``special_ids``.

    Returns:
        Sorted distinct ids (never masked, never drawn as random MLM replacements).
    """
    own = {i for i, added in tok.get_added_tokens_decoder().items() if added.special}
    return sorted(own | set(named.values()))


def separator_name(kind: str) -> str:
    """Names the special id that separates documents in a token stream.

    Args:
        kind: ``"mlm"`` or ``"causal"``.

    Returns:
        ``"sep"`` for mlm, ``"eos"`` for causal.
    """
    return "sep" if kind == "mlm" else "eos"
