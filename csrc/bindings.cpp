// nanobind module sparsecnn._core. Tensors arrive zero-copy through DLPack (any framework:
// torch, numpy); every array is checked for device, dtype, rank and size here, the core checks
// the rest, and all failures surface as Python exceptions (TypeError / ValueError /
// OverflowError / MemoryError). The GIL is released while kernels run.
#include <cmath>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "core.hpp"
#include "thread_pool.hpp"

namespace nb = nanobind;
using Arr = nb::ndarray<nb::ro>;
using OutArr = nb::ndarray<>;

namespace {

template <class A>
void check_cpu(const A& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value)
    throw nb::type_error((std::string(name) + ": expected a CPU tensor (device type " +
                          std::to_string(a.device_type()) + " given)").c_str());
}

template <class A>
void check_dtype(const A& a, nb::dlpack::dtype want, const char* name, const char* want_name) {
  if (a.dtype() != want)
    throw nb::type_error((std::string(name) + ": expected dtype " + want_name + ", got code " +
                          std::to_string(a.dtype().code) + " with " +
                          std::to_string(a.dtype().bits) + " bits").c_str());
}

template <class A>
void check_contig1d(const A& a, const char* name) {
  if (a.ndim() != 1)
    throw std::invalid_argument(std::string(name) + ": expected a 1-D array, got " +
                                std::to_string(a.ndim()) + "-D");
  if (a.shape(0) > 1 && a.stride(0) != 1)
    throw std::invalid_argument(std::string(name) + ": must be contiguous");
}

scnn::Csr make_csr(const Arr& values, const Arr& col, const Arr& row_ptr, const char* what) {
  check_cpu(values, "values");
  check_cpu(col, "col_idx");
  check_cpu(row_ptr, "row_ptr");
  check_dtype(values, nb::dtype<float>(), "values", "float32");
  check_dtype(row_ptr, nb::dtype<int32_t>(), "row_ptr", "int32");
  const bool col16 = col.dtype() == nb::dtype<int16_t>() || col.dtype() == nb::dtype<uint16_t>();
  if (!col16) check_dtype(col, nb::dtype<int32_t>(), "col_idx", "int16 or int32");
  check_contig1d(values, "values");
  check_contig1d(col, "col_idx");
  check_contig1d(row_ptr, "row_ptr");
  if (values.shape(0) != col.shape(0))
    throw std::invalid_argument(std::string(what) + ": values and col_idx differ in length");
  if (row_ptr.shape(0) < 1) throw std::invalid_argument(std::string(what) + ": row_ptr is empty");
  scnn::Csr m;
  m.values = static_cast<const float*>(values.data());
  m.col = col.data();
  m.col16 = col16;
  m.row_ptr = static_cast<const int32_t*>(row_ptr.data());
  m.rows = static_cast<int64_t>(row_ptr.shape(0)) - 1;
  m.nnz = static_cast<int64_t>(values.shape(0));
  return m;
}

const float* bias_ptr(const std::optional<Arr>& bias, int64_t n) {
  if (!bias) return nullptr;
  check_cpu(*bias, "bias");
  check_dtype(*bias, nb::dtype<float>(), "bias", "float32");
  check_contig1d(*bias, "bias");
  if (static_cast<int64_t>(bias->shape(0)) != n)
    throw std::invalid_argument("bias: expected " + std::to_string(n) + " elements, got " +
                                std::to_string(bias->shape(0)));
  return static_cast<const float*>(bias->data());
}

// Whether a's strides are those of a dense tensor whose dimensions lie in memory in the order
// dims (outermost first; all of a's dimensions); dimensions of size 1 may have any stride.
template <class A>
bool dense_in_order(const A& a, std::initializer_list<int> dims) {
  int64_t expect = 1;
  for (auto it = std::rbegin(dims); it != std::rend(dims); ++it) {
    if (a.shape(*it) > 1 && a.stride(*it) != expect) return false;
    expect *= static_cast<int64_t>(a.shape(*it));
  }
  return true;
}

