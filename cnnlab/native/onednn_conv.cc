// 2-D convolutions for XLA:CPU through oneDNN, reached from JAX by jax.ffi (cnnlab/native/conv.py).
//
// XLA:CPU runs every `convolution` through a generic Eigen kernel and moves activations into the [C, H, W, N]
// layout its weight-gradient convolution wants; oneDNN (the library PyTorch's CPU convolutions run on) has
// convolution kernels tuned per instruction set, for the forward pass and both gradients, on NHWC data.
//
// Three handlers, all float32, NHWC activations and HWIO kernels (flax's nn.Conv layouts), one group:
//   cnnlab_conv_fwd          (x, w)  -> y  = conv(x, w)
//   cnnlab_conv_bwd_data     (dy, w) -> dx = the input gradient for output gradient dy
//   cnnlab_conv_bwd_weights  (x, dy) -> dw = the kernel gradient for output gradient dy
// Attributes (int64 arrays of 2, for H and W): strides, pad_lo, pad_hi, dilation (1 = none). Shapes come from
// the buffers. Primitives are built once per geometry and cached; the kernel is reordered to and from the layout
// the chosen implementation wants on every call (it changes every step, and it is small).
//
// Build: python -m cnnlab.native build (scripts/install.sh runs it).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Span = ffi::Span<const int64_t>;

namespace {

constexpr auto kF32 = memory::data_type::f32;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A grow-only, 64-byte-aligned buffer per thread and slot: scratchpads and reordered kernels.
class Scratch {
 public:
  ~Scratch() { std::free(data_); }
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

thread_local Scratch scratchpad_buffer;
thread_local Scratch kernel_buffer;

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

struct Geometry {
  memory::dims src, weights, dst, strides, dilates, pad_lo, pad_hi;  // oneDNN's logical N C H W / O I H W

  std::string key(char kind) const {
    std::ostringstream out;
    out << kind;
    for (const auto* dims : {&src, &weights, &dst, &strides, &dilates, &pad_lo, &pad_hi}) {
      out << '|';
      for (auto d : *dims) out << d << ',';
    }
    return out.str();
  }
};

// x: [N, H, W, C], w: [KH, KW, I, O], y: [N, OH, OW, O] (NHWC / HWIO as flax lays them out).
Geometry make_geometry(Span x, Span w, Span y, Span strides, Span pad_lo, Span pad_hi, Span dilation) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) throw std::invalid_argument("rank-4 NHWC/HWIO arrays only");
  if (strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2 || dilation.size() != 2)
    throw std::invalid_argument("strides, pad_lo, pad_hi and dilation need 2 values each");
  if (x[3] != w[2] || y[3] != w[3] || x[0] != y[0])
    throw std::invalid_argument("inconsistent shapes (groups are not supported)");
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.weights = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {strides[0], strides[1]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1};  // oneDNN counts the gaps
  g.pad_lo = {pad_lo[0], pad_lo[1]};
  g.pad_hi = {pad_hi[0], pad_hi[1]};
  return g;
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory::desc activations(const memory::dims& dims) { return memory::desc(dims, kF32, Tag::nhwc); }
memory::desc user_kernel(const memory::dims& dims) { return memory::desc(dims, kF32, Tag::hwio); }

dnnl::convolution_forward::primitive_desc forward_pd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, activations(g.src),
      memory::desc(g.weights, kF32, Tag::any), activations(g.dst), g.strides, g.dilates, g.pad_lo, g.pad_hi,
      user_scratchpad());
}

// One cached primitive, with the reorder between the user's HWIO kernel and the primitive's kernel layout
// (absent when the primitive takes HWIO itself).
struct Entry {
  dnnl::primitive primitive;
  memory::desc kernel_desc;  // the layout the primitive reads or writes its kernel (or kernel gradient) in
  memory::desc scratchpad_desc;
  std::unique_ptr<dnnl::reorder> kernel_reorder;
  std::string impl;
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>> cache;

template <typename Primitive, typename PD>
std::shared_ptr<Entry> make_entry(const PD& pd, const memory::desc& kernel_desc) {
  auto entry = std::make_shared<Entry>();
  entry->kernel_desc = kernel_desc;
  entry->scratchpad_desc = pd.scratchpad_desc();
  entry->impl = pd.impl_info_str();
  entry->primitive = Primitive(pd);
  return entry;
}

std::shared_ptr<Entry> lookup(char kind, const Geometry& g) {
  std::string key = g.key(kind);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto hint = forward_pd(g);
  auto any_kernel = memory::desc(g.weights, kF32, Tag::any);
  std::shared_ptr<Entry> entry;
  if (kind == 'f') {
    entry = make_entry<dnnl::convolution_forward>(hint, hint.weights_desc());
  } else if (kind == 'd') {
    dnnl::convolution_backward_data::primitive_desc pd(
        cpu_engine(), dnnl::algorithm::convolution_direct, activations(g.src), any_kernel, activations(g.dst),
        g.strides, g.dilates, g.pad_lo, g.pad_hi, hint, user_scratchpad());
    entry = make_entry<dnnl::convolution_backward_data>(pd, pd.weights_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        cpu_engine(), dnnl::algorithm::convolution_direct, activations(g.src), any_kernel, activations(g.dst),
        g.strides, g.dilates, g.pad_lo, g.pad_hi, hint, user_scratchpad());
    entry = make_entry<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc());
  }
  memory::desc user = user_kernel(g.weights);
  if (entry->kernel_desc != user) {
    auto rpd = kind == 'w' ? dnnl::reorder::primitive_desc(cpu_engine(), entry->kernel_desc, cpu_engine(), user)
                           : dnnl::reorder::primitive_desc(cpu_engine(), user, cpu_engine(), entry->kernel_desc);
    entry->kernel_reorder = std::make_unique<dnnl::reorder>(rpd);
  }
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto inserted = cache.emplace(key, entry);  // another thread may have built it meanwhile: keep the first
  return inserted.first->second;
}

