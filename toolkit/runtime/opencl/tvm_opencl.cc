// An OpenCL device for the apache-tvm wheel's runtime, which ships without one.
//
// Loaded into a process that already imported `tvm` (see opencl/__init__.py), it registers
//   "device_api.opencl"                 DeviceAPI for kDLOpenCL (alloc, free, copy, sync)
//   "ffi.Module.load_from_bytes.opencl" the loader of the "opencl" module that TVM embeds in a
//                                       model library (__tvm_ffi__library_bin)
// so a library compiled for an OpenCL target with an x86 host runs unchanged: the host code
// calls each kernel by name with (kernel arguments..., launch extents...).
//
// Device pointers are cl_mem handles; offsets travel in DLTensor::byte_offset (the runtime
// never does pointer arithmetic on them: SupportsDevicePointerArithmeticsOnHost() is false).
// One in-order command queue per process, so streams are not needed. Host<->device copies are
// blocking, device<->device copies and kernels are queued; StreamSync waits for the queue.
//
// Contracts (read from apache/tvm and apache/tvm-ffi sources, not copied):
// - serialized module: str fmt, map<str, FunctionInfo> fmap, bytes source
//   (src/backend/opencl/runtime/opencl_module.cc SaveToBytes / LoadFromBytes);
//   FunctionInfo = str name, vec<DLDataType(u8 code, u8 bits, u16 lanes)> arg_types,
//   vec<str> launch_param_tags, vec<i32> arg_extra_tags (src/runtime/metadata.h);
//   str/bytes/vec are u64 length + items, little endian (include/tvm/support/serializer.h).
// - fmt "cl": one program per kernel, each starting with "// Function: <name>\n".
// - launch tags "blockIdx.{x,y,z}" / "threadIdx.{x,y,z}" give the values after the kernel
//   arguments; a zero extent launches as 1 (src/runtime/thread_storage_scope.h).
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <tvm/ffi/cast.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mcpm_opencl {

using tvm::Device;
using tvm::runtime::DeviceAttrKind;
namespace ffi = tvm::ffi;

[[noreturn]] void Fail(const std::string& what, cl_int err) {
  TVM_FFI_THROW(RuntimeError) << "OpenCL: " << what << " failed with error " << err;
  TVM_FFI_UNREACHABLE();
}

#define CL_CHECK(call)                  \
  do {                                  \
    cl_int err_ = (call);               \
    if (err_ != CL_SUCCESS) Fail(#call, err_); \
  } while (0)

// The OpenCL device: the first device of the first platform whose name contains
// $MCPM_OPENCL_PLATFORM (any platform when unset), one context and one in-order queue.
class Context {
 public:
  static Context* Get() {
    static Context* inst = new Context();  // never destroyed: kernels may outlive static dtors
    return inst;
  }
  bool ok() const { return queue != nullptr; }
  const std::string& error() const { return error_; }
  void Require() const {
    if (!ok()) TVM_FFI_THROW(RuntimeError) << "no OpenCL device: " << error_;
  }

  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  cl_context context = nullptr;
  cl_command_queue queue = nullptr;
  std::mutex mu;  // clSetKernelArg + clEnqueueNDRangeKernel must not interleave

 private:
  Context() {
    cl_uint n = 0;
    if (clGetPlatformIDs(0, nullptr, &n) != CL_SUCCESS || n == 0) {
      error_ = "no OpenCL platform (is an ICD such as pocl-opencl-icd installed?)";
      return;
    }
    std::vector<cl_platform_id> platforms(n);
    clGetPlatformIDs(n, platforms.data(), nullptr);
    const char* want = std::getenv("MCPM_OPENCL_PLATFORM");
    for (cl_platform_id p : platforms) {
      char name[256] = {0};
      clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof(name) - 1, name, nullptr);
      if (want && *want && std::strstr(name, want) == nullptr) continue;
      cl_device_id d;
      cl_uint nd = 0;
      if (clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &d, &nd) != CL_SUCCESS || nd == 0) continue;
      cl_int err;
      cl_context ctx = clCreateContext(nullptr, 1, &d, nullptr, nullptr, &err);
      if (err != CL_SUCCESS) continue;
      cl_command_queue q = clCreateCommandQueue(ctx, d, 0, &err);
      if (err != CL_SUCCESS) {
        clReleaseContext(ctx);
        continue;
      }
      platform = p, device = d, context = ctx, queue = q;
      return;
    }
    error_ = want ? std::string("no OpenCL platform named like '") + want + "' has a device"
                  : "no OpenCL platform has a device";
  }
  std::string error_;
};

