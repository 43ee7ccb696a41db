"""A small decoder-only transformer over image token sequences (a "token prior"), and sampling from it.

GPT-2 layout (Radford et al. 2019) as nanoGPT writes it: pre-LayerNorm blocks, learned absolute
positions, tied input/output embeddings, causal attention through ``scaled_dot_product_attention``.
It predicts the next token of ``TokenLayout`` sequences in raster order, as autoregressive image
generators over VQ codes do (VQGAN transformer, Esser et al. 2021; LlamaGen, Sun et al. 2024). This file
imports nothing from the rest of ``train/`` so it can be read (and copied into a pipeline) on its own.

Axis letters: B batch, T sequence positions, C model width, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizer.sequence import TokenLayout


@dataclass
class PriorConfig:
    vocab_size: int  # TokenLayout.vocab_size: text + image codes + special tokens.
    max_seq_len: int  # longest sequence the position table covers (TokenLayout.sequence_length).
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256  # divisible by n_head.
    dropout: float = 0.0  # token datasets here are small, but runs are short: no dropout by default.

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"PriorConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if min(self.vocab_size, self.max_seq_len, self.n_layer, self.n_head) < 1:
            raise ValueError(f"PriorConfig: sizes must be >= 1, got {self}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Model sizes as small factories (DiT style); the script's --prior choices come from this dict.
def prior_tiny(vocab_size: int, max_seq_len: int) -> PriorConfig:
    return PriorConfig(vocab_size, max_seq_len, n_layer=2, n_head=2, n_embd=64)  # tests and --smoke


def prior_xs(vocab_size: int, max_seq_len: int) -> PriorConfig:
    return PriorConfig(vocab_size, max_seq_len, n_layer=4, n_head=4, n_embd=128)  # a few minutes on a busy CPU


def prior_s(vocab_size: int, max_seq_len: int) -> PriorConfig:
    return PriorConfig(vocab_size, max_seq_len, n_layer=4, n_head=4, n_embd=256)  # minutes on a CPU


def prior_m(vocab_size: int, max_seq_len: int) -> PriorConfig:
    return PriorConfig(vocab_size, max_seq_len, n_layer=8, n_head=8, n_embd=512)  # GPU


PRIOR_SIZES: dict[str, Callable[[int, int], PriorConfig]] = {
    "prior-tiny": prior_tiny,
    "prior-xs": prior_xs,
    "prior-s": prior_s,
    "prior-m": prior_m,
}


@dataclass
class PriorOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # mean cross-entropy in nats over targets != -100


class KVCache:
    """Keys and values of past positions, one entry per layer, for O(T) sampling."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=2)  # 3 x (B, T, C)
        q, k, v = (rearrange(t, "b t (nh hs) -> b nh t hs", nh=self.n_head) for t in (q, k, v))
        past = 0
        if cache is not None:
            if cache.keys[layer] is not None:
                past = cache.keys[layer].shape[2]
                k = torch.cat([cache.keys[layer], k], dim=2)  # (B, nh, past + T, hs)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        if past and q.shape[2] > 1:
            raise ValueError("CausalSelfAttention: a cached step takes one new position at a time")
        # With no past, causal masking; one new query after a cache may look at every cached position.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=past == 0, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.proj(rearrange(y, "b nh t hs -> b t (nh hs)"))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(), nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class TokenPrior(nn.Module):
    """Next-token prediction over ``TokenLayout`` sequences."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        # The output head reuses tok_emb.weight (weight tying, Press & Wolf 2017) through F.linear, so
        # the state dict holds the matrix once (safetensors refuses tensors that share memory).
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> PriorOutput:
        """Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids, -100 where no loss is wanted (padding).
            cache: past keys/values when sampling step by step (positions continue after them).
        """
        batch, length = idx.shape
        start = cache.length if cache is not None else 0
        if start + length > self.config.max_seq_len:
            raise ValueError(
                f"TokenPrior: sequence of {start + length} tokens is longer than max_seq_len={self.config.max_seq_len}"
            )
        pos = torch.arange(start, start + length, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        logits = F.linear(self.ln_f(x), self.tok_emb.weight)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                rearrange(logits.float(), "b t v -> (b t) v"), rearrange(targets, "b t -> (b t)"), ignore_index=-100
            )
        return PriorOutput(logits, loss)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus of mass top_p to -inf.

    Nucleus sampling: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration".
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_grids(
    model: TokenPrior,
    layout: TokenLayout,
    num: int,
    height: int,
    width: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``num`` (height, width) code grids in raster order.

    Decoding is constrained to the layout: at a code position only image codes can be drawn, and the
    structural tokens (<|image_start|>, size, <|image_eol|>) are written, not sampled, so every sample
    is a valid grid whatever the model's quality.

    Returns:
        torch.long (num, height, width) codes in [0, image_vocab_size).
    """
    if temperature <= 0:
        raise ValueError(f"sample_grids: temperature must be > 0, got {temperature}")
    needed = layout.sequence_length(height, width) - 1  # the final <|image_end|> is never fed back
    if needed > model.config.max_seq_len:
        raise ValueError(
            f"sample_grids: a {height} x {width} grid needs {needed} positions; "
            f"the model has {model.config.max_seq_len}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lo, hi = layout.image_offset, layout.image_offset + layout.image_vocab_size
    prefix = [layout.boi_id] + ([layout.size_id(height), layout.size_id(width)] if layout.size_prefix else [])
    cache = KVCache(model.config.n_layer)
    tokens = torch.tensor(prefix, device=device).expand(num, -1)  # (B, P)
    logits = model(tokens, cache=cache).logits[:, -1]  # (B, V)
    grid = torch.empty(num, height, width, dtype=torch.long, device=device)
    for r in range(height):
        for c in range(width):
            code_logits = filter_logits(logits[:, lo:hi].float() / temperature, top_k, top_p)  # (B, K)
            code = torch.multinomial(code_logits.softmax(-1), 1, generator=generator)  # (B, 1)
            grid[:, r, c] = code[:, 0]
            logits = model(code + lo, cache=cache).logits[:, -1]
        if layout.eol and r < height - 1:
            logits = model(torch.full((num, 1), layout.eol_id, device=device), cache=cache).logits[:, -1]
    model.train(was_training)
    return grid


__all__ = [
    "PriorConfig", "PRIOR_SIZES", "PriorOutput", "KVCache", "TokenPrior", "filter_logits", "sample_grids",
]
