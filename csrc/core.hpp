// Public C++ API of the sparsecnn core. Plain C++17, no PyTorch: callers hand over raw
// pointers with shapes and element strides; every entry point validates what it is given and
// throws (std::invalid_argument -> ValueError, std::overflow_error -> OverflowError) instead of
// trusting it.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace scnn {

// A CSR matrix with one row per output channel. Column indices are layout independent:
// col = c * KH * KW + r * KW + s inside the row's group. They are 16-bit (read as unsigned)
// whenever the layer allows it, which keeps the storage overhead b at 1.5 instead of 2.
struct Csr {
  const float* values = nullptr;
  const void* col = nullptr;
  bool col16 = true;  // uint16 column indices, else int32
  const int32_t* row_ptr = nullptr;
  int64_t rows = 0;  // output channels
  int64_t nnz = 0;
};

struct Conv2dArgs {
  // Input (N, C, H, W) with any element strides (NCHW contiguous, channels-last, ...).
  const float* x = nullptr;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t xs[4] = {0, 0, 0, 0};
  Csr weight;
  int64_t out_channels = 0, cin_per_group = 0, kh = 0, kw = 0, groups = 1;
  const float* bias = nullptr;  // [out_channels] or null
  float* out = nullptr;         // (N, out_channels, OH, OW), contiguous, or channels-last
  int64_t out_numel = 0;        // size of the out buffer, checked against the geometry
  bool out_cl = false;          // out (and residual) channels-last: (N, OH, OW, out_channels) in memory
  // Added to the output before the ReLU (a residual connection), same shape and memory
  // format as out; null for none. May not overlap out.
  const float* residual = nullptr;
  int64_t residual_numel = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t dil_h = 1, dil_w = 1;
  bool relu = false;
  int threads = 1;
};

struct LinearArgs {
  const float* x = nullptr;  // (N, in_features), element strides xs
  int64_t n = 0, in_features = 0;
  int64_t xs[2] = {0, 0};
  Csr weight;  // (out_features x in_features)
  int64_t out_features = 0;
  const float* bias = nullptr;
  float* out = nullptr;  // (N, out_features) contiguous
  int64_t out_numel = 0;
  bool relu = false;
  int threads = 1;
};

// Max pooling, NCHW contiguous input and output; padding (ph, pw) on both sides, torch's
// ceil_mode rule, NaN propagates.
struct PoolArgs {
  const float* x = nullptr;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  bool ceil_mode = false;
  float* out = nullptr;
  int64_t out_numel = 0;
  int threads = 1;
};

// Local response normalisation across channels (torch.nn.LocalResponseNorm), NCHW
// contiguous; hw = H * W.
struct LrnArgs {
  const float* x = nullptr;
  int64_t n = 0, c = 0, hw = 0;
  bool channels_last = false;  // x and out (N, HW, C) in memory, else (N, C, HW); both dense
  int64_t size = 1;
  double alpha = 1e-4, beta = 0.75, k = 1.0;
  float* out = nullptr;
  int64_t out_numel = 0;
  int threads = 1;
};

// Output spatial size of a convolution; throws when the (padded) input is smaller than the
// dilated kernel or any parameter is out of range.
void conv2d_output_size(int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t stride_h,
                        int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right, int64_t dil_h, int64_t dil_w, int64_t* oh,
                        int64_t* ow);

// out = conv2d(x, W) (+ bias) (+ residual) (then ReLU), W given in CSR.
void sparse_conv2d(const Conv2dArgs& a);

// The work sparse_conv2d does for a call of this geometry, as planned by the same code that
// runs it (for the performance model; the data pointers and the CSR are not read; the input is
// taken as NCHW contiguous). Per-nonzero counts multiply the layer's number of nonzeros.
struct ConvPlanInfo {
  int vector_width = 0;
  int64_t lanes_images = 0, pixel_images = 0;  // images run by each kernel
  int64_t vec_fmas = 0;      // vector FMAs per nonzero weight, whole batch, per-image kernel
  int64_t lanes_vec_fmas = 0;  // the same for the batch-lanes kernel
  int64_t visits = 0;        // tile visits per nonzero (index, broadcast, address work)
  int64_t epilogues = 0;     // (output channel, tile) stores: bias/ReLU/residual, transposes
  int64_t layout_bytes = 0;  // bytes written laying the input out (0: read in place)
  int64_t layout_buffer_bytes = 0;  // size of one layout buffer (a block of images, or the batch)
  int64_t read_bytes = 0;    // input bytes read by the layout or the finiteness scan
  double footprint = 0;      // input bytes one tile reads (largest of the two kernels)
  bool image_mode = false;   // per-image kernel: a task per image block (else channel ranges)
  bool direct = false;       // per-image kernel reads the input in place (1x1, unpadded)
  // Input-channel chunks of the batch-lanes kernel: taken from this weight density up (inf:
  // never), and then the partial sums' vector loads + stores at the chunk switches, whole batch.
  double chunk_density = 0;
  int64_t chunk_vectors = 0;
  bool chunked = false;       // at this plan's density
  // The per-image kernel's input-channel chunks: taken from this density up (inf: never).
  double pixel_chunk_density = 0;
  bool pixel_chunked = false;  // at this plan's density
  double lanes_density = 0;   // density from which the batch-lanes kernel takes its images (inf: never)
  double local_density = 0;   // density from which each thread of the per-image row mode lays out the input itself (inf: never)
};
ConvPlanInfo conv2d_plan(const Conv2dArgs& geometry);
// out = x W^T (+ bias) (then ReLU), W given in CSR.
void sparse_linear(const LinearArgs& a);
// Output size of one pooled dimension (torch's rule); throws on invalid parameters.
void pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode, int64_t* out);
void max_pool2d(const PoolArgs& a);
void local_response_norm(const LrnArgs& a);
// Validates a CSR matrix with `cols` columns (row_ptr monotone, 0..nnz, columns ascending and in
// range), on up to `threads` threads.
void validate_csr(const Csr& m, int64_t cols, const char* what, int threads);

// STREAM-style kernels for the machine probe (a = b + s*c, dst = src), multithreaded.
void stream_triad(float* a, const float* b, const float* c, float s, int64_t n, int threads);
void stream_copy(float* dst, const float* src, int64_t n, int threads);
// Mean time (ns) of one round trip of a cache line between two threads pinned to CPUs cpu_a and
// cpu_b (core_latency.cpp).
double core_round_trip_ns(int cpu_a, int cpu_b, int64_t rounds);

// ISA selection: "avx512", "avx2" or "portable". The environment variable SPARSECNN_ISA forces
// one (tests use it to run every variant on one machine); forcing one the CPU lacks throws.
const char* active_isa();
void set_isa(const std::string& name);  // "auto" re-detects
bool isa_supported(const std::string& name);

}  // namespace scnn
