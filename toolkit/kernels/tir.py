"""What the conversion kernels share: TIR expression helpers and the host build.

Lane folds (pairwise trees over a vector's lanes), stored-dtype loads (bfloat16 from its uint16 bits),
the NaN/Inf bit test, and ``no_fma``: TVM's LLVM backend contracts ``a * b + c`` into one fused
multiply-add (one rounding, where numpy rounds the product first), which moves near-ties.
"""
from __future__ import annotations

SOURCE = {"BF16": "uint16", "F16": "float16", "F32": "float32"}  # stored dtype -> kernel input (bf16 as its bits)
F32_MAX = 3.4028234663852886e38


def fold(v, lanes: int, op, tirx, bind: bool = False):
    """Combine lanes 2i and 2i+1 (``lanes`` -> ``lanes // 2``). With ``bind``, ``v`` is bound to a variable
    first, so that nested folds of an expression that is used twice per step stay linear in size (floats
    only: TVM's analyzer cannot bind a vector holding a boolean cast)."""
    if not bind:
        return op(tirx.Shuffle([v], list(range(0, lanes, 2))), tirx.Shuffle([v], list(range(1, lanes, 2))))
    var = tirx.Var("f", v.ty)
    return tirx.Let(var, v, fold(var, lanes, op, tirx))


def fold_all(v, lanes: int, op, tirx, until: int = 1, bind: bool = False):
    while lanes > until:
        v, lanes = fold(v, lanes, op, tirx, bind), lanes // 2
    return v


def any_lane(v, lanes: int, tirx):
    """OR of the lanes of an int32 vector."""
    return fold_all(v, lanes, lambda a, b: a | b, tirx)


def first_abs_max(v, lanes: int, T, tirx):
    """The value of largest magnitude, the first one on a tie (numpy's ``v[argmax(abs(v))]``)."""
    return fold_all(v, lanes, lambda a, b: T.Select(T.fabs(a) >= T.fabs(b), a, b), tirx, bind=True)


def load_f32(v, source: str, lanes: int, T):
    """Stored lanes (a ``SOURCE`` value) as float32, exactly."""
    if source == "uint16":
        return T.reinterpret(f"float32x{lanes}", T.shift_left(T.Cast(f"uint32x{lanes}", v),
                                                              T.Broadcast(T.uint32(16), lanes)))
    return T.Cast(f"float32x{lanes}", v) if source != "float32" else v


def not_finite(x, lanes: int, T):
    """Per lane: NaN or Inf, by the exponent bits (LLVM may fold ``x != x`` under fast-math)."""
    if lanes == 1:
        return (T.reinterpret("uint32", x) & T.uint32(0x7F800000)) == T.uint32(0x7F800000)
    exp = T.Broadcast(T.uint32(0x7F800000), lanes)
    return (T.reinterpret(f"uint32x{lanes}", x) & exp) == exp


def no_fma(product, lanes: int, T):
    """``product`` behind a barrier, for a product that is then added: ``min(p, FLT_MAX)`` keeps every finite
    product as it is and stops LLVM from fusing the multiply into the add."""
    return T.min(product, T.Broadcast(T.float32(F32_MAX), lanes))


def f16_byte(x, byte: int, T):
    """Byte ``byte`` (0: low) of the float16 rounding of float32 ``x``, as GGUF stores its scales."""
    bits = T.reinterpret("uint16", T.Cast("float16", x))
    return T.Cast("uint8", T.shift_right(bits, T.uint16(8)) if byte else bits & T.uint16(255))


def build_host(func):
    """A TVMScript PrimFunc -> the module compiled for this CPU (its ``main``)."""
    import tvm
    from tvm.target import codegen

    host = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "mtriple": codegen.llvm_get_system_triple()}
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target(host))
