"""The ImageGPT model: a GPT-2 decoder over palette tokens, with the AR and BERT objectives.

An image of n_px x n_px pixels is a sequence of T = n_px * n_px tokens (palette indices, raster
order). The model follows GPT-2 as iGPT uses it:

    slots   = [SOS, x_0, ..., x_{T-2}]  (AR)   or   [x_0 or MASK, ..., x_{T-1} or MASK]  (BERT)
    h       = slot embeddings + learned position embeddings
    h       = h + attn(ln_1(h));  h = h + mlp(ln_2(h))      (pre-norm blocks, n_layer times)
    logits  = head(ln_f(h))                                  [B, T, vocab_size]

so that logits[:, t] predicts token t: from tokens 0..t-1 under the causal (AR) objective, from
every unmasked token under the bidirectional (BERT) one. The residual stream h is never replaced
by its normed copy: each block only adds to it.

Public API (the sampler and the evaluation build on it):
    GPT(config)                  config: a ModelConfig (igptlib.config holds it and the PRESETS)
      .forward(tokens)             logits [B, T, V] for whole sequences
      .new_cache(batch_size)       an empty KVCache; .forward(tokens, cache) then decodes incrementally
      .features(tokens, layer)     normed, average-pooled features of a layer (linear probes)
      .classify(tokens)            class logits from the average-pooled final features
      .forward_with_classes(tokens) (logits, class logits) from one pass, for fine-tuning
      .generative_loss(tokens)     L_AR or L_BERT in nats per pixel
    mask_tokens, ar_loss, bert_loss  the objectives as plain functions
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from igptlib.config import ModelConfig


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# The MLP's activation. OpenAI's iGPT weights use quick GELU; exact GELU is as good as GPT-2's tanh
# form and faster in bfloat16 on CPUs, so models trained here use it. (Named functions, not
# lambdas: a model must stay picklable.)
# One for each name of igptlib.config.ACTIVATIONS (tests/test_model.py checks that they agree).
ACTIVATION_FUNCTIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu}


class KVCache:
    """Keys and values of the slots a model has already read, for decoding a few tokens at a time.

    Make one with GPT.new_cache(batch_size) and hand it to GPT.forward with each new chunk of
    tokens; `length` counts the slots read so far (the SOS slot included). Buffers are allocated on
    first use, in the dtype and device of the keys (bfloat16 under autocast).
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int):
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this chunk's keys/values [B, H, L, D] after the earlier ones; return all of them."""
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # one matmul for queries, keys and values
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (t.view(B, L, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        mask = None
        if cache is not None and cache.length > 0:
            start = cache.length
            k, v = cache.update(layer, k, v)
            # The new queries sit at slots start..start+L-1 and may see every key up to their own
            # slot; is_causal would align the triangle to the top-left corner instead, so build it.
            causal = False
            if L > 1:
                mask = torch.ones(L, start + L, dtype=torch.bool, device=x.device).tril(diagonal=start)
        elif cache is not None:
            cache.update(layer, k, v)
        if L == 1 and mask is None and not causal and not self.training:
            y = single_query_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
            )
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one query per sequence and head [B, H, 1, D] over all keys [B, H, S, D].

    The decode step of sampling. On CPUs two batched matmuls over the cache run about 1.8x faster
    than scaled_dot_product_attention's kernel, which is built for many queries at once. The cache
    slices merge their batch and head dimensions without a copy.
    """
    B, H, _, D = q.shape
    q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
    scores = torch.baddbmm(q.new_empty(B * H, 1, k.shape[1]), q, k.transpose(1, 2), beta=0.0, alpha=D**-0.5)
    return torch.bmm(scores.softmax(dim=-1).to(v.dtype), v).view(B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATION_FUNCTIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.activation(self.fc(x))))


def norm_layer(config: ModelConfig) -> nn.Module:
    """The layer norm of config.norm: GPT-2's LayerNorm, or OpenAI iGPT's RMS norm (no centring, no bias)."""
    if config.norm == "rms":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd)


class Block(nn.Module):
    """A pre-norm transformer block: the norms feed the sublayers, the residual stream stays raw."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = SelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, causal: bool = True, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.ln_1(x), causal, cache, layer))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 over palette tokens; see the module docstring for the slot layout and the API."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size + 1, C)  # the extra row is BERT's mask token
        self.wpe = nn.Embedding(config.seq_len, C)
        self.sos = nn.Parameter(torch.zeros(C))  # learned start-of-sequence embedding (AR slot 0)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm_layer(config)
        self.head = nn.Linear(C, config.vocab_size, bias=False)
        self.clf_head = nn.Linear(C, config.num_classes)
        self.apply(self._init_weights)
        nn.init.normal_(self.sos, std=0.02)
        # GPT-2: the projections that write into the residual stream start smaller, by 1/sqrt(2 n_layer),
        # so that the stream's variance does not grow with depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def causal(self) -> bool:
        return self.config.objective == "ar"

    # -- inputs ----------------------------------------------------------------------------------

    def _check_tokens(self, tokens: torch.Tensor, allow_mask: bool = False) -> None:
        if tokens.dtype != torch.long or tokens.ndim != 2:
            raise ValueError(f"expected tokens as a LongTensor [batch, length], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.seq_len:
            raise ValueError(f"sequences of {tokens.shape[1]} tokens, but the model reads at most {self.config.seq_len}")
        top = self.config.vocab_size + (1 if allow_mask else 0)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= top):
            raise ValueError(
                f"token ids must lie in 0..{top - 1} (palette of {self.config.vocab_size} colours), "
                f"got {int(tokens.min())}..{int(tokens.max())}"
            )

    def _embed(self, tokens: torch.Tensor, start: int = 0, sos: bool = False) -> torch.Tensor:
        """Slot embeddings from slot `start` on: SOS first when `sos`, then the tokens' own rows."""
        x = self.wte(tokens)
        if sos:
            x = torch.cat([self.sos.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        positions = torch.arange(start, start + x.shape[1], device=tokens.device)
        return self.drop(x + self.wpe(positions))

    def _whole_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """Slots for a whole sequence: AR shifts right behind SOS (the last token is only a target)."""
        if self.causal:
            return self._embed(tokens[:, :-1], sos=True)
        return self._embed(tokens)

    # -- the network -----------------------------------------------------------------------------

    def _blocks(self, x: torch.Tensor, layers: int | None = None, cache: KVCache | None = None) -> torch.Tensor:
        for index, block in enumerate(self.blocks[:layers]):
            x = block(x, self.causal, cache, index)
        return x

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-pixel logits.

        Without a cache: tokens [B, T'] (T' <= seq_len; BERT inputs may hold the mask token) give
        logits [B, T', V] where logits[:, t] predicts tokens[:, t] (AR: from tokens[:, :t]).

        With a cache (AR only), for decoding: `tokens` [B, L] (L >= 0) are the next tokens of the
        sequences, appended to what the cache has read. On an empty cache the SOS slot comes first
        and the result is [B, L+1, V], predicting tokens 0..L; afterwards it is [B, L, V]. Either
        way the last row predicts the first token not yet given, and the rows equal those of the
        whole-sequence forward pass at the same positions.
        """
        if cache is None:
            self._check_tokens(tokens, allow_mask=not self.causal)
            return self.head(self.ln_f(self._blocks(self._whole_input(tokens))))
        if not self.causal:
            raise ValueError("a KV cache decodes left to right; it needs a model with objective 'ar', not 'bert'")
        self._check_tokens(tokens)
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"the cache holds {cache.batch_size} sequences, got a batch of {tokens.shape[0]}")
        start = cache.length
        slots = tokens.shape[1] + (start == 0)
        if start + slots > cache.max_len:
            raise ValueError(
                f"the cache has read {start} of {cache.max_len} slots; {tokens.shape[1]} more tokens do not fit "
                f"(the last pixel of an image is never an input)"
            )
        x = self._embed(tokens, start=start, sos=start == 0)
        x = self._blocks(x, cache=cache)
        cache.length += slots
        return self.head(self.ln_f(x))

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for `batch_size` sequences (see forward)."""
        return KVCache(self.config.n_layer, batch_size, self.config.seq_len)

    def features(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Average-pooled features of `layer` for linear probes: [B, n_embd].

        layer 0 is the input embeddings and layer k the output of block k (k = n_layer: the last).
        Each position's vector is layer-normalised without learned scale, so layers compare on an
        equal footing, then averaged over the sequence. Tokens are read whole, never masked.
        Only the first `layer` blocks run; forward_all reads several layers from one whole pass.
        """
        self._check_layers([layer])
        self._check_tokens(tokens)
        return pool(self._blocks(self._whole_input(tokens), layers=layer))

    def forward_all(self, tokens: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """(next-pixel logits [B, T, V], class logits [B, num_classes], {layer: features [B, n_embd]})
        from one pass, each layer's features as `features` gives them: what an evaluation reads."""
        self._check_tokens(tokens, allow_mask=not self.causal)
        self._check_layers(layers)
        x = self._whole_input(tokens)
        pooled = {0: pool(x)} if 0 in layers else {}
        for index, block in enumerate(self.blocks, start=1):
            x = block(x, self.causal)
            if index in layers:
                pooled[index] = pool(x)
        h = self.ln_f(x)
        return self.head(h), self.clf_head(h.mean(dim=1)), {layer: pooled[layer] for layer in layers}

    def _check_layers(self, layers) -> None:
        bad = [layer for layer in layers if not 0 <= layer <= self.config.n_layer]
        if bad:
            raise ValueError(f"layer must lie in 0..{self.config.n_layer}, got {bad[0]}")

    def forward_with_classes(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-pixel logits [B, T, V], class logits [B, num_classes]) from one pass."""
        return self.forward_all(tokens)[:2]

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] from the average-pooled final features (ln_f applied)."""
        return self.forward_with_classes(tokens)[1]

    def generative_loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_AR (all pixels) or L_BERT (masked pixels only), mean cross-entropy in nats per pixel."""
        if self.causal:
            return ar_loss(self(tokens), tokens)
        masked, mask = mask_tokens(tokens, self.config.mask_prob, self.config.mask_token, generator)
        return bert_loss(self(masked), tokens, mask)


def pool(h: torch.Tensor) -> torch.Tensor:
    """A layer's features for a probe: each position layer-normed without learned scale, then averaged."""
    return F.layer_norm(h.float(), h.shape[-1:]).mean(dim=1)


# -- objectives ------------------------------------------------------------------------------------


def ar_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """L_AR: mean next-pixel cross-entropy over every position (nats per pixel)."""
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def mask_tokens(
    tokens: torch.Tensor, mask_prob: float, mask_token: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: each pixel independently replaced by `mask_token` with chance `mask_prob`.

    Returns (masked tokens, boolean mask of the replaced positions). A seeded `generator` makes the
    masks reproducible (and resumable: the training module seeds one per step).
    """
    draws = torch.rand(tokens.shape, generator=generator, device=tokens.device if generator is None else generator.device)
    mask = (draws < mask_prob).to(tokens.device)
    return tokens.masked_fill(mask, mask_token), mask


def bert_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_BERT: mean cross-entropy over the masked positions only (zero if none is masked)."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none")
    mask = mask.flatten()
    return (losses * mask).sum() / mask.sum().clamp(min=1)
