"""Attention at real sizes: the fused SDPA kernel must be used, never the (L, L) math fallback.

The (L, L) fp32 score matrix at L = 192 * 192 positions is 5.1 GiB; a fused kernel needs a few
hundred MiB. Measured as the peak resident memory of a separate process, so that nothing else the
test session allocated counts, and no timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from tokenizer.blocks import AttnBlock
    torch.set_num_threads(2)
    side, channels = {side}, 16
    block = AttnBlock(channels, groups=4).eval()
    x = torch.randn(1, channels, side, side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - before) * 1024)  # ru_maxrss is KiB on Linux
    """
)


def test_mid_block_attention_does_not_materialise_the_score_matrix():
    side = 192
    score_matrix_bytes = (side * side) ** 2 * 4  # fp32 (L, L): 5.1 GiB
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(side=side)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < score_matrix_bytes / 8, f"attention grew the process by {grown / 2**30:.2f} GiB"


def test_attention_matches_the_explicit_softmax_formula():
    import torch

    from tokenizer.blocks import AttnBlock

    block = AttnBlock(8, groups=4).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (block.q, block.k, block.v))  # (B, L, C)
        weights = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)  # (B, L, L)
        expected = x + block.proj_out((weights @ v).transpose(1, 2).reshape(2, 8, 5, 7))
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
