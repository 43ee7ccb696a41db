"""Image token grids inside flat multimodal sequences: one vocabulary for text tokens and image codes.

Multimodal LLMs that generate images token by token (Chameleon, Chameleon Team 2024; Emu3, Wang et al.
2024; Show-o, Xie et al. 2024; Janus, Wu et al. 2024) put the codes of an image tokenizer into the same
sequence as text, bracketed by begin/end-of-image tokens. ``TokenLayout`` fixes one such layout:

    ... text ... <|image_start|> [<|image_size_h|> <|image_size_w|>]
                 c c ... c <|image_eol|>   (one row of w codes, h rows)
                 ...
                 c c ... c <|image_eol|> <|image_end|> ... text ...

Ids, for a text vocabulary of size V and an image vocabulary of size K:

    [0, V)               text tokens (whatever the text tokenizer produces)
    [V, V + K)           image codes: code c is id V + c
    V + K .. V + K + 3   <|image_start|>, <|image_end|>, <|image_eol|>, <|image_pad|>
    V + K + 4 ..         (size_prefix only) <|image_size_1|> .. <|image_size_N|>, N = max_grid_side

An end-of-row token after every row (Emu3's layout) lets a sequence model see where rows break, so any
aspect ratio survives the round trip without side information; the optional size prefix (two tokens,
height then width, each a dedicated size token) tells a generator the grid's shape before its first code,
as Emu3's textual "h*w" prefix does. One of the two is required: without both the rows cannot be found.

Axis letters: B batch, h/w grid rows/columns, L sequence length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

IdsLike = Any  # a torch integer tensor, a numpy integer array or a list of ints


class SequenceError(ValueError):
    """A token sequence that does not follow its ``TokenLayout`` (names the offending position)."""


@dataclass
class Segment:
    """One piece of a parsed sequence: a run of text tokens or one image."""

    kind: str  # "text" or "image"
    start: int  # position of the first token (the <|image_start|> of an image)
    end: int  # one past the last token (one past the <|image_end|> of an image)
    ids: torch.Tensor  # text: (n,) text ids; image: (h, w) codes in [0, image_vocab_size)


def _as_long_tensor(ids: IdsLike, what: str) -> torch.Tensor:
    """Integer ids of any common container -> torch.long, with a clear error for anything else."""
    if isinstance(ids, np.ndarray):
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{what}: numpy array of dtype {ids.dtype}; expected integer ids")
        ids = torch.from_numpy(ids.astype(np.int64))  # uint16 shards have no torch equivalent op-wise
    elif isinstance(ids, (list, tuple)):
        try:
            ids = torch.tensor(ids, dtype=torch.long)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{what}: could not read the list as integer ids ({err})") from err
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor, numpy array or list of integer ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{what}: ids have dtype {ids.dtype}; expected an integer dtype")
    return ids.long()


@dataclass(frozen=True)
class TokenLayout:
    """Maps image token grids to flat sequences in a shared text + image vocabulary, and back.

    Args:
        image_vocab_size: K, the image tokenizer's codebook size (``ImageTokenizer.vocab_size``).
        text_vocab_size: V, the text tokenizer's vocabulary size (``len(hf_tokenizer)``); image ids start
            there. 0 for image-only sequences.
        eol: put an end-of-row token after every row of codes.
        size_prefix: put two size tokens (rows, then columns) right after <|image_start|>.
        max_grid_side: the largest grid side the size tokens can state (only used with ``size_prefix``).

    Example:
        >>> layout = TokenLayout(image_vocab_size=4096, text_vocab_size=32000)
        >>> seq = layout.to_sequence(torch.randint(0, 4096, (3, 5)))  # (2 + 3 * 6,) long
        >>> [grid] = layout.from_sequence(seq)                         # (3, 5) codes again
    """

    image_vocab_size: int
    text_vocab_size: int = 0
    eol: bool = True
    size_prefix: bool = False
    # 256 covers a 4096 px side at f16 or 2048 px at f8; each side up to it costs one vocabulary entry.
    max_grid_side: int = 256

    SPECIAL_NAMES = ("<|image_start|>", "<|image_end|>", "<|image_eol|>", "<|image_pad|>")

    def __post_init__(self) -> None:
        for name in ("image_vocab_size", "text_vocab_size", "max_grid_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"TokenLayout: {name} must be an int, got {type(value).__name__}")
        if self.image_vocab_size < 1:
            raise ValueError(f"TokenLayout: image_vocab_size must be >= 1, got {self.image_vocab_size}")
        if self.text_vocab_size < 0:
            raise ValueError(f"TokenLayout: text_vocab_size must be >= 0, got {self.text_vocab_size}")
        if self.max_grid_side < 1:
            raise ValueError(f"TokenLayout: max_grid_side must be >= 1, got {self.max_grid_side}")
        if not (self.eol or self.size_prefix):
            raise ValueError(
                "TokenLayout: eol=False needs size_prefix=True, otherwise a grid's rows cannot be recovered"
            )

    # --- ids ------------------------------------------------------------------------------------
    @property
    def image_offset(self) -> int:
        """Id of image code 0 (= text_vocab_size)."""
        return self.text_vocab_size

    @property
    def boi_id(self) -> int:
        return self.text_vocab_size + self.image_vocab_size

    @property
    def eoi_id(self) -> int:
        return self.boi_id + 1

    @property
    def eol_id(self) -> int:
        return self.boi_id + 2

    @property
    def pad_id(self) -> int:
        return self.boi_id + 3

    @property
    def size_offset(self) -> int:
        """Id of <|image_size_1|> (size tokens exist only with ``size_prefix``)."""
        return self.boi_id + len(self.SPECIAL_NAMES)

    @property
    def vocab_size(self) -> int:
        """Text + image + special (+ size) tokens: the embedding table size a model needs."""
        return self.size_offset + (self.max_grid_side if self.size_prefix else 0)

    def size_id(self, side: int) -> int:
        """The id of the size token stating a grid side of ``side`` (1 .. max_grid_side)."""
        if not self.size_prefix:
            raise ValueError("size_id: this layout has no size tokens (size_prefix=False)")
        if not 1 <= side <= self.max_grid_side:
            raise ValueError(f"size_id: grid side {side} is outside 1..{self.max_grid_side} (max_grid_side)")
        return self.size_offset + side - 1

    @property
    def special_tokens(self) -> dict[str, int]:
        """Names -> ids of every non-text, non-code token (begin/end of image, end of row, pad, sizes)."""
        out = {name: self.boi_id + i for i, name in enumerate(self.SPECIAL_NAMES)}
        if self.size_prefix:
            out.update({f"<|image_size_{n}|>": self.size_offset + n - 1 for n in range(1, self.max_grid_side + 1)})
        return out

    def added_tokens(self) -> list[str]:
        """Names of ids ``text_vocab_size .. vocab_size - 1`` in id order: the image codes, then the specials.

        Adding them in this order to a text tokenizer of exactly ``text_vocab_size`` entries
        (``hf_tok.add_tokens(layout.added_tokens(), special_tokens=True)``) gives every one the id this
        layout uses.
        """
        return [f"<|image_{c}|>" for c in range(self.image_vocab_size)] + list(self.special_tokens)

    def describe(self, token: int) -> str:
        """A human-readable name for an id, for error messages."""
        token = int(token)
        if 0 <= token < self.text_vocab_size:
            return f"text token {token}"
        if self.image_offset <= token < self.boi_id:
            return f"image code {token - self.image_offset} (id {token})"
        if self.boi_id <= token < self.size_offset:
            return f"{self.SPECIAL_NAMES[token - self.boi_id]} (id {token})"
        if self.size_offset <= token < self.vocab_size:
            return f"<|image_size_{token - self.size_offset + 1}|> (id {token})"
        return f"id {token}, outside the vocabulary [0, {self.vocab_size})"

    def sequence_length(self, height: int, width: int) -> int:
        """Tokens ``to_sequence`` produces for an (height, width) grid."""
        return 2 + (2 if self.size_prefix else 0) + height * width + (height if self.eol else 0)

    # --- grids -> sequences ---------------------------------------------------------------------
    def _check_grid(self, ids: IdsLike, what: str) -> torch.Tensor:
        ids = _as_long_tensor(ids, what)
        if ids.ndim not in (2, 3) or ids.shape[-1] == 0 or ids.shape[-2] == 0:
            raise ValueError(f"{what}: ids of shape {tuple(ids.shape)}; expected a grid (h, w) or a batch (B, h, w)")
        h, w = ids.shape[-2:]
        if self.size_prefix and max(h, w) > self.max_grid_side:
            raise ValueError(
                f"{what}: grid {h} x {w} has a side longer than max_grid_side={self.max_grid_side}; "
                "build the layout with a larger max_grid_side"
            )
        bad = (ids < 0) | (ids >= self.image_vocab_size)
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{what}: id {int(ids[where])} at index {where} is outside the image vocabulary "
                f"[0, {self.image_vocab_size})"
            )
        return ids

    def to_sequence(self, ids: IdsLike) -> torch.Tensor:
        """A grid of image codes -> its flat token sequence (same device as ``ids``).

        Args:
            ids: integer codes in [0, image_vocab_size), shape (h, w); a batch (B, h, w) gives (B, L).

        Returns:
            torch.long (L,) with L = ``sequence_length(h, w)`` (or (B, L) for a batch).
        """
        ids = self._check_grid(ids, "to_sequence")
        single = ids.ndim == 2
        grid = ids[None] if single else ids  # (B, h, w)
        batch, h, w = grid.shape
        codes = grid + self.image_offset  # (B, h, w) ids in [V, V + K)
        if self.eol:
            eol = codes.new_full((batch, h, 1), self.eol_id)
            codes = torch.cat([codes, eol], dim=2)  # (B, h, w + 1)
        body = codes.reshape(batch, -1)  # (B, h * (w [+ 1])), raster order
        prefix = [self.boi_id] + ([self.size_id(h), self.size_id(w)] if self.size_prefix else [])
        head = torch.tensor(prefix, dtype=torch.long, device=codes.device).expand(batch, -1)  # (B, 1 or 3)
        tail = codes.new_full((batch, 1), self.eoi_id)  # (B, 1)
        seq = torch.cat([head, body, tail], dim=1)  # (B, L)
        return seq[0] if single else seq

    def interleave(self, parts: Sequence[IdsLike]) -> torch.Tensor:
        """Text token runs (1-D) and image grids (2-D) -> one flat sequence, in the order given.

        Args:
            parts: each a 1-D run of text ids in [0, text_vocab_size) or a 2-D (h, w) grid of image codes.
        """
        pieces = []
        for i, part in enumerate(parts):
            t = _as_long_tensor(part, f"interleave: part {i}")
            if t.ndim == 1:
                bad = (t < 0) | (t >= self.text_vocab_size)
                if bad.any():
                    p = int(bad.nonzero()[0])
                    raise ValueError(
                        f"interleave: part {i} (text) has id {int(t[p])} at index {p}, outside the text "
                        f"vocabulary [0, {self.text_vocab_size})"
                    )
                pieces.append(t.cpu())
            elif t.ndim == 2:
                pieces.append(self.to_sequence(t).cpu())
            else:
                raise ValueError(
                    f"interleave: part {i} has shape {tuple(t.shape)}; expected 1-D text ids or a 2-D (h, w) grid"
                )
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)

    # --- sequences -> grids ---------------------------------------------------------------------
    def parse(self, seq: IdsLike) -> list[Segment]:
        """Split a sequence into text runs and images; padding (<|image_pad|>) at either end is skipped.

        Raises a ``SequenceError`` naming the position of the first token that breaks the layout: an
        <|image_end|> without a start, a nested <|image_start|>, an image without an end, a row of the
        wrong length, a token that is not an image code inside an image, or an image token outside one.
        """
        seq = _as_long_tensor(seq, "from_sequence").cpu()
        if seq.ndim != 1:
            raise ValueError(
                f"from_sequence: sequence of shape {tuple(seq.shape)}; expected 1-D (L,) (call it per row for a batch)"
            )
        content = (seq != self.pad_id).nonzero().flatten()
        if content.numel() == 0:
            return []
        lo, hi = int(content[0]), int(content[-1]) + 1  # strip left/right padding

        # Pair up begin/end markers: they must alternate, start first.
        markers = ((seq[lo:hi] == self.boi_id) | (seq[lo:hi] == self.eoi_id)).nonzero().flatten() + lo
        spans: list[tuple[int, int]] = []  # (position of <|image_start|>, position of <|image_end|>)
        open_at: int | None = None
        for p in markers.tolist():
            if seq[p] == self.boi_id:
                if open_at is not None:
                    raise SequenceError(
                        f"position {p}: <|image_start|> inside the image that starts at position {open_at} "
                        "(nested image, or that image's <|image_end|> is missing)"
                    )
                open_at = p
            else:
                if open_at is None:
                    raise SequenceError(f"position {p}: <|image_end|> without an <|image_start|> before it")
                spans.append((open_at, p))
                open_at = None
        if open_at is not None:
            raise SequenceError(
                f"position {open_at}: the image that starts here has no <|image_end|> (the sequence ends at {hi})"
            )

        segments: list[Segment] = []
        cursor = lo
        for start, end in spans:
            if start > cursor:
                segments.append(self._text_segment(seq, cursor, start))
            segments.append(Segment("image", start, end + 1, self._parse_image(seq, start, end)))
            cursor = end + 1
        if hi > cursor:
            segments.append(self._text_segment(seq, cursor, hi))
        return segments

    def from_sequence(self, seq: IdsLike) -> list[torch.Tensor]:
        """Every image in a sequence (text tokens around them allowed), as (h, w) codes in [0, image_vocab_size).

        Args:
            seq: a 1-D sequence from ``to_sequence``/``interleave`` (or a model), padding allowed at the ends.
        """
        return [s.ids for s in self.parse(seq) if s.kind == "image"]

    def _text_segment(self, seq: torch.Tensor, start: int, end: int) -> Segment:
        run = seq[start:end]
        bad = (run < 0) | (run >= self.text_vocab_size)
        if bad.any():
            p = start + int(bad.nonzero()[0])
            raise SequenceError(
                f"position {p}: {self.describe(seq[p])} outside any image; expected a text token "
                f"in [0, {self.text_vocab_size})"
            )
        return Segment("text", start, end, run.clone())

    def _parse_image(self, seq: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Codes between <|image_start|> at ``start`` and <|image_end|> at ``end`` -> (h, w) grid."""
        body_at = start + 1
        body = seq[body_at:end]
        height = width = None
        if self.size_prefix:
            sizes = body[:2]
            ok = sizes.numel() == 2 and bool(((sizes >= self.size_offset) & (sizes < self.vocab_size)).all())
            if not ok:
                got = ", ".join(self.describe(t) for t in sizes.tolist()) or "nothing"
                raise SequenceError(
                    f"position {body_at}: expected two size tokens (rows, columns) after the <|image_start|> "
                    f"at position {start}, got {got}"
                )
            height, width = (int(t) - self.size_offset + 1 for t in sizes)
            body, body_at = body[2:], body_at + 2
        if body.numel() == 0:
            raise SequenceError(f"position {start}: the image that starts here has no codes")

        is_code = (body >= self.image_offset) & (body < self.boi_id)
        is_eol = (body == self.eol_id) if self.eol else torch.zeros_like(is_code)
        bad = ~(is_code | is_eol)
        if bad.any():
            p = body_at + int(bad.nonzero()[0])
            expected = f"an image code (id in [{self.image_offset}, {self.boi_id}))"
            expected += " or <|image_eol|>" if self.eol else ""
            raise SequenceError(
                f"position {p}: {self.describe(seq[p])} inside the image that starts at position {start}; "
                f"expected {expected}"
            )

        if not self.eol:
            if body.numel() != height * width:
                raise SequenceError(
                    f"position {start}: the image that starts here has {body.numel()} codes; its size prefix "
                    f"says {height} x {width} = {height * width}"
                )
            return (body - self.image_offset).reshape(height, width)  # (h * w,) -> (h, w)

        row_ends = is_eol.nonzero().flatten()  # positions of <|image_eol|> within body
        if row_ends.numel() == 0 or int(row_ends[-1]) != body.numel() - 1:
            raise SequenceError(
                f"position {end}: the last row of the image that starts at position {start} is not closed by "
                "<|image_eol|> before its <|image_end|>"
            )
        row_starts = torch.cat([row_ends.new_zeros(1), row_ends[:-1] + 1])
        lengths = row_ends - row_starts  # (rows,)
        expected_width = width if width is not None else int(lengths[0])
        wrong = (lengths != expected_width) | (lengths == 0)
        if wrong.any():
            r = int(wrong.nonzero()[0])
            source = "its size prefix" if width is not None else "its first row"
            expected = f"{expected_width} ({source})" if expected_width else "at least one"
            raise SequenceError(
                f"position {body_at + int(row_starts[r])}: row {r} of the image that starts at position {start} "
                f"has {int(lengths[r])} codes; expected {expected}"
            )
        rows = row_ends.numel()
        if height is not None and rows != height:
            raise SequenceError(
                f"position {start}: the image that starts here has {rows} rows; its size prefix says {height}"
            )
        codes = body[~is_eol] - self.image_offset  # (rows * w,)
        return codes.reshape(rows, expected_width)  # (h, w)

    # --- batching -------------------------------------------------------------------------------
    def collate(
        self,
        sequences: Sequence[IdsLike],
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sequences of different lengths -> a padded batch as Hugging Face ``transformers`` models take it.

        Args:
            sequences: 1-D token sequences.
            padding_side: "right" (training) or "left" (batched generation: every prompt ends at the last column).
            pad_to_multiple_of: round the padded length up to a multiple of this (tensor-core friendly).

        Returns:
            ``{"input_ids": (B, L) long, "attention_mask": (B, L) long}``, 1 on real tokens, 0 on <|image_pad|>.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"collate: padding_side must be 'right' or 'left', got {padding_side!r}")
        if len(sequences) == 0:
            raise ValueError("collate: got no sequences")
        rows = []
        for i, s in enumerate(sequences):
            t = _as_long_tensor(s, f"collate: sequence {i}").cpu()
            if t.ndim != 1:
                raise ValueError(f"collate: sequence {i} has shape {tuple(t.shape)}; expected 1-D (L,)")
            rows.append(t)
        length = max(r.numel() for r in rows)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, L)
        for i, r in enumerate(rows):
            n = r.numel()
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[i, cols] = r
            attention_mask[i, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenLayout":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TokenLayout.from_dict: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data)


__all__ = ["TokenLayout", "Segment", "SequenceError"]
