// A low-overhead per-call timer for the Relax VM: an instrument function in C++ (no Python per call).
//
// Registered as global functions when the shared object is loaded (bench/vmprof.py builds and loads it):
//   mcpm.vmprof.instrument  the VM instrument (VirtualMachine.set_instrument): steady_clock before and
//                           after every Call instruction, summed per callee name (inclusive time)
//   mcpm.vmprof.reset       forget every sum
//   mcpm.vmprof.report      "name\tcalls\tnanoseconds\n" per callee
// The VM passes (func, name, before_run, ret, args...) and reads an int back (0: run the call).
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Sum {
  int64_t calls = 0;
  int64_t ns = 0;
};

std::unordered_map<std::string, Sum> sums;
std::vector<int64_t> started;  // a stack: a VM function called from the VM nests its calls

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void instrument(tvm::ffi::PackedArgs args, tvm::ffi::Any* rv) {
  int64_t t = now_ns();
  if (args[2].cast<bool>()) {
    started.push_back(now_ns());
  } else {
    Sum& s = sums[args[1].cast<std::string>()];
    s.calls += 1;
    s.ns += t - started.back();
    started.pop_back();
  }
  *rv = static_cast<int64_t>(0);
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def_packed("mcpm.vmprof.instrument", instrument)
      .def("mcpm.vmprof.reset", []() {
        sums.clear();
        started.clear();
      })
      .def("mcpm.vmprof.report", []() -> std::string {
        std::ostringstream out;
        for (const auto& kv : sums) out << kv.first << '\t' << kv.second.calls << '\t' << kv.second.ns << '\n';
        return out.str();
      });
}