// Row-major contiguous (dimensions of size 1 may have any stride); a is 2-D or 4-D.
template <class A>
bool contiguous(const A& a) {
  return a.ndim() == 2 ? dense_in_order(a, {0, 1}) : dense_in_order(a, {0, 1, 2, 3});
}

void check_out(const OutArr& out, int64_t ndim) {
  check_cpu(out, "out");
  check_dtype(out, nb::dtype<float>(), "out", "float32");
  if (static_cast<int64_t>(out.ndim()) != ndim)
    throw std::invalid_argument("out: expected " + std::to_string(ndim) + "-D");
  if (!contiguous(out)) throw std::invalid_argument("out: must be contiguous");
}

// The output's shape must be the one the call computes, not just as many elements: a buffer of
// another shape would take the right numbers in the wrong places.
void check_out_shape(const OutArr& out, std::initializer_list<int64_t> want, const char* what) {
  bool same = static_cast<size_t>(out.ndim()) == want.size();
  size_t d = 0;
  for (const int64_t v : want) same = same && static_cast<int64_t>(out.shape(d++)) == v;
  if (same) return;
  std::string got, expected;
  for (size_t i = 0; i < out.ndim(); ++i) got += (i ? ", " : "") + std::to_string(out.shape(i));
  for (const int64_t v : want) expected += (expected.empty() ? "" : ", ") + std::to_string(v);
  throw std::invalid_argument(std::string(what) + ": out has shape (" + got + "), expected (" + expected + ")");
}

// A conv's (N, C, H, W) output or residual: NCHW-contiguous (false) or channels-last (true).
// Where both fit (a size-1 channel or pixel count) the two are the same memory: NCHW.
template <class A>
bool conv_out_format(const A& a, const char* name) {
  if (contiguous(a)) return false;
  if (dense_in_order(a, {0, 2, 3, 1})) return true;
  throw std::invalid_argument(std::string(name) + ": must be contiguous, NCHW or channels-last");
}

void conv2d(const Arr& x, const Arr& values, const Arr& col, const Arr& row_ptr,
            const std::optional<Arr>& bias, OutArr& out, int64_t out_channels,
            int64_t cin_per_group, int64_t kh, int64_t kw, int64_t groups,
            std::vector<int64_t> stride, std::vector<int64_t> padding,
            std::vector<int64_t> dilation, bool relu, int threads,
            const std::optional<Arr>& residual) {
  check_cpu(x, "input");
  check_dtype(x, nb::dtype<float>(), "input", "float32");
  if (x.ndim() != 4)
    throw std::invalid_argument("input: expected a 4-D (N, C, H, W) tensor, got " +
                                std::to_string(x.ndim()) + "-D");
  if (stride.size() != 2 || dilation.size() != 2 || padding.size() != 4)
    throw std::invalid_argument("stride/dilation need 2 values and padding 4 (top, bottom, left, right)");
  check_cpu(out, "out");
  check_dtype(out, nb::dtype<float>(), "out", "float32");
  if (out.ndim() != 4) throw std::invalid_argument("out: expected 4-D");
  int64_t oh, ow;  // (throws for a kernel, stride, padding or dilation out of range)
  scnn::conv2d_output_size(x.shape(2), x.shape(3), kh, kw, stride[0], stride[1], padding[0], padding[1], padding[2],
                           padding[3], dilation[0], dilation[1], &oh, &ow);
  check_out_shape(out, {static_cast<int64_t>(x.shape(0)), out_channels, oh, ow}, "sparse_conv2d");
  scnn::Conv2dArgs a;
  a.out_cl = conv_out_format(out, "out");
  a.x = static_cast<const float*>(x.data());
  a.n = x.shape(0);
  a.c = x.shape(1);
  a.h = x.shape(2);
  a.w = x.shape(3);
  for (int i = 0; i < 4; ++i) a.xs[i] = x.stride(i);
  a.weight = make_csr(values, col, row_ptr, "sparse_conv2d");
  a.out_channels = out_channels;
  a.cin_per_group = cin_per_group;
  a.kh = kh;
  a.kw = kw;
  a.groups = groups;
  a.bias = bias_ptr(bias, out_channels);
  a.out = static_cast<float*>(out.data());
  a.out_numel = static_cast<int64_t>(out.size());
  a.stride_h = stride[0];
  a.stride_w = stride[1];
  a.pad_top = padding[0];
  a.pad_bottom = padding[1];
  a.pad_left = padding[2];
  a.pad_right = padding[3];
  a.dil_h = dilation[0];
  a.dil_w = dilation[1];
  a.relu = relu;
  a.threads = threads;
  if (residual) {
    check_cpu(*residual, "residual");
    check_dtype(*residual, nb::dtype<float>(), "residual", "float32");
    if (residual->ndim() != 4) throw std::invalid_argument("residual: expected a 4-D tensor like the output");
    for (int d = 0; d < 4; ++d)
      if (residual->shape(d) != out.shape(d))
        throw std::invalid_argument("residual: shape differs from the output's in dimension " + std::to_string(d));
    if (residual->size() > 0 && conv_out_format(*residual, "residual") != a.out_cl)  // empty: no layout
      throw std::invalid_argument(std::string("residual: must be in the output's memory format (") +
                                  (a.out_cl ? "channels-last" : "NCHW-contiguous") + ")");
    a.residual = static_cast<const float*>(residual->data());
    a.residual_numel = static_cast<int64_t>(residual->size());
  }
  {
    nb::gil_scoped_release release;
    scnn::sparse_conv2d(a);
  }
}

