"""TokenLayout: image grids <-> flat multimodal sequences, collation, malformed sequences."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import SequenceError, TokenLayout

LAYOUTS = [
    dict(eol=True, size_prefix=False),
    dict(eol=True, size_prefix=True),
    dict(eol=False, size_prefix=True),
]


def test_ids_and_vocab_size():
    layout = TokenLayout(image_vocab_size=16, text_vocab_size=100)
    ids = (layout.image_offset, layout.boi_id, layout.eoi_id, layout.eol_id, layout.pad_id)
    assert ids == (100, 116, 117, 118, 119)
    assert layout.vocab_size == 120
    assert layout.special_tokens == {
        "<|image_start|>": 116, "<|image_end|>": 117, "<|image_eol|>": 118, "<|image_pad|>": 119,
    }
    sized = TokenLayout(image_vocab_size=16, text_vocab_size=100, size_prefix=True, max_grid_side=8)
    assert sized.vocab_size == 128 and sized.size_id(1) == 120 and sized.size_id(8) == 127
    assert sized.special_tokens["<|image_size_8|>"] == 127
    names = sized.added_tokens()  # ids text_vocab_size .. vocab_size - 1, in order
    assert len(names) == sized.vocab_size - sized.text_vocab_size
    assert names[0] == "<|image_0|>" and names[16] == "<|image_start|>" and names[-1] == "<|image_size_8|>"


def test_to_sequence_by_hand():
    layout = TokenLayout(image_vocab_size=10, text_vocab_size=5)
    seq = layout.to_sequence(torch.tensor([[0, 1, 2], [9, 8, 7]]))
    B, E, N = layout.boi_id, layout.eoi_id, layout.eol_id
    assert seq.dtype == torch.long
    assert seq.tolist() == [B, 5, 6, 7, N, 14, 13, 12, N, E]
    sized = TokenLayout(image_vocab_size=10, text_vocab_size=5, eol=False, size_prefix=True, max_grid_side=4)
    seq = sized.to_sequence(np.array([[3], [4]], dtype=np.uint16))  # shard dtype
    assert seq.tolist() == [sized.boi_id, sized.size_id(2), sized.size_id(1), 8, 9, sized.eoi_id]
    assert len(seq) == sized.sequence_length(2, 1)


@pytest.mark.parametrize("options", LAYOUTS)
@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), text=st.integers(0, 50), data=st.data())
def test_round_trip_any_shape(options, h, w, text, data):
    layout = TokenLayout(image_vocab_size=37, text_vocab_size=text, max_grid_side=12, **options)
    values = data.draw(st.lists(st.integers(0, 36), min_size=h * w, max_size=h * w))
    grid = torch.tensor(values).reshape(h, w)
    seq = layout.to_sequence(grid)
    assert seq.shape == (layout.sequence_length(h, w),)
    assert int(seq.min()) >= text and int(seq.max()) < layout.vocab_size
    [back] = layout.from_sequence(seq)
    assert back.dtype == torch.long and torch.equal(back, grid)


@pytest.mark.parametrize("options", LAYOUTS)
def test_batch_to_sequence_matches_single(options):
    layout = TokenLayout(image_vocab_size=8, text_vocab_size=3, **options)
    grids = torch.randint(0, 8, (4, 3, 5), generator=torch.Generator().manual_seed(0))
    seqs = layout.to_sequence(grids)  # (B, L)
    assert seqs.shape == (4, layout.sequence_length(3, 5))
    for grid, seq in zip(grids, seqs):
        assert torch.equal(seq, layout.to_sequence(grid))


@pytest.mark.parametrize("options", LAYOUTS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_interleaved_text_and_images(options, data):
    layout = TokenLayout(image_vocab_size=20, text_vocab_size=30, max_grid_side=6, **options)
    parts, expected_grids = [], []
    for kind in data.draw(st.lists(st.sampled_from(["text", "image"]), max_size=6)):
        if kind == "text":
            parts.append(data.draw(st.lists(st.integers(0, 29), min_size=1, max_size=8)))
        else:
            h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
            grid = torch.tensor(data.draw(st.lists(st.integers(0, 19), min_size=h * w, max_size=h * w))).reshape(h, w)
            parts.append(grid)
            expected_grids.append(grid)
    seq = layout.interleave(parts)
    grids = layout.from_sequence(seq)
    assert len(grids) == len(expected_grids)
    for got, want in zip(grids, expected_grids):
        assert torch.equal(got, want)
    # parse() gives the text back too: every text token in order, images where they were.
    segments = layout.parse(seq)
    text_back = [t for s in segments if s.kind == "text" for t in s.ids.tolist()]
    text_in = [t for p in parts if not isinstance(p, torch.Tensor) for t in p]
    assert text_back == text_in
    assert all(seq[s.start] == layout.boi_id and seq[s.end - 1] == layout.eoi_id for s in segments if s.kind == "image")


def test_interleave_by_hand():
    layout = TokenLayout(image_vocab_size=4, text_vocab_size=10)
    seq = layout.interleave([[1, 2], torch.tensor([[3]]), [7]])
    assert seq.tolist() == [1, 2, layout.boi_id, 13, layout.eol_id, layout.eoi_id, 7]
    segments = layout.parse(seq)
    assert [(s.kind, s.start, s.end) for s in segments] == [("text", 0, 2), ("image", 2, 6), ("text", 6, 7)]


def test_collate_against_hand_made_batch():
    layout = TokenLayout(image_vocab_size=4, text_vocab_size=10)
    P = layout.pad_id
    a = [1, 2, 3]
    b = layout.interleave([[5], torch.tensor([[0, 1]])])  # 5, boi, 10, 11, eol, eoi
    c = [9]
    B, E, N = layout.boi_id, layout.eoi_id, layout.eol_id
    right = layout.collate([a, b, c])
    assert right["input_ids"].tolist() == [
        [1, 2, 3, P, P, P],
        [5, B, 10, 11, N, E],
        [9, P, P, P, P, P],
    ]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]
    assert right["input_ids"].dtype == right["attention_mask"].dtype == torch.long
    left = layout.collate([a, b, c], padding_side="left", pad_to_multiple_of=4)
    assert left["input_ids"].tolist() == [
        [P, P, P, P, P, 1, 2, 3],
        [P, P, 5, B, 10, 11, N, E],
        [P, P, P, P, P, P, P, 9],
    ]
    assert left["attention_mask"].tolist() == [
        [0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1],
    ]
    # Padded rows still parse: padding at either end is skipped.
    for batch in (right, left):
        [grid] = layout.from_sequence(batch["input_ids"][1])
        assert grid.tolist() == [[0, 1]]


def test_collate_bad_input():
    layout = TokenLayout(image_vocab_size=4)
    with pytest.raises(ValueError, match="padding_side"):
        layout.collate([[1]], padding_side="middle")
    with pytest.raises(ValueError, match="no sequences"):
        layout.collate([])
    with pytest.raises(ValueError, match="sequence 1"):
        layout.collate([[1], [[1, 2]]])


def _layout():
    return TokenLayout(image_vocab_size=4, text_vocab_size=10)


def _seq(*ids):
    return torch.tensor(ids)


L = _layout()
B, E, N, P = L.boi_id, L.eoi_id, L.eol_id, L.pad_id


@pytest.mark.parametrize(
    "seq, message",
    [
        (_seq(1, B, 10, 11, N), r"position 1: the image that starts here has no <\|image_end\|>"),
        (_seq(1, 10, 2), r"position 1: image code 0 \(id 10\) outside any image"),
        (_seq(1, E), r"position 1: <\|image_end\|> without an <\|image_start\|>"),
        (_seq(B, 10, N, B, 11, N, E), r"position 3: <\|image_start\|> inside the image that starts at position 0"),
        (_seq(B, 10, 11, N, 12, N, E), r"position 4: row 1 of the image that starts at position 0 has 1 codes; "
                                         r"expected 2"),
        (_seq(B, 10, 11, N, 12, E), r"position 5: the last row .* not closed by <\|image_eol\|>"),
        (_seq(B, 10, 3, N, E), r"position 2: text token 3 inside the image that starts at position 0"),
        (_seq(B, 10, 99, N, E), r"position 2: id 99, outside the vocabulary \[0, 18\) inside the image"),
        (_seq(B, 10, P, N, E), r"position 2: <\|image_pad\|> \(id 17\) inside the image"),
        (_seq(2, P, 3), r"position 1: <\|image_pad\|> \(id 17\) outside any image"),
        (_seq(B, E), r"position 0: the image that starts here has no codes"),
        (_seq(B, N, E), r"position 1: row 0 .* has 0 codes; expected at least one"),
        (_seq(B, 10, N, N, E), r"position 3: row 1 .* has 0 codes; expected 1 \(its first row\)"),
        (_seq(N), r"position 0: <\|image_eol\|> \(id 16\) outside any image"),
        (_seq(1, -3), r"position 1: id -3, outside the vocabulary"),
    ],
)
def test_malformed_sequences_raise(seq, message):
    with pytest.raises(SequenceError, match=message):
        L.from_sequence(seq)


def test_malformed_size_prefix():
    layout = TokenLayout(image_vocab_size=4, text_vocab_size=10, size_prefix=True, max_grid_side=4)
    s2, s3 = layout.size_id(2), layout.size_id(3)
    B, E, N = layout.boi_id, layout.eoi_id, layout.eol_id
    with pytest.raises(SequenceError, match="position 1: expected two size tokens"):
        layout.from_sequence(torch.tensor([B, 10, N, E]))
    with pytest.raises(SequenceError, match="row 0 .* has 2 codes; expected 3 \\(its size prefix\\)"):
        layout.from_sequence(torch.tensor([B, s2, s3, 10, 11, N, 10, 11, N, E]))
    with pytest.raises(SequenceError, match="has 1 rows; its size prefix says 2"):
        layout.from_sequence(torch.tensor([B, s2, s2, 10, 11, N, E]))
    no_eol = TokenLayout(image_vocab_size=4, eol=False, size_prefix=True, max_grid_side=4)
    B = no_eol.boi_id
    with pytest.raises(SequenceError, match="has 3 codes; its size prefix says 2 x 2 = 4"):
        no_eol.from_sequence(torch.tensor([B, no_eol.size_id(2), no_eol.size_id(2), 0, 1, 2, no_eol.eoi_id]))


def test_bad_grids_and_layouts():
    layout = TokenLayout(image_vocab_size=4, size_prefix=True, max_grid_side=3)
    with pytest.raises(ValueError, match=r"id 4 at index \(1, 0\) is outside the image vocabulary \[0, 4\)"):
        layout.to_sequence(torch.tensor([[0, 1], [4, 0]]))
    with pytest.raises(ValueError, match="max_grid_side=3"):
        layout.to_sequence(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="float"):
        layout.to_sequence(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="expected a grid"):
        layout.to_sequence(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        TokenLayout(image_vocab_size=4, text_vocab_size=2).interleave([[0, 2]])
    with pytest.raises(ValueError, match="eol=False needs size_prefix=True"):
        TokenLayout(image_vocab_size=4, eol=False)
    with pytest.raises(ValueError, match="expected 1-D"):
        layout.from_sequence(torch.zeros(2, 3, dtype=torch.long))


def test_layout_json_round_trip():
    layout = TokenLayout(image_vocab_size=4096, text_vocab_size=32000, size_prefix=True, max_grid_side=64)
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="unknown field"):
        TokenLayout.from_dict({"image_vocab_size": 4, "colour": 1})


def test_readme_example_runs():
    """The README's "Using tokens in a transformer" example runs as written and says what is true."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Using tokens in a transformer\s*$(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README.md has no 'Using tokens in a transformer' section"
    [block] = re.findall(r"^```python\n(.*?)^```", section.group(1), flags=re.M | re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["seq"].shape == (2 + 3 * 6,)
    assert namespace["batch"]["input_ids"].shape == (2, len(namespace["mixed"]))
    assert len(namespace["names"]) == 4096 + 4
