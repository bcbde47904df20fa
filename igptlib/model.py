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
      .decoder()                   a Decoder: one token per sequence after a cache, the sampler's step
      .features(tokens, layer)     normed, average-pooled features of a layer (linear probes)
      .classify(tokens)            class logits from the average-pooled final features
      .forward_with_classes(tokens) (logits, class logits) from one pass
      .mask(tokens, generator)     BERT's corruption at the model's mask rate: (masked tokens, mask)
      .generative_loss(tokens)     L_AR or L_BERT in nats per pixel
      .loss_and_classes(tokens)    (L_AR or L_BERT, class logits) from one pass, for fine-tuning
    mask_tokens, ar_loss, bert_loss  the objectives as plain functions
"""
from __future__ import annotations

import functools
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
    tokens; `length` counts the slots read so far (the SOS slot included; GPT.forward advances it
    before its layers store the chunk there). Buffers are allocated on first use, in the dtype and
    device of the keys (bfloat16 under autocast), one per layer for keys and values together.

    branch(copies) makes each sequence read so far go on as `copies` consecutive sequences (the
    samples of one image). The slots read before it are then held once per group of copies, and a
    decode step reads them once per group (see single_query_attention): most of what a step reads
    is the cache, and most of the cache is the kept pixels, the same for every sample.
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int):
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.shared = 0  # slots 0..shared-1 are held once per group of `copies` sequences
        self.copies = 1
        # Each sequence's own slots: keys and values [2, groups, H, copies, max_len - shared, D],
        # the sequences of a group head by head, so that a group's queries of one head are adjacent.
        self.own: list[torch.Tensor | None] = [None] * n_layer
        self.own_flat: list[tuple] = [()] * n_layer  # its keys and values as [groups * H * copies, max_len - shared, D]
        self.common: list[tuple] = [()] * n_layer  # keys and values of the shared slots, [groups * H, shared, D]

    def _own(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        if self.own[layer] is None:
            groups, heads, dim = self.batch_size // self.copies, like.shape[2], like.shape[-1]  # like: [2, *, H, *, D]
            self.own[layer] = like.new_empty((2, groups, heads, self.copies, self.max_len - self.shared, dim))
            self.own_flat[layer] = tuple(self.own[layer].flatten(1, 3))
        return self.own[layer]

    def store(self, layer: int, kv: torch.Tensor) -> None:
        """Store the keys and values [2, B, H, L, D] of the newest L slots (those up to `length`)."""
        _, B, H, L, D = kv.shape
        own = self._own(layer, kv)
        grouped = kv.view(2, B // self.copies, self.copies, H, L, D).transpose(2, 3)
        own.narrow(4, self.length - self.shared - L, L).copy_(grouped)

    def read(self, layer: int) -> torch.Tensor:
        """Every slot's keys and values per sequence, [2, B, H, length, D]: a view of the buffer
        until the cache branches, a copy after."""
        own = self.own[layer].narrow(4, 0, self.length - self.shared).transpose(2, 3).flatten(1, 2)
        if not self.shared:
            return own
        common = torch.stack(self.common[layer]).unflatten(1, (-1, own.shape[2]))  # [2, groups, H, shared, D]
        return torch.cat([common.repeat_interleave(self.copies, dim=1), own], dim=3)

    def append(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values [2, groups, H, copies, D] of one new slot per sequence (the
        last, `length` - 1); return each sequence's own keys and values so far, [groups * H *
        copies, slots, D] each, views of the buffer."""
        slots = self.length - self.shared
        self._own(layer, kv).select(4, slots - 1).copy_(kv)
        keys, values = self.own_flat[layer]
        return keys.narrow(1, 0, slots), values.narrow(1, 0, slots)

    def branch(self, copies: int) -> None:
        """Each sequence goes on as `copies` consecutive sequences that share the slots read so far."""
        if self.copies != 1:
            raise ValueError("a cache branches once")
        if copies < 1:
            raise ValueError(f"copies must be a positive integer, got {copies}")
        if self.length:
            self.common = [tuple(kv[:, :, :, 0, : self.length].flatten(1, 2)) for kv in self.own]
        self.own, self.own_flat = [None] * len(self.own), [()] * len(self.own)
        self.shared, self.copies, self.batch_size = self.length, copies, self.batch_size * copies


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # one matmul for queries, keys and values
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # [3, B, H, L, D]
        q, k, v = qkv
        mask = None
        if cache is not None:
            cache.store(layer, qkv[1:])
            k, v = cache.read(layer)
            start = k.shape[2] - L
            if start > 0:
                # The new queries sit at slots start..start+L-1 and may see every key up to their own
                # slot; is_causal would align the triangle to the top-left corner instead, so build it.
                causal = False
                mask = torch.ones(L, start + L, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


def single_query_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    shared_keys: torch.Tensor | None = None,
    shared_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query per sequence and head: q [M, G, D] (M groups of G queries, one head
    each) over each query's own keys and values [M * G, S, D] -> [M, G, D].

    The decode step of sampling. On CPUs two batched matmuls over the cache run about 1.8x faster
    than scaled_dot_product_attention's kernel, which is built for many queries at once.

    `shared_keys`, `shared_values` [M, P, D] are slots that come before the own ones and are the
    same for the G queries of a group (a branched KVCache: the kept pixels of an image, for its G
    samples). Their scores are one matmul of the G queries over the P keys, which reads those keys
    once per group instead of once per query; one softmax then spans the shared and own slots.
    """
    M, G, D = q.shape
    scores = torch.baddbmm(
        q.new_empty(M * G, 1, keys.shape[1]), q.reshape(M * G, 1, D), keys.transpose(1, 2), beta=0.0, alpha=D**-0.5
    )
    if shared_keys is None:
        return torch.bmm(scores.softmax(dim=-1), values).view(M, G, D)
    P = shared_keys.shape[1]
    shared = torch.baddbmm(q.new_empty(M, G, P), q, shared_keys.transpose(1, 2), beta=0.0, alpha=D**-0.5)
    weights = torch.cat([shared, scores.view(M, G, -1)], dim=-1).softmax(dim=-1)  # [M, G, P + S]
    y = torch.bmm(weights[..., :P], shared_values)
    return torch.baddbmm(y.view(M * G, 1, D), weights[..., P:].reshape(M * G, 1, -1), values).view(M, G, D)


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


class Decoder:
    """A decode step of a GPT in eval mode: one new token per sequence, tokens [B], read after what
    `cache` holds -> next-pixel logits [B, V]; the same as forward(tokens[:, None], cache)[:, -1].

    The sampler's inner loop, hundreds of steps per completion. A step of the course's small models
    costs the overhead of its operations more than their arithmetic (a 64-wide layer's matmuls are
    microseconds), and nn.Module adds to it: a module call, and each submodule or parameter looked up
    through nn.Module.__getattr__, costs about as much as a small matmul. So the decoder takes the
    parameters out of the modules once, and a step is the layers' arithmetic as plain functions:
    [B, C] activations, no dropout (eval mode), and the cache's own layout for the attention (see
    SelfAttention.forward for the same layer over whole chunks). It holds the parameters it was made
    with: make a new one after replacing any (the sampler makes one per completion).
    """

    def __init__(self, model: GPT):
        self.n_head = model.config.n_head
        self.wte, self.wpe = model.wte.weight, model.wpe.weight
        self.layers = [
            (_function(b.ln_1), _function(b.attn.qkv), _function(b.attn.proj), _function(b.ln_2),
             _function(b.mlp.fc), b.mlp.activation, _function(b.mlp.proj))
            for b in model.blocks
        ]
        self.ln_f, self.head = _function(model.ln_f), _function(model.head)

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if tokens.ndim != 1 or len(tokens) != cache.batch_size or not 0 < cache.length < cache.max_len:
            raise ValueError(f"a decode step reads one token [B] for each of the cache's {cache.batch_size} "
                             f"sequences, after slot 0 and before slot {cache.max_len}; "
                             f"got {tuple(tokens.shape)} at slot {cache.length}")
        x = F.embedding(tokens, self.wte) + self.wpe[cache.length]
        cache.length += 1
        B, C = x.shape
        groups, copies, H = B // cache.copies, cache.copies, self.n_head
        for layer, (ln_1, qkv, proj, ln_2, fc, activation, fc_proj) in enumerate(self.layers):
            # Queries, keys and values [3, groups, H, copies, D]: the cache's order, a group's sequences
            # head by head, so that the keys go in with one copy and the queries of a group are adjacent.
            q_k_v = qkv(ln_1(x)).view(groups, copies, 3, H, C // H).permute(2, 0, 3, 1, 4)
            keys, values = cache.append(layer, q_k_v[1:])
            y = single_query_attention(q_k_v[0].reshape(groups * H, copies, -1), keys, values, *cache.common[layer])
            x = x + proj(y.view(groups, H, copies, -1).transpose(1, 2).reshape(B, C))
            x = x + fc_proj(activation(fc(ln_2(x))))
        return self.head(self.ln_f(x))


def _function(module: nn.Module):
    """A Linear or norm module as a function of x over the parameters it holds now (for Decoder)."""
    if isinstance(module, nn.Linear):
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    if isinstance(module, nn.RMSNorm):
        return functools.partial(F.rms_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                                 eps=module.eps)
    if isinstance(module, nn.LayerNorm):
        return functools.partial(F.layer_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                                 bias=module.bias, eps=module.eps)
    raise TypeError(f"no plain function for a {type(module).__name__}")


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
        low, high = (int(bound) for bound in tokens.aminmax()) if tokens.numel() else (0, 0)
        if low < 0 or high >= top:
            raise ValueError(
                f"token ids must lie in 0..{top - 1} (palette of {self.config.vocab_size} colours), got {low}..{high}"
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
        if slots == 1 and start > 0 and not self.training:
            return self.decoder()(tokens[:, 0], cache).unsqueeze(1)
        x = self._embed(tokens, start=start, sos=start == 0)
        cache.length += slots  # the layers store the chunk's keys and values in these slots
        x = self._blocks(x, cache=cache)
        return self.head(self.ln_f(x))

    def decoder(self) -> Decoder:
        """The decode step of this model as it is now (see Decoder): a sampler's inner loop."""
        return Decoder(self)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for `batch_size` sequences (see forward)."""
        return KVCache(self.config.n_layer, batch_size, self.config.seq_len)

    def features(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Average-pooled features of `layer` for linear probes: [B, n_embd].

        layer 0 is the input embeddings and layer k the output of block k (k = n_layer: the last).
        Each position's vector is layer-normalised without learned scale, so layers compare on an
        equal footing, then averaged over the sequence. Tokens are read as given: a BERT model's
        may hold the mask token (a masked reading, see mask and igptlib.metrics.split_pass).
        Only the first `layer` blocks run; forward_all reads several layers from one whole pass.
        """
        self._check_layers([layer])
        self._check_tokens(tokens, allow_mask=not self.causal)
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

    def mask(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked tokens, mask) as a BERT model is trained on them: mask_tokens at the model's mask_prob."""
        if self.causal:
            raise ValueError("masked inputs are for a model with objective 'bert'; an 'ar' model reads whole images")
        return mask_tokens(tokens, self.config.mask_prob, self.config.mask_token, generator)

    def generative_loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_AR (all pixels) or L_BERT (masked pixels only), mean cross-entropy in nats per pixel."""
        if self.causal:
            return ar_loss(self(tokens), tokens)
        masked, mask = self.mask(tokens, generator)
        return bert_loss(self(masked), tokens, mask)

    def loss_and_classes(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_AR or L_BERT, class logits [B, num_classes]) from one pass: what fine-tuning trains on.

        A BERT model reads its tokens masked as in pre-training for both, so that the classifier
        learns on the inputs the model knows (and an evaluation's masked reading matches it).
        """
        if self.causal:
            logits, class_logits = self.forward_with_classes(tokens)
            return ar_loss(logits, tokens), class_logits
        masked, mask = self.mask(tokens, generator)
        logits, class_logits = self.forward_with_classes(masked)
        return bert_loss(logits, tokens, mask), class_logits


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