void linear(const Arr& x, const Arr& values, const Arr& col, const Arr& row_ptr,
            const std::optional<Arr>& bias, OutArr& out, int64_t out_features, bool relu,
            int threads) {
  check_cpu(x, "input");
  check_dtype(x, nb::dtype<float>(), "input", "float32");
  if (x.ndim() != 2)
    throw std::invalid_argument("input: expected a 2-D (N, in_features) tensor, got " +
                                std::to_string(x.ndim()) + "-D");
  check_out(out, 2);
  check_out_shape(out, {static_cast<int64_t>(x.shape(0)), out_features}, "sparse_linear");
  scnn::LinearArgs a;
  a.x = static_cast<const float*>(x.data());
  a.n = x.shape(0);
  a.in_features = x.shape(1);
  a.xs[0] = x.stride(0);
  a.xs[1] = x.stride(1);
  a.weight = make_csr(values, col, row_ptr, "sparse_linear");
  a.out_features = out_features;
  a.bias = bias_ptr(bias, out_features);
  a.out = static_cast<float*>(out.data());
  a.out_numel = static_cast<int64_t>(out.size());
  a.relu = relu;
  a.threads = threads;
  {
    nb::gil_scoped_release release;
    scnn::sparse_linear(a);
  }
}

// A contiguous float32 CPU input of `ndim` dimensions (the pooling / LRN kernels take no strides).
void check_input_contig(const Arr& x, int64_t ndim, const char* what) {
  check_cpu(x, "input");
  check_dtype(x, nb::dtype<float>(), "input", "float32");
  if (static_cast<int64_t>(x.ndim()) != ndim)
    throw std::invalid_argument(std::string(what) + ": expected a " + std::to_string(ndim) + "-D input, got " +
                                std::to_string(x.ndim()) + "-D");
  if (x.size() == 0) return;  // an empty tensor has no layout to check
  if (!contiguous(x)) throw std::invalid_argument(std::string(what) + ": input must be contiguous");
}