std::string DeviceString(cl_device_info what) {
  Context* c = Context::Get();
  size_t n = 0;
  clGetDeviceInfo(c->device, what, 0, nullptr, &n);
  std::string s(n, '\0');
  clGetDeviceInfo(c->device, what, n, s.data(), nullptr);
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

template <typename T>
T DeviceValue(cl_device_info what) {
  T v{};
  clGetDeviceInfo(Context::Get()->device, what, sizeof(T), &v, nullptr);
  return v;
}

class OpenCLDeviceAPI final : public tvm::runtime::DeviceAPI {
 public:
  static OpenCLDeviceAPI* Global() {
    static auto* inst = new OpenCLDeviceAPI();
    return inst;
  }

  void SetDevice(Device dev) final { CheckId(dev); }

  void GetAttr(Device dev, DeviceAttrKind kind, ffi::Any* rv) final {
    Context* c = Context::Get();
    if (kind == tvm::runtime::kExist) {
      *rv = static_cast<int>(c->ok() && dev.device_id == 0);
      return;
    }
    if (!c->ok() || dev.device_id != 0) return;
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(DeviceValue<size_t>(CL_DEVICE_MAX_WORK_GROUP_SIZE));
        break;
      case tvm::runtime::kWarpSize:
        *rv = 1;
        break;
      case tvm::runtime::kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(DeviceValue<cl_ulong>(CL_DEVICE_LOCAL_MEM_SIZE));
        break;
      case tvm::runtime::kDeviceName:
        *rv = ffi::String(DeviceString(CL_DEVICE_NAME));
        break;
      case tvm::runtime::kMaxClockRate:
        *rv = static_cast<int64_t>(DeviceValue<cl_uint>(CL_DEVICE_MAX_CLOCK_FREQUENCY));
        break;
      case tvm::runtime::kMultiProcessorCount:
        *rv = static_cast<int64_t>(DeviceValue<cl_uint>(CL_DEVICE_MAX_COMPUTE_UNITS));
        break;
      case tvm::runtime::kMaxThreadDimensions: {
        size_t dims[3] = {1, 1, 1};
        clGetDeviceInfo(c->device, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof(dims), dims, nullptr);
        *rv = ffi::String("[" + std::to_string(dims[0]) + ", " + std::to_string(dims[1]) + ", " +
                          std::to_string(dims[2]) + "]");
        break;
      }
      case tvm::runtime::kApiVersion:
        *rv = ffi::String(DeviceString(CL_DEVICE_VERSION));
        break;
      case tvm::runtime::kDriverVersion:
        *rv = ffi::String(DeviceString(CL_DRIVER_VERSION));
        break;
      case tvm::runtime::kTotalGlobalMemory:
        *rv = static_cast<int64_t>(DeviceValue<cl_ulong>(CL_DEVICE_GLOBAL_MEM_SIZE));
        break;
      default:
        break;
    }
  }

  void* AllocDataSpace(Device dev, size_t nbytes, size_t alignment, DLDataType type_hint) final {
    CheckId(dev);
    cl_int err;
    // a zero-byte tensor still needs a valid handle
    cl_mem m = clCreateBuffer(Context::Get()->context, CL_MEM_READ_WRITE, nbytes ? nbytes : 1,
                              nullptr, &err);
    if (err != CL_SUCCESS) Fail("clCreateBuffer(" + std::to_string(nbytes) + " bytes)", err);
    return m;
  }

  void FreeDataSpace(Device dev, void* ptr) final {
    if (ptr != nullptr) CL_CHECK(clReleaseMemObject(static_cast<cl_mem>(ptr)));
  }

  void StreamSync(Device dev, TVMStreamHandle stream) final {
    CheckId(dev);
    CL_CHECK(clFinish(Context::Get()->queue));
  }

  bool SupportsDevicePointerArithmeticsOnHost() final { return false; }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset,
                      size_t size, Device dev_from, Device dev_to, DLDataType type_hint,
                      TVMStreamHandle stream) final {
    if (size == 0) return;
    cl_command_queue q = Context::Get()->queue;
    bool src_cl = dev_from.device_type == kDLOpenCL, dst_cl = dev_to.device_type == kDLOpenCL;
    auto src_mem = static_cast<cl_mem>(const_cast<void*>(from));
    auto dst_mem = static_cast<cl_mem>(to);
    if (src_cl && dst_cl) {
      CL_CHECK(clEnqueueCopyBuffer(q, src_mem, dst_mem, from_offset, to_offset, size, 0, nullptr,
                                   nullptr));
    } else if (dst_cl && IsHost(dev_from)) {
      CL_CHECK(clEnqueueWriteBuffer(q, dst_mem, CL_TRUE, to_offset, size,
                                    static_cast<const char*>(from) + from_offset, 0, nullptr,
                                    nullptr));
    } else if (src_cl && IsHost(dev_to)) {
      CL_CHECK(clEnqueueReadBuffer(q, src_mem, CL_TRUE, from_offset, size,
                                   static_cast<char*>(to) + to_offset, 0, nullptr, nullptr));
    } else {
      TVM_FFI_THROW(RuntimeError) << "OpenCL: cannot copy from device type " << dev_from.device_type
                                  << " to " << dev_to.device_type;
    }
  }

 private:
  static bool IsHost(Device d) {
    return d.device_type == kDLCPU || d.device_type == kDLCUDAHost || d.device_type == kDLROCMHost;
  }
  static void CheckId(Device dev) {
    Context::Get()->Require();
    if (dev.device_id != 0) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL: only device 0 exists (got " << dev.device_id << ")";
    }
  }
};

