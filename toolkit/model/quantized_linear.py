"""Weight-only INT4 (and unquantized) linear layers whose weights are never materialised.

Every linear layer of the model is one ``dequantize_matmul`` PrimFunc: the INT4 codes are unpacked,
scaled and multiplied inside the reduction (or, for prefill, a small dequantized tile at a time,
chosen by the schedule). Accumulation is in float32 and the result is cast to the model dtype.

The PrimFuncs are emitted *unscheduled* (plain TE) and tagged with attributes so that the
target-specific schedules in :mod:`mcpm_mobile.compiler.schedules` recognise them:

* ``mcpm.kernel``: ``"dequantize_matmul"`` or ``"dequantize_take"``
* ``mcpm.layout``: ``"NK"`` (q_weight [N, K/8], q_scale [N, K/32]), ``"KN"`` (q_weight [K/8, N],
  q_scale [K/32, N]) or ``"plain"`` (an unquantized weight [N, K])

They are marked ``op_pattern = kOpaque`` so that FuseOps leaves them whole (the epilogue, a residual
add, is a separate tiny elementwise kernel). A tied lm_head reads the embedding's own [vocab, H]
tensors through the NK kernel: nothing is transposed or copied.

Quantization math (MLC-LLM group quantization, ``quantize/group.py``): group size 32 along K,
8 codes per uint32 (lowest index in the lowest nibble), ``w = (code - 7) * scale``.
"""
from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from mcpm_mobile.model.quantization import ELEMS_PER_WORD, GROUP_SIZE, num_groups

OPAQUE = 8  # relay/relax OpPatternKind.kOpaque


def _code(word, lane):
    """4-bit code ``lane`` (0..7) of a uint32 word, as float32."""
    # int32 arithmetic (the arithmetic shift keeps the low nibble intact): index narrowing and
    # vectorisation both handle it better than uint32
    shift = ((lane % ELEMS_PER_WORD) * 4).astype("int32")
    return ((tirx.reinterpret("int32", word) >> shift) & tirx.const(0xF, "int32")).astype("float32")


