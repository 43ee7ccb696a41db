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

Depth and sub-tokens. A residual-VQ grid has ``depth`` ids per position, (h, w, depth); each position becomes
``depth`` consecutive tokens, depth 0 first, positions in raster order (the RQ-Transformer order, Lee et al.
2022). An id of b = log2(K) bits can also be split into ``subtokens`` tokens of b / subtokens bits each,
most significant first (Open-MAGVIT2 predicts an 18-bit LFQ id as 2 x 9 bits), so that an LLM's embedding
table needs 2 x 2^9 rows instead of 2^18. A position is then ``depth x subtokens`` tokens ("slots"). With
``shared_vocab=False`` (default) every slot has its own id range of k = K^(1 / subtokens) ids, one after the
other, so a token says which slot it fills; with ``shared_vocab=True`` all slots use the same k ids (one
embedding table shared by the depths, as RQ-Transformer's). Image ids then occupy [V, V + k x slots) or
[V, V + k), and the special tokens follow.

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
    ids: torch.Tensor  # text: (n,) text ids; image: (h, w) (or (h, w, depth)) codes in [0, image_vocab_size)


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
        depth: ids per grid position (``ImageTokenizer.depth``; residual VQ); grids are (h, w, depth) when > 1.
        subtokens: tokens each id is split into (image_vocab_size must be 2^b with b divisible by it).
        shared_vocab: all depth/sub-token slots share one id range instead of one range each.

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
    depth: int = 1
    subtokens: int = 1
    shared_vocab: bool = False

    SPECIAL_NAMES = ("<|image_start|>", "<|image_end|>", "<|image_eol|>", "<|image_pad|>")

    def __post_init__(self) -> None:
        for name in ("image_vocab_size", "text_vocab_size", "max_grid_side", "depth", "subtokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"TokenLayout: {name} must be an int, got {type(value).__name__}")
        if self.image_vocab_size < 1:
            raise ValueError(f"TokenLayout: image_vocab_size must be >= 1, got {self.image_vocab_size}")
        if self.text_vocab_size < 0:
            raise ValueError(f"TokenLayout: text_vocab_size must be >= 0, got {self.text_vocab_size}")
        if self.max_grid_side < 1:
            raise ValueError(f"TokenLayout: max_grid_side must be >= 1, got {self.max_grid_side}")
        if self.depth < 1 or self.subtokens < 1:
            raise ValueError(f"TokenLayout: depth and subtokens must be >= 1, got {self.depth} and {self.subtokens}")
        if self.subtokens > 1:
            bits = self.image_vocab_size.bit_length() - 1
            if self.image_vocab_size != 1 << bits or bits % self.subtokens:
                raise ValueError(
                    f"TokenLayout: subtokens={self.subtokens} needs image_vocab_size = 2^b with b divisible by "
                    f"{self.subtokens}, got {self.image_vocab_size}"
                )
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
    def slots(self) -> int:
        """Tokens per grid position: depth x subtokens."""
        return self.depth * self.subtokens

    @property
    def slot_vocab_size(self) -> int:
        """Values one image token takes: image_vocab_size, or 2^(b / subtokens) for split ids."""
        if self.subtokens == 1:
            return self.image_vocab_size
        return 1 << ((self.image_vocab_size.bit_length() - 1) // self.subtokens)

    @property
    def image_token_count(self) -> int:
        """Ids the image tokens occupy: slot_vocab_size, times the slots unless ``shared_vocab``."""
        return self.slot_vocab_size * (1 if self.shared_vocab else self.slots)

    def slot_offset(self, slot: int) -> int:
        """Id of value 0 in slot ``slot`` (0 .. slots - 1; depth-major, then sub-token)."""
        return self.image_offset + (0 if self.shared_vocab else slot * self.slot_vocab_size)

    @property
    def boi_id(self) -> int:
        return self.text_vocab_size + self.image_token_count

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
        if self.slots == 1 or self.shared_vocab:
            codes = [f"<|image_{c}|>" for c in range(self.slot_vocab_size)]
        else:
            codes = [f"<|image_s{j}_{c}|>" for j in range(self.slots) for c in range(self.slot_vocab_size)]
        return codes + list(self.special_tokens)

    def describe(self, token: int) -> str:
        """A human-readable name for an id, for error messages."""
        token = int(token)
        if 0 <= token < self.text_vocab_size:
            return f"text token {token}"
        if self.image_offset <= token < self.boi_id:
            if self.slots == 1:
                return f"image code {token - self.image_offset} (id {token})"
            value = (token - self.image_offset) % self.slot_vocab_size
            slot = "" if self.shared_vocab else f" of slot {(token - self.image_offset) // self.slot_vocab_size}"
            return f"image token {value}{slot} (id {token})"
        if self.boi_id <= token < self.size_offset:
            return f"{self.SPECIAL_NAMES[token - self.boi_id]} (id {token})"
        if self.size_offset <= token < self.vocab_size:
            return f"<|image_size_{token - self.size_offset + 1}|> (id {token})"
        return f"id {token}, outside the vocabulary [0, {self.vocab_size})"

    def sequence_length(self, height: int, width: int) -> int:
        """Tokens ``to_sequence`` produces for an (height, width) grid."""
        return 2 + (2 if self.size_prefix else 0) + height * width * self.slots + (height if self.eol else 0)

    # --- grids -> sequences ---------------------------------------------------------------------
    def _check_grid(self, ids: IdsLike, what: str) -> torch.Tensor:
        ids = _as_long_tensor(ids, what)
        grid_ndim = self.grid_ndim
        if (ids.ndim not in (grid_ndim, grid_ndim + 1) or 0 in ids.shape
                or (self.depth > 1 and ids.shape[-1] != self.depth)):
            shape = "(h, w)" if self.depth == 1 else f"(h, w, {self.depth})"
            raise ValueError(f"{what}: ids of shape {tuple(ids.shape)}; expected a grid {shape} or a batch (B, *{shape})")
        h, w = ids.shape[-grid_ndim:][:2]
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

    @property
    def grid_ndim(self) -> int:
        """Dimensions of one grid: 2 for (h, w), 3 for (h, w, depth)."""
        return 2 if self.depth == 1 else 3

    def split_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (...) -> (..., subtokens) values in [0, slot_vocab_size), most significant first."""
        if self.subtokens == 1:
            return ids[..., None]  # any vocabulary size, power of two or not
        bits = (self.slot_vocab_size.bit_length() - 1)
        shifts = torch.arange(self.subtokens - 1, -1, -1, device=ids.device) * bits  # (s,)
        return (ids[..., None] >> shifts) & (self.slot_vocab_size - 1)

    def join_ids(self, values: torch.Tensor) -> torch.Tensor:
        """(..., subtokens) values -> ids (...); the inverse of ``split_ids``."""
        if self.subtokens == 1:
            return values[..., 0]
        bits = (self.slot_vocab_size.bit_length() - 1)
        shifts = torch.arange(self.subtokens - 1, -1, -1, device=values.device) * bits  # (s,)
        return (values << shifts).sum(dim=-1)

    def to_sequence(self, ids: IdsLike) -> torch.Tensor:
        """A grid of image codes -> its flat token sequence (same device as ``ids``).

        Args:
            ids: integer codes in [0, image_vocab_size), shape (h, w) ((h, w, depth) with depth > 1); a batch
                (B, h, w) gives (B, L).

        Returns:
            torch.long (L,) with L = ``sequence_length(h, w)`` (or (B, L) for a batch).
        """
        ids = self._check_grid(ids, "to_sequence")
        single = ids.ndim == self.grid_ndim
        grid = ids[None] if single else ids  # (B, h, w) or (B, h, w, R)
        batch, h, w = grid.shape[:3]
        grid = grid.reshape(batch, h, w, self.depth)  # (B, h, w, R)
        values = self.split_ids(grid).reshape(batch, h, w, self.slots)  # (B, h, w, R * s), depth-major
        offsets = torch.tensor([self.slot_offset(j) for j in range(self.slots)], device=grid.device)  # (S,)
        codes = (values + offsets).reshape(batch, h, w * self.slots)  # (B, h, w * S) ids
        if self.eol:
            eol = codes.new_full((batch, h, 1), self.eol_id)
            codes = torch.cat([codes, eol], dim=2)  # (B, h, w * S + 1)
        body = codes.reshape(batch, -1)  # (B, h * (w * S [+ 1])), raster order
        prefix = [self.boi_id] + ([self.size_id(h), self.size_id(w)] if self.size_prefix else [])
        head = torch.tensor(prefix, dtype=torch.long, device=codes.device).expand(batch, -1)  # (B, 1 or 3)
        tail = codes.new_full((batch, 1), self.eoi_id)  # (B, 1)
        seq = torch.cat([head, body, tail], dim=1)  # (B, L)
        return seq[0] if single else seq

    def interleave(self, parts: Sequence[IdsLike]) -> torch.Tensor:
        """Text token runs (1-D) and image grids (2-D) -> one flat sequence, in the order given.

        Args:
            parts: each a 1-D run of text ids in [0, text_vocab_size) or one (h, w) grid of image codes
                ((h, w, depth) with depth > 1).
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
            elif t.ndim == self.grid_ndim:
                pieces.append(self.to_sequence(t).cpu())
            else:
                shape = "2-D (h, w)" if self.depth == 1 else f"3-D (h, w, {self.depth})"
                raise ValueError(
                    f"interleave: part {i} has shape {tuple(t.shape)}; expected 1-D text ids or a {shape} grid"
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
        """Every image in a sequence (text tokens around them allowed), as (h, w) codes in [0, image_vocab_size)
        ((h, w, depth) with depth > 1).

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

        slots = self.slots
        if not self.eol:
            if body.numel() != height * width * slots:
                raise SequenceError(
                    f"position {start}: the image that starts here has {body.numel()} codes; its size prefix "
                    f"says {height} x {width}" + (f" x {slots} tokens" if slots > 1 else "")
                    + f" = {height * width * slots}"
                )
            return self._grid_from_tokens(body.reshape(height, width, slots), seq, body_at, start)

        row_ends = is_eol.nonzero().flatten()  # positions of <|image_eol|> within body
        if row_ends.numel() == 0 or int(row_ends[-1]) != body.numel() - 1:
            raise SequenceError(
                f"position {end}: the last row of the image that starts at position {start} is not closed by "
                "<|image_eol|> before its <|image_end|>"
            )
        row_starts = torch.cat([row_ends.new_zeros(1), row_ends[:-1] + 1])
        lengths = row_ends - row_starts  # (rows,)
        row_tokens = width * slots if width is not None else int(lengths[0])
        if row_tokens % slots:
            raise SequenceError(
                f"position {body_at}: row 0 of the image that starts at position {start} has {row_tokens} tokens, "
                f"not a multiple of the {slots} tokens per position"
            )
        expected_width = row_tokens
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
        tokens = body[~is_eol].reshape(rows, expected_width // slots, slots)  # (h, w, S)
        return self._grid_from_tokens(tokens, seq, body_at, start)

    def _grid_from_tokens(self, tokens: torch.Tensor, seq: torch.Tensor, body_at: int, start: int) -> torch.Tensor:
        """(h, w, S) image token ids -> (h, w) or (h, w, depth) codes, checking each token fills its own slot."""
        h, w, slots = tokens.shape
        offsets = torch.tensor([self.slot_offset(j) for j in range(slots)])  # (S,)
        values = tokens - offsets  # (h, w, S)
        bad = (values < 0) | (values >= self.slot_vocab_size)
        if bad.any():
            # Position in the sequence: find the offending token among the body's image tokens.
            r, c, j = (int(i) for i in bad.nonzero()[0])
            p = body_at + r * (w * slots + (1 if self.eol else 0)) + c * slots + j
            raise SequenceError(
                f"position {p}: {self.describe(seq[p])} in slot {j} of the image that starts at position {start}; "
                f"slot {j} takes ids [{self.slot_offset(j)}, {self.slot_offset(j) + self.slot_vocab_size})"
            )
        ids = self.join_ids(values.reshape(h, w, self.depth, self.subtokens))  # (h, w, R)
        return ids[..., 0] if self.depth == 1 else ids

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