// --- the "opencl" module --------------------------------------------------------------------

class Reader {
 public:
  Reader(const char* data, size_t size) : p_(data), end_(data + size) {}
  template <typename T>
  T Pod() {
    Need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  std::string Str() {
    uint64_t n = Pod<uint64_t>();
    Need(n);
    std::string s(p_, n);
    p_ += n;
    return s;
  }

 private:
  void Need(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL module: truncated serialized module";
    }
  }
  const char* p_;
  const char* end_;
};

struct KernelInfo {
  std::vector<DLDataType> arg_types;
  std::vector<int> launch_axes;  // 0-2: blockIdx.x-z (groups), 3-5: threadIdx.x-z (local size)
  cl_uint work_dim = 1;
};

int LaunchAxis(const std::string& tag) {
  static const char* axes[6] = {"blockIdx.x", "blockIdx.y", "blockIdx.z",
                                "threadIdx.x", "threadIdx.y", "threadIdx.z"};
  for (int i = 0; i < 6; ++i) {
    if (tag == axes[i]) return i;
  }
  TVM_FFI_THROW(RuntimeError) << "OpenCL module: unsupported launch parameter '" << tag << "'";
  TVM_FFI_UNREACHABLE();
}

class OpenCLModule : public ffi::ModuleObj {
 public:
  OpenCLModule(std::string fmt, std::map<std::string, KernelInfo> kernels, std::string source)
      : fmt_(std::move(fmt)), kernels_(std::move(kernels)), source_(std::move(source)) {
    const std::string mark = "// Function: ";
    size_t pos = source_.find(mark);
    while (pos != std::string::npos) {
      size_t name_end = source_.find('\n', pos);
      if (name_end == std::string::npos) break;
      std::string name = source_.substr(pos + mark.size(), name_end - pos - mark.size());
      size_t next = source_.find(mark, name_end);
      programs_src_[name] = source_.substr(name_end + 1, next == std::string::npos
                                                             ? std::string::npos
                                                             : next - name_end - 1);
      pos = next;
    }
  }

  const char* kind() const final { return "opencl"; }
  int GetPropertyMask() const final { return ffi::Module::kRunnable; }

  ffi::String InspectSource(const ffi::String& format) const final { return source_; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    ffi::ObjectPtr<ffi::Object> self = ffi::GetObjectPtr<ffi::Object>(this);
    std::string kname = it->first;
    const KernelInfo* info = &it->second;
    return ffi::Function::FromPacked([self, this, kname, info](ffi::PackedArgs args, ffi::Any* rv) {
      Launch(kname, *info, args);
    });
  }