def weight_fn(layout: str, w: te.Tensor, s: te.Tensor | None):
    """(n, k) -> float32 weight element, for the given storage layout."""
    seven = tirx.const(7.0, "float32")
    if layout == "NK":
        return lambda n, k: (_code(w[n, k // ELEMS_PER_WORD], k) - seven) * s[n, k // GROUP_SIZE].astype("float32")
    if layout == "KN":
        return lambda n, k: (_code(w[k // ELEMS_PER_WORD, n], k) - seven) * s[k // GROUP_SIZE, n].astype("float32")
    if layout == "plain":
        return lambda n, k: w[n, k].astype("float32")
    raise ValueError(f"unknown layout {layout}")


ROW_ALIGN = 32  # output rows are computed in whole tiles of this many (an odd vocab size is padded)


def _matmul_te(layout: str, n: int, k: int, out_dtype: str):
    # A row count that is not a multiple of the tile (vocab 122753) would put a bounds check in the
    # innermost loop (3.6x slower GEMV). Instead rows are padded: the extra rows re-read the last
    # real row (clamped index, hoisted out of the reduction) and are dropped by the final cast.
    n_pad = -(-n // ROW_ALIGN) * ROW_ALIGN
    padded = n_pad != n

    def compute(x: te.Tensor, w: te.Tensor, s: te.Tensor | None = None):
        fn = weight_fn(layout, w, s)
        if padded:
            deq = te.compute((n_pad, k), lambda i, kk: fn(te.min(i, n - 1), kk), name="dequantize")
        else:
            deq = te.compute((n, k), fn, name="dequantize")
        if x.dtype != "float32":  # converted once, not once per output row
            x = te.compute(x.shape, lambda *i: x(*i).astype("float32"), name="x_f32")
        r = te.reduce_axis((0, k), name="k")
        lead = x.shape[:-1]
        acc = te.compute((*lead, n_pad), lambda *i: te.sum(x[(*i[:-1], r)] * deq[i[-1], r], axis=r), name="matmul")
        if out_dtype == "float32" and not padded:
            return acc
        return te.compute((*lead, n), lambda *i: acc(*i).astype(out_dtype), name="cast")

    return compute


def dequantize_matmul(x: nn.Tensor, weights: list[nn.Tensor], *, layout: str, n: int, k: int,
                      out_dtype: str, name: str = "dequantize_matmul") -> nn.Tensor:
    """``x [..., K] @ W^T -> [..., N]`` with W given by ``weights`` in ``layout``."""
    attrs = {"op_pattern": OPAQUE, "mcpm.kernel": "dequantize_matmul", "mcpm.layout": layout}
    return op.tensor_expr_op(_matmul_te(layout, n, k, out_dtype), name, args=[x, *weights], attrs=attrs)


def dequantize_take(ids: nn.Tensor, weights: list[nn.Tensor], *, layout: str, hidden: int, dtype: str,
                    name: str = "dequantize_take") -> nn.Tensor:
    """Embedding lookup: rows ``ids`` of the [vocab, hidden] table, dequantized to ``dtype``."""

    def compute(ids_t: te.Tensor, w: te.Tensor, s: te.Tensor | None = None):
        fn = weight_fn(layout, w, s)
        return te.compute((ids_t.shape[0], hidden), lambda i, h: fn(ids_t[i], h).astype(dtype), name="take")

    attrs = {"op_pattern": OPAQUE, "mcpm.kernel": "dequantize_take", "mcpm.layout": layout}
    return op.tensor_expr_op(compute, name, args=[ids, *weights], attrs=attrs)


class QLinear(nn.Module):
    """A bias-free linear layer [N=out, K=in] stored as MLC writes it for the given quantization."""

    def __init__(self, in_features: int, out_features: int, model_dtype: str, quantized: bool, layout: str = "NK"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dtype = model_dtype
        if not quantized:
            self.layout = "plain"
            self.weight = nn.Parameter((out_features, in_features), model_dtype)
            return
        self.layout = layout
        g = num_groups(in_features)
        words = g * GROUP_SIZE // ELEMS_PER_WORD
        if layout == "NK":
            self.q_weight = nn.Parameter((out_features, words), "uint32")
            self.q_scale = nn.Parameter((out_features, g), model_dtype)
        elif layout == "KN":
            self.q_weight = nn.Parameter((words, out_features), "uint32")
            self.q_scale = nn.Parameter((g, out_features), model_dtype)
        else:
            raise ValueError(f"unknown layout {layout}")

    def weights(self) -> list[nn.Tensor]:
        return [self.weight] if self.layout == "plain" else [self.q_weight, self.q_scale]

    def forward(self, x: nn.Tensor, out_dtype: str | None = None) -> nn.Tensor:
        return dequantize_matmul(x, self.weights(), layout=self.layout, n=self.out_features, k=self.in_features,
                                 out_dtype=out_dtype or self.dtype)


class QEmbedding(nn.Module):
    """[vocab, hidden] embedding, quantized row-wise (NK, never transposed) or plain."""

    def __init__(self, vocab: int, hidden: int, model_dtype: str, quantized: bool):
        super().__init__()
        self.vocab, self.hidden, self.dtype = vocab, hidden, model_dtype
        if not quantized:
            self.layout = "plain"
            self.weight = nn.Parameter((vocab, hidden), model_dtype)
            return
        self.layout = "NK"
        g = num_groups(hidden)
        self.q_weight = nn.Parameter((vocab, g * GROUP_SIZE // ELEMS_PER_WORD), "uint32")
        self.q_scale = nn.Parameter((vocab, g), model_dtype)

    def weights(self) -> list[nn.Tensor]:
        return [self.weight] if self.layout == "plain" else [self.q_weight, self.q_scale]

    def forward(self, ids: nn.Tensor) -> nn.Tensor:
        return dequantize_take(ids, self.weights(), layout=self.layout, hidden=self.hidden, dtype=self.dtype)

    def lm_head_forward(self, x: nn.Tensor) -> nn.Tensor:
        """Tied head: ``x @ E^T`` read straight from the embedding tensors, float32 logits."""
        return dequantize_matmul(x, self.weights(), layout=self.layout, n=self.vocab, k=self.hidden,
                                 out_dtype="float32", name="lm_head")


def grouped_gemv_nk(n: int, k: int, out_dtype: str, lead: tuple, block: int):
    """CPU form of the one-row NK ``dequantize_matmul`` (decode), with the group scale factored out.

    Mathematically the same kernel as :func:`_matmul_te` (the CPU schedule swaps it in for a
    single row when ``K`` is a multiple of ``8 * block``), rewritten so that the inner loop does
    only ``unpack -> convert -> FMA`` per weight::

        sum_k x_k * (q_k - 7) * s_g(k)  =  sum_g s_g * (sum_{k in g} x_k * q_k  -  7 * sum_{k in g} x_k)

    The K axis is walked word-wise: ``block`` consecutive uint32 words of a row (one vector) and
    the 8 nibbles of each word (shift ``4*s``). ``x`` is permuted once per call into the matching
    order, ``xp[b, s, j] = x[8 * (b * block + j) + s]``, and ``xs[b, j] = -7 * sum_s xp[b, s, j]``
    is the zero-point term of word ``j``. Per block of words, ``inner`` accumulates the 8 nibble
    FMAs and only then is the scale of each word's group applied once (``partial``); ``acc`` sums
    the vector lanes. Everything is float32; nothing of W is materialised.

    Returns ``(compute, n_pad)``: ``compute(x, w, s)`` for the [*lead, K] activations.
    """
    n_pad = -(-n // ROW_ALIGN) * ROW_ALIGN
    words = k // ELEMS_PER_WORD
    nb = words // block
    assert nb * block == words and (block * ELEMS_PER_WORD) % GROUP_SIZE == 0
    zero = tuple(0 for _ in lead)
    seven = tirx.const(-7.0, "float32")

    def row(i):
        return te.min(i, n - 1) if n_pad != n else i

    def compute(x: te.Tensor, w: te.Tensor, s: te.Tensor):
        xp = te.compute((nb, ELEMS_PER_WORD, block),
                        lambda b, sh, j: x[(*zero, (b * block + j) * ELEMS_PER_WORD + sh)].astype("float32"),
                        name="x_perm")
        r0 = te.reduce_axis((0, ELEMS_PER_WORD), name="s0")
        xs = te.compute((nb, block), lambda b, j: te.sum(xp[b, r0, j] * seven, axis=r0), name="x_zero")
        rs = te.reduce_axis((0, ELEMS_PER_WORD), name="s")

        def nibble_dot(i, b, j):  # the zero-point term rides on the first FMA (one add per vector, not per group)
            prod = xp[b, rs, j] * _code(w[row(i), b * block + j], rs)
            return te.sum(tirx.Select(rs == 0, prod + xs[b, j], prod), axis=rs)

        inner = te.compute((n_pad, nb, block), nibble_dot, name="inner")
        rb = te.reduce_axis((0, nb), name="b")
        wpg = GROUP_SIZE // ELEMS_PER_WORD  # words per group
        gpb = block // wpg  # groups per block

        def lane_scale(i, b, j):
            # the scale of word j's group, as a select over the block's `gpb` scalars: vectorised along
            # j this is gpb broadcasts + blends with constant lane masks, not a 16-lane gather
            val = s[row(i), b * gpb + gpb - 1]
            for g in range(gpb - 2, -1, -1):
                val = tirx.Select(j < (g + 1) * wpg, s[row(i), b * gpb + g], val)
            return val.astype("float32")

        partial = te.compute((n_pad, block), lambda i, j: te.sum(lane_scale(i, rb, j) * inner[i, rb, j], axis=rb),
                             name="partial")
        rj = te.reduce_axis((0, block), name="j")
        acc = te.compute((n_pad,), lambda i: te.sum(partial[i, rj], axis=rj), name="matmul")
        return te.compute((*lead, n), lambda *i: acc[i[-1]].astype(out_dtype), name="cast")

    return compute, n_pad
