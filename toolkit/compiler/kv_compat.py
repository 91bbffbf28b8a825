"""Keep the KV-cache constructor loadable by older runtimes: a 5-entry config when the 6th is the default.

apache-tvm 0.27's ``TIRPagedKVCache`` passes ``vm.builtin.paged_attention_kv_cache_create`` a config of
6 entries (the 6th, ``layer_sliding_window_size``, added by apache/tvm 27c2e019, 2026-08-12). Runtimes
before that commit require exactly 5 (``ICHECK_EQ(cache_config.size(), 5)`` in
``src/runtime/vm/paged_kv_cache.cc``); newer ones read a missing 6th as 1024. So with the 6th at 1024
dropping it changes nothing for new runtimes and lets runtimes back to apache/tvm 141c22fd (mlc-llm
46a1d117, v0.20.0) create the cache. Sources: docs/contracts.md.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

KV_CREATE = "vm.builtin.paged_attention_kv_cache_create"
RUNTIME_DEFAULT_LAYER_WINDOW = 1024


@mutator
class _FiveEntries(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not call.args or not isinstance(call.args[0], relax.ExternFunc) or call.args[0].global_symbol != KV_CREATE:
            return call
        config = call.args[1]
        if isinstance(config, relax.ShapeExpr) and len(config.values) == 6 and \
                isinstance(config.values[5], tvm.tirx.IntImm) and int(config.values[5]) == RUNTIME_DEFAULT_LAYER_WINDOW:
            args = [call.args[0], relax.ShapeExpr(list(config.values[:5])), *call.args[2:]]
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        return call

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.finalize()


@tvm.transform.module_pass(opt_level=0, name="FiveEntryKVConfig")
def FiveEntryKVConfig(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    return _FiveEntries(mod).run()