 private:
  cl_kernel Kernel(const std::string& name) {
    auto found = cl_kernels_.find(name);
    if (found != cl_kernels_.end()) return found->second;
    Context* c = Context::Get();
    c->Require();
    if (fmt_ != "cl") {
      TVM_FFI_THROW(RuntimeError) << "OpenCL module: format '" << fmt_ << "' is not supported "
                                  << "(only OpenCL C source, 'cl')";
    }
    auto src = programs_src_.find(name);
    const std::string& text = src == programs_src_.end() ? source_ : src->second;
    const char* p = text.c_str();
    size_t len = text.size();
    cl_int err;
    cl_program program = clCreateProgramWithSource(c->context, 1, &p, &len, &err);
    if (err != CL_SUCCESS) Fail("clCreateProgramWithSource(" + name + ")", err);
    err = clBuildProgram(program, 1, &c->device, nullptr, nullptr, nullptr);
    if (err != CL_SUCCESS) {
      size_t n = 0;
      clGetProgramBuildInfo(program, c->device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &n);
      std::string log(n, '\0');
      clGetProgramBuildInfo(program, c->device, CL_PROGRAM_BUILD_LOG, n, log.data(), nullptr);
      clReleaseProgram(program);
      TVM_FFI_THROW(RuntimeError) << "OpenCL: building kernel " << name << " failed (error " << err
                                  << "):\n" << log;
    }
    cl_kernel k = clCreateKernel(program, name.c_str(), &err);
    clReleaseProgram(program);  // the kernel keeps it alive
    if (err != CL_SUCCESS) Fail("clCreateKernel(" + name + ")", err);
    cl_kernels_[name] = k;
    return k;
  }

  void Launch(const std::string& name, const KernelInfo& info, ffi::PackedArgs args) {
    size_t nargs = info.arg_types.size();
    if (static_cast<size_t>(args.size()) < nargs + info.launch_axes.size()) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL kernel " << name << ": expected "
                                  << nargs + info.launch_axes.size() << " arguments, got "
                                  << args.size();
    }
    const TVMFFIAny* raw = reinterpret_cast<const TVMFFIAny*>(args.data());
    Context* c = Context::Get();
    std::lock_guard<std::mutex> lock(c->mu);
    cl_kernel k = Kernel(name);
    for (size_t i = 0; i < nargs; ++i) SetArg(name, k, static_cast<cl_uint>(i), info.arg_types[i], raw[i]);
    size_t extent[6] = {1, 1, 1, 1, 1, 1};
    for (size_t j = 0; j < info.launch_axes.size(); ++j) {
      int64_t v = raw[nargs + j].v_int64;
      if (v > 0) extent[info.launch_axes[j]] = static_cast<size_t>(v);
    }
    size_t global[3], local[3];
    for (int d = 0; d < 3; ++d) {
      local[d] = extent[3 + d];
      global[d] = extent[d] * extent[3 + d];
    }
    cl_int err = clEnqueueNDRangeKernel(c->queue, k, info.work_dim, nullptr, global, local, 0,
                                        nullptr, nullptr);
    if (err != CL_SUCCESS) Fail("launching kernel " + name, err);
  }

  static void SetArg(const std::string& name, cl_kernel k, cl_uint i, DLDataType t,
                     const TVMFFIAny& a) {
    cl_int err = CL_SUCCESS;
    if (t.code == kDLOpaqueHandle) {
      cl_mem m = nullptr;
      if (a.type_index == kTVMFFIDLTensorPtr) {
        m = static_cast<cl_mem>(static_cast<DLTensor*>(a.v_ptr)->data);
      } else if (a.type_index != kTVMFFINone) {
        m = static_cast<cl_mem>(a.v_ptr);
      }
      err = clSetKernelArg(k, i, sizeof(cl_mem), &m);
    } else if (t.code == kDLInt || t.code == kDLUInt) {
      int64_t v = a.v_int64;
      if (t.bits == 64) {
        err = clSetKernelArg(k, i, 8, &v);
      } else if (t.bits == 32) {
        int32_t v32 = static_cast<int32_t>(v);
        err = clSetKernelArg(k, i, 4, &v32);
      } else if (t.bits == 16) {
        int16_t v16 = static_cast<int16_t>(v);
        err = clSetKernelArg(k, i, 2, &v16);
      } else if (t.bits == 8 || t.bits == 1) {
        int8_t v8 = static_cast<int8_t>(v);
        err = clSetKernelArg(k, i, 1, &v8);
      } else {
        BadType(name, i, t);
      }
    } else if (t.code == kDLFloat && t.bits == 32) {
      float f = static_cast<float>(a.v_float64);
      err = clSetKernelArg(k, i, 4, &f);
    } else if (t.code == kDLFloat && t.bits == 64) {
      double d = a.v_float64;
      err = clSetKernelArg(k, i, 8, &d);
    } else {
      BadType(name, i, t);
    }
    if (err != CL_SUCCESS) Fail("setting argument " + std::to_string(i) + " of kernel " + name, err);
  }

  [[noreturn]] static void BadType(const std::string& name, cl_uint i, DLDataType t) {
    TVM_FFI_THROW(RuntimeError) << "OpenCL kernel " << name << ": argument " << i
                                << " has unsupported type code " << int(t.code) << " bits "
                                << int(t.bits);
    TVM_FFI_UNREACHABLE();
  }

  std::string fmt_;
  std::map<std::string, KernelInfo> kernels_;
  std::string source_;
  std::map<std::string, std::string> programs_src_;
  std::map<std::string, cl_kernel> cl_kernels_;  // released with the context at process exit
};