void max_pool2d(const Arr& x, OutArr& out, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                std::vector<int64_t> padding, bool ceil_mode, int threads) {
  check_input_contig(x, 4, "max_pool2d");
  check_out(out, 4);
  if (kernel.size() != 2 || stride.size() != 2 || padding.size() != 2)
    throw std::invalid_argument("max_pool2d: kernel, stride and padding need 2 values each");
  int64_t oh, ow;  // (throws for a kernel, stride or padding out of range)
  scnn::pool_output_size(x.shape(2), kernel[0], stride[0], padding[0], ceil_mode, &oh);
  scnn::pool_output_size(x.shape(3), kernel[1], stride[1], padding[1], ceil_mode, &ow);
  check_out_shape(out, {static_cast<int64_t>(x.shape(0)), static_cast<int64_t>(x.shape(1)), oh, ow}, "max_pool2d");
  scnn::PoolArgs a;
  a.x = static_cast<const float*>(x.data());
  a.n = x.shape(0); a.c = x.shape(1); a.h = x.shape(2); a.w = x.shape(3);
  a.kh = kernel[0]; a.kw = kernel[1]; a.sh = stride[0]; a.sw = stride[1]; a.ph = padding[0]; a.pw = padding[1];
  a.ceil_mode = ceil_mode;
  a.out = static_cast<float*>(out.data());
  a.out_numel = static_cast<int64_t>(out.size());
  a.threads = threads;
  nb::gil_scoped_release release;
  scnn::max_pool2d(a);
}

void lrn(const Arr& x, OutArr& out, int64_t size, double alpha, double beta, double k, int threads) {
  check_cpu(x, "input");
  check_dtype(x, nb::dtype<float>(), "input", "float32");
  check_cpu(out, "out");
  check_dtype(out, nb::dtype<float>(), "out", "float32");
  if (x.ndim() != 4 || out.ndim() != 4) throw std::invalid_argument("local_response_norm: expected 4-D input and output");
  for (int d = 0; d < 4; ++d)
    if (out.shape(d) != x.shape(d)) throw std::invalid_argument("local_response_norm: output shape differs from the input's");
  scnn::LrnArgs a;
  // NCHW or channels-last, the output in the input's format
  a.channels_last = x.size() > 0 && conv_out_format(x, "local_response_norm: input");  // empty: no layout
  if (x.size() > 0 && conv_out_format(out, "local_response_norm: out") != a.channels_last)
    throw std::invalid_argument("local_response_norm: out must be in the input's memory format");
  a.x = static_cast<const float*>(x.data());
  a.n = x.shape(0); a.c = x.shape(1); a.hw = static_cast<int64_t>(x.shape(2) * x.shape(3));
  a.size = size; a.alpha = alpha; a.beta = beta; a.k = k;
  a.out = static_cast<float*>(out.data());
  a.out_numel = static_cast<int64_t>(out.size());
  a.threads = threads;
  nb::gil_scoped_release release;
  scnn::local_response_norm(a);
}

