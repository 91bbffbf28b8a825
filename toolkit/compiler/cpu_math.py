"""Host-CPU legalizations of element-wise operators whose default lowering calls libm per element.

TVM legalizes ``nn.silu`` to ``x * sigmoid(x)`` in the model dtype, and LLVM turns each sigmoid into a
scalar ``expf`` call even in a vectorised loop. Here SiLU is computed in float32 with TVM's polynomial
``fast_exp`` (bit operations and FMAs that vectorise; relative error ~1e-7) and rounded once.
"""
from __future__ import annotations

from tvm import topi


def _silu(bb, call):
    def silu(x):
        xf = topi.cast(x, "float32")
        return topi.cast(topi.divide(xf, topi.add(topi.fast_exp(topi.negative(xf)), 1.0)), x.dtype)

    return bb.call_te(silu, call.args[0], primfunc_name_hint="silu")


LEGALIZE = {"relax.nn.silu": _silu}