ffi::Module LoadFromBytes(const ffi::Bytes& bytes) {
  Reader r(bytes.data(), bytes.size());
  std::string fmt = r.Str();
  std::map<std::string, KernelInfo> kernels;
  uint64_t n = r.Pod<uint64_t>();
  for (uint64_t i = 0; i < n; ++i) {
    std::string key = r.Str();
    r.Str();  // FunctionInfo.name (== key)
    KernelInfo info;
    uint64_t nargs = r.Pod<uint64_t>();
    for (uint64_t a = 0; a < nargs; ++a) {
      DLDataType t;
      t.code = r.Pod<uint8_t>();
      t.bits = r.Pod<uint8_t>();
      t.lanes = r.Pod<uint16_t>();
      if (t.lanes != 1) {
        TVM_FFI_THROW(RuntimeError) << "OpenCL kernel " << key << ": vector argument " << a;
      }
      info.arg_types.push_back(t);
    }
    uint64_t ntags = r.Pod<uint64_t>();
    for (uint64_t j = 0; j < ntags; ++j) {
      int axis = LaunchAxis(r.Str());
      info.launch_axes.push_back(axis);
      info.work_dim = std::max<cl_uint>(info.work_dim, static_cast<cl_uint>(axis % 3 + 1));
    }
    uint64_t nextra = r.Pod<uint64_t>();
    for (uint64_t j = 0; j < nextra; ++j) {
      if (r.Pod<int32_t>() != 0) {
        TVM_FFI_THROW(RuntimeError) << "OpenCL kernel " << key << ": tagged argument " << j;
      }
    }
    kernels[key] = std::move(info);
  }
  std::string source = r.Str();
  return ffi::Module(ffi::make_object<OpenCLModule>(std::move(fmt), std::move(kernels),
                                                    std::move(source)));
}

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def_packed("device_api.opencl",
                  [](ffi::PackedArgs, ffi::Any* rv) {
                    *rv = static_cast<void*>(
                        static_cast<tvm::runtime::DeviceAPI*>(OpenCLDeviceAPI::Global()));
                  })
      .def("ffi.Module.load_from_bytes.opencl", LoadFromBytes)
      .def("mcpm.opencl.device_name", []() -> ffi::String {
        Context* c = Context::Get();
        c->Require();
        return DeviceString(CL_DEVICE_NAME) + " (" + DeviceString(CL_DEVICE_VERSION) + ")";
      })
      .def("mcpm.opencl.device_extensions", []() -> ffi::String {
        Context::Get()->Require();
        return DeviceString(CL_DEVICE_EXTENSIONS);
      });
}

}  // namespace mcpm_opencl