template <class F>
void stream_call(OutArr& a, const char* name, F&& f) {
  check_cpu(a, name);
  check_dtype(a, nb::dtype<float>(), name, "float32");
  check_contig1d(a, name);
  f();
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "sparsecnn compiled core: direct sparse convolution and sparse linear kernels";
  m.def("conv2d", &conv2d, nb::arg("x"), nb::arg("values"), nb::arg("col_idx"),
        nb::arg("row_ptr"), nb::arg("bias").none(), nb::arg("out"), nb::arg("out_channels"),
        nb::arg("cin_per_group"), nb::arg("kh"), nb::arg("kw"), nb::arg("groups"),
        nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"), nb::arg("relu"),
        nb::arg("threads"), nb::arg("residual").none() = nb::none(),
        "out = conv2d(x, W_csr) (+bias) (+residual) (relu). padding is (top, bottom, left, right).");
  m.def("linear", &linear, nb::arg("x"), nb::arg("values"), nb::arg("col_idx"),
        nb::arg("row_ptr"), nb::arg("bias").none(), nb::arg("out"), nb::arg("out_features"),
        nb::arg("relu"), nb::arg("threads"), "out = x @ W_csr^T (+bias) (relu).");
  m.def("conv2d_plan",
        [](int64_t n, int64_t c, int64_t h, int64_t w, int64_t out_channels, int64_t cin_per_group,
           int64_t kh, int64_t kw, int64_t groups, std::vector<int64_t> stride, std::vector<int64_t> padding,
           std::vector<int64_t> dilation, int threads, double density) {
          if (stride.size() != 2 || dilation.size() != 2 || padding.size() != 4)
            throw std::invalid_argument("stride/dilation need 2 values and padding 4");
          scnn::Conv2dArgs a;
          a.n = n; a.c = c; a.h = h; a.w = w; a.out_channels = out_channels; a.cin_per_group = cin_per_group;
          a.kh = kh; a.kw = kw; a.groups = groups; a.stride_h = stride[0]; a.stride_w = stride[1];
          a.pad_top = padding[0]; a.pad_bottom = padding[1]; a.pad_left = padding[2]; a.pad_right = padding[3];
          a.dil_h = dilation[0]; a.dil_w = dilation[1]; a.threads = threads;
          if (!(density >= 0.0 && density <= 1.0)) throw std::invalid_argument("density must be in [0, 1]");
          // the planner reads only the weight's nonzero count (chunks, strided batch lanes)
          a.weight.nnz = static_cast<int64_t>(std::llround(density * static_cast<double>(out_channels) *
                                                           static_cast<double>(cin_per_group * kh * kw)));
          const scnn::ConvPlanInfo p = scnn::conv2d_plan(a);
          nb::dict d;
          d["vector_width"] = p.vector_width;
          d["lanes_images"] = p.lanes_images;
          d["pixel_images"] = p.pixel_images;
          d["vec_fmas"] = p.vec_fmas;
          d["lanes_vec_fmas"] = p.lanes_vec_fmas;
          d["visits"] = p.visits;
          d["epilogues"] = p.epilogues;
          d["layout_bytes"] = p.layout_bytes;
          d["layout_buffer_bytes"] = p.layout_buffer_bytes;
          d["read_bytes"] = p.read_bytes;
          d["footprint"] = p.footprint;
          d["image_mode"] = p.image_mode;
          d["direct"] = p.direct;
          d["chunk_density"] = p.chunk_density;
          d["chunk_vectors"] = p.chunk_vectors;
          d["chunked"] = p.chunked;
          d["pixel_chunk_density"] = p.pixel_chunk_density;
          d["pixel_chunked"] = p.pixel_chunked;
          d["lanes_density"] = p.lanes_density;
          d["local_density"] = p.local_density;
          return d;
        },
        nb::arg("n"), nb::arg("c"), nb::arg("h"), nb::arg("w"), nb::arg("out_channels"), nb::arg("cin_per_group"),
        nb::arg("kh"), nb::arg("kw"), nb::arg("groups"), nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"),
        nb::arg("threads"), nb::arg("density") = 0.0,
        "The work sparse_conv2d plans for this geometry and weight density (kernels, vector FMAs and tile visits per nonzero, "
        "layout bytes, epilogues, the density from which input-channel chunks are taken and their "
        "partial-sum vectors, the density from which each thread lays the input out itself): what the "
        "performance model counts.");
  m.def("max_pool2d", &max_pool2d, nb::arg("x"), nb::arg("out"), nb::arg("kernel"), nb::arg("stride"),
        nb::arg("padding"), nb::arg("ceil_mode"), nb::arg("threads"),
        "out = max_pool2d(x) (NCHW contiguous float32; padding on both sides; NaN propagates).");
  m.def("pool_output_size",
        [](int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
          int64_t o;
          scnn::pool_output_size(in, k, s, p, ceil_mode, &o);
          return o;
        },
        nb::arg("size"), nb::arg("kernel"), nb::arg("stride"), nb::arg("padding"), nb::arg("ceil_mode"));
  m.def("local_response_norm", &lrn, nb::arg("x"), nb::arg("out"), nb::arg("size"), nb::arg("alpha"),
        nb::arg("beta"), nb::arg("k"), nb::arg("threads"),
        "out = local_response_norm(x) across channels, torch's definition (NCHW contiguous float32).");
  m.def("output_size",
        [](int64_t h, int64_t w, int64_t kh, int64_t kw, std::vector<int64_t> stride,
           std::vector<int64_t> padding, std::vector<int64_t> dilation) {
          if (stride.size() != 2 || dilation.size() != 2 || padding.size() != 4)
            throw std::invalid_argument("stride/dilation need 2 values and padding 4");
          int64_t oh, ow;
          scnn::conv2d_output_size(h, w, kh, kw, stride[0], stride[1], padding[0], padding[1],
                                   padding[2], padding[3], dilation[0], dilation[1], &oh, &ow);
          return std::vector<int64_t>{oh, ow};
        },
        nb::arg("h"), nb::arg("w"), nb::arg("kh"), nb::arg("kw"), nb::arg("stride"),
        nb::arg("padding"), nb::arg("dilation"));
  m.def("stream_triad",
        [](OutArr a, Arr b, Arr c, float s, int threads) {
          for (auto* x : {&b, &c}) {
            check_cpu(*x, "stream input");
            check_dtype(*x, nb::dtype<float>(), "stream input", "float32");
            check_contig1d(*x, "stream input");
            if (x->shape(0) != a.shape(0)) throw std::invalid_argument("stream_triad: length mismatch");
          }
          stream_call(a, "a", [&] {
            nb::gil_scoped_release r;
            scnn::stream_triad(static_cast<float*>(a.data()), static_cast<const float*>(b.data()),
                               static_cast<const float*>(c.data()), s,
                               static_cast<int64_t>(a.shape(0)), threads);
          });
        },
        nb::arg("a"), nb::arg("b"), nb::arg("c"), nb::arg("scalar"), nb::arg("threads"),
        "a = b + scalar * c (float32, contiguous), multithreaded.");
  m.def("stream_copy",
        [](OutArr dst, Arr src, int threads) {
          check_cpu(src, "src");
          check_dtype(src, nb::dtype<float>(), "src", "float32");
          check_contig1d(src, "src");
          if (src.shape(0) != dst.shape(0)) throw std::invalid_argument("stream_copy: length mismatch");
          stream_call(dst, "dst", [&] {
            nb::gil_scoped_release r;
            scnn::stream_copy(static_cast<float*>(dst.data()), static_cast<const float*>(src.data()),
                              static_cast<int64_t>(dst.shape(0)), threads);
          });
        },
        nb::arg("dst"), nb::arg("src"), nb::arg("threads"), "dst = src (float32, contiguous).");
  m.def("core_round_trip_ns",
        [](int cpu_a, int cpu_b, int64_t rounds) {
          nb::gil_scoped_release r;
          return scnn::core_round_trip_ns(cpu_a, cpu_b, rounds);
        },
        nb::arg("cpu_a"), nb::arg("cpu_b"), nb::arg("rounds") = 100000,
        "Mean ns of one round trip of a cache line between threads pinned to the two CPUs "
        "(~100: one core complex; 400+: two).");
  m.def("active_isa", &scnn::active_isa, "The kernel variant in use: avx512, avx2 or portable.");
  m.def("threading_backend", &scnn::threading_backend,
        "Where parallel kernels run: 'openmp' (the process's OpenMP runtime, torch's) or 'pool'.");
  m.def("set_isa", &scnn::set_isa, nb::arg("name"),
        "Force a kernel variant (avx512, avx2, portable) or 'auto'.");
  m.def("isa_supported", &scnn::isa_supported, nb::arg("name"));
}