// Runs one primitive. x, w, y are the shapes of the convolution's input, kernel and output (NHWC, HWIO, NHWC);
// `a` and `b` are the two activation buffers (x and y for the forward pass, dy and dx for the data gradient,
// x and dy for the kernel gradient) and `kernel` the user's HWIO kernel (an input, or the kernel gradient).
ffi::Error run(char kind, Span x, Span w, Span y, Span strides, Span pad_lo, Span pad_hi, Span dilation, void* a,
               void* b, void* kernel) {
  try {
    auto g = make_geometry(x, w, y, strides, pad_lo, pad_hi, dilation);
    auto entry = lookup(kind, g);
    auto& engine = cpu_engine();
    auto& stream = thread_stream();
    memory user_kernel_mem(user_kernel(g.weights), engine, kernel);
    memory kernel_mem = user_kernel_mem;
    if (entry->kernel_reorder) {
      kernel_mem = memory(entry->kernel_desc, engine, kernel_buffer.get(entry->kernel_desc.get_size()));
    }
    memory scratch(entry->scratchpad_desc, engine, scratchpad_buffer.get(entry->scratchpad_desc.get_size() + 1));
    if (kind == 'f') {
      if (entry->kernel_reorder) entry->kernel_reorder->execute(stream, user_kernel_mem, kernel_mem);
      entry->primitive.execute(stream, {{DNNL_ARG_SRC, memory(activations(g.src), engine, a)},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DST, memory(activations(g.dst), engine, b)},
                                        {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == 'd') {
      if (entry->kernel_reorder) entry->kernel_reorder->execute(stream, user_kernel_mem, kernel_mem);
      entry->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, memory(activations(g.dst), engine, a)},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DIFF_SRC, memory(activations(g.src), engine, b)},
                                        {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      entry->primitive.execute(stream, {{DNNL_ARG_SRC, memory(activations(g.src), engine, a)},
                                        {DNNL_ARG_DIFF_DST, memory(activations(g.dst), engine, b)},
                                        {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratch}});
      if (entry->kernel_reorder) entry->kernel_reorder->execute(stream, kernel_mem, user_kernel_mem);
    }
    stream.wait();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("cnnlab oneDNN convolution: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::InvalidArgument(std::string("cnnlab oneDNN convolution: ") + e.what());
  }
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   Span strides, Span pad_lo, Span pad_hi, Span dilation) {
  return run('f', x.dimensions(), w.dimensions(), y->dimensions(), strides, pad_lo, pad_hi, dilation,
             x.untyped_data(), y->untyped_data(), w.untyped_data());
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       Span strides, Span pad_lo, Span pad_hi, Span dilation) {
  return run('d', dx->dimensions(), w.dimensions(), dy.dimensions(), strides, pad_lo, pad_hi, dilation,
             dy.untyped_data(), dx->untyped_data(), w.untyped_data());
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          Span strides, Span pad_lo, Span pad_hi, Span dilation) {
  return run('w', x.dimensions(), dw->dimensions(), dy.dimensions(), strides, pad_lo, pad_hi, dilation,
             x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

}  // namespace

#define CNNLAB_CONV_BINDING()                                                         \
  ffi::Ffi::Bind()                                                                                 \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                \
      .Attr<Span>("strides")                                                                       \
      .Attr<Span>("pad_lo")                                                                        \
      .Attr<Span>("pad_hi")                                                                        \
      .Attr<Span>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnlab_conv_fwd, ConvFwd, CNNLAB_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnlab_conv_bwd_data, ConvBwdData, CNNLAB_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnlab_conv_bwd_weights, ConvBwdWeights, CNNLAB_CONV_BINDING());

// The implementation oneDNN chose for each cached primitive, one per line ("kind shapes: impl"), for the
// benchmark's record of what really ran. Returns the number of bytes needed (including the final NUL).
extern "C" size_t cnnlab_conv_impls(char* out, size_t capacity) {
  std::ostringstream text;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    for (const auto& [key, entry] : cache) text << key << ": " << entry->impl << '\n';
  }
  std::string s = text.str();
  if (out != nullptr && capacity > 0) {
    size_t n = std::min(capacity - 1, s.size());
    std::memcpy(out, s.data(), n);
    out[n] = '\0';
  }
  return s.size() + 1;
}
