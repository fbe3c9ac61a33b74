// Interface between the ISA-neutral driver (conv.cpp, linear.cpp) and the per-ISA kernel
// translation units (isa/avx512.cpp, isa/avx2.cpp, isa/portable.cpp). Plain structs and
// function pointers only: nothing inline crosses the boundary, so code compiled with -mavx512f
// can never be picked by the linker for the portable path.
#pragma once
#include <cstdint>

namespace scnn {

// One tile of the direct sparse convolution: rows [row0, row1) of one group, `nb` images
// starting at `img0`, the widened output positions [p0, p0 + count) of each image.
struct ConvTile {
  const float* values;
  const void* col;
  bool col16;
  const int32_t* row_ptr;
  const int32_t* table;  // column -> offset into the phased input of one image (group base added)
  const float* in;       // phased input of image img0, plus the group base
  int64_t img_stride;    // floats between consecutive images in the phased input
  int64_t row0, row1;
  int nb;                // images in this tile (1..4)
  int nv;                // vectors of positions per image (1..16)
  bool overread_ok;      // the input has slack: a partial last vector may be loaded whole
  const float* in_end;   // else: one past the input tensor; a whole-vector load below it is safe
  int64_t p0, count;     // widened positions p0 .. p0+count-1 (count <= nv * width)
  // epilogue
  float* out;            // output tensor base (N, O, OH, OW)
  int64_t img0, out_channels, oh, ow, wrow;  // wrow = widened row length (>= ow)
  int64_t oy0;           // output row of position p0 (p0 / wrow)
  const float* bias;
  const float* residual;  // added before the ReLU, indexed like out; null for none
  bool relu;
  // Input-channel chunks (nchunks <= 1: none): chunk k holds columns [k, k + 1) x chunk_cols;
  // acc holds mblock x nb x nv vectors of partial sums (64-byte aligned), cursor mblock
  // positions in the rows.
  int nchunks;
  int64_t chunk_cols;
  float* acc;
  int64_t* cursor;
  int64_t mblock;
};

// One tile of the batch-lanes convolution (kernels/sparse_conv_batch.hpp): W images starting
// at img0 (the SIMD lanes), output rows [oy0, oy0 + rows) x pixels [ox0, ox0 + pixels), output
// channels [row0, row1) of one group.
struct LaneTile {
  const float* values;
  const int32_t* row_ptr;
  const int32_t* offs;   // per nonzero: its input's offset (floats) into the group's layout
  const float* in;       // layout of the group, at the tile's first pixel
  int64_t row_stride;    // floats between layout rows
  int rows, pixels;      // R (1..4), P (1..W)
  int64_t row0, row1;
  float* out;            // (N, O, OH, OW)
  const float* residual;
  const float* residual_end;  // one past the residual tensor (whole-vector loads stay inside)
  const float* bias;
  bool relu;
  int64_t img0, out_channels, oh, ow, oy0, ox0;
  // Input-channel chunks (nchunks <= 1: none): chunk_ptr[m * (nchunks + 1) + k] is output
  // channel m's first nonzero of chunk k; acc holds mblock x R x P vectors of partial sums
  // (64-byte aligned).
  int nchunks;
  const int32_t* chunk_ptr;
  float* acc;
  int64_t mblock;
};

// Strides up to this take the batch-lanes kernel (its layout splits the input into phases).
constexpr int kMaxLaneStride = 4;

// One channel of a block of W images for the batch-lanes layout (contiguous rows). The padded
// input (rows x cols, pad_top / pad_left of them padding) is split into its stride phases:
// padded pixel (i, j) goes to phase plane (rphase[i % sh], cphase[j % sw]), row i / sh, column
// j / sw; a phase no tap reads (index -1) is skipped. Stride 1: one plane, the padded input.
struct LaneLayoutJob {
  const float* src;     // image 0 of the block, this channel, row 0
  const float* lo;      // [lo, hi): memory of the input that may be read (the whole tensor view)
  const float* hi;
  int64_t img_stride;   // floats between images
  int64_t row_stride;   // floats between rows
  int64_t h, w;
  float* dst;           // the channel's phase planes, each phase_plane floats
  int64_t rows, cols, pad_top, pad_left;
  int sh, sw, ncp;      // strides; column phases laid out
  int rphase[kMaxLaneStride], cphase[kMaxLaneStride];
  int64_t prow;         // vectors per phase-plane row
  int64_t phase_plane;  // floats per phase plane
  const float* next_src;  // the next channel's src, whose rows the layout fetches ahead (or null)
};

// Batch vectors of one sparse_linear tile at most (kernels/sparse_linear.hpp instantiates 1..this).
constexpr int kLinearMaxVectors = 8;

// Rows [row0, row1) of Y = X W^T for the batch columns [b0, b0 + nbatch), nvec vectors wide
// (kernels/sparse_linear.hpp). One pass takes each row's nonzeros of the columns below k1 from
// cursor[r] on; `partial` carries a row's sums (nvec * width floats) from pass to pass; the
// last pass adds the bias, applies the ReLU and stores the rows into out. A single pass has
// first = last = true, no cursor and no partial. The batch-1 dot form reads xt as the input row.
struct LinearTile {
  const float* values;
  const void* col;
  bool col16;
  const int32_t* row_ptr;
  const float* xt;        // X^T from column b0 on: xt[i * ldx + b], zero past the batch
  int64_t ldx;            // row length of X^T (whole vectors)
  int64_t b0, nbatch;     // batch columns stored: [b0, b0 + nbatch)
  int nvec;               // vectors of batch columns computed (nbatch <= nvec * width)
  int64_t row0, row1;
  int64_t k1;             // this pass: columns < k1 (ignored on the last pass)
  int64_t* cursor;        // per row of the tile: its next nonzero (null: from row_ptr, one pass)
  float* partial;         // per row of the tile: nvec * width partial sums (null: one pass)
  bool first, last;
  float* out;             // (N, out_features)
  int64_t out_features;
  const float* bias;
  bool relu;
};

// One (image, channel) of the stride-1 input layout (kernels/layout.hpp): the padded plane
// (hrows x wrow) at dst and, for k < nshift, the replica moved k floats left at
// dst + k * rep_stride.
struct LayoutJob {
  const float* src;    // the channel's first row
  const float* lo;     // [lo, hi): memory of the input that may be read (the whole tensor view)
  const float* hi;
  int64_t h, w;        // input rows and columns
  int64_t row_stride;  // floats between source rows (columns are contiguous)
  float* dst;
  int64_t hrows, wrow, pad_top, pad_left;
  int nshift;
  int64_t rep_stride;
};

// dst[j * ds + i] = relu?(src[i * ss + j] (+ res[j * ds + i])) for i < rows, j < cols
// (kernels/transpose.hpp): NCHW <-> channels-last, an image or a slice of one.
struct TransposeJob {
  const float* src;
  int64_t ss;           // floats between source rows
  float* dst;
  int64_t ds;           // floats between destination rows
  int64_t rows, cols;   // of the source
  const float* res;     // laid out like dst, or null
  bool relu;
};

// Planes [0, planes) of NCHW max pooling (kernels/max_pool.hpp): input planes h x w at src,
// output planes oh x ow at dst, window kh x kw, stride sh x sw, padding ph x pw (-inf). scratch
// holds block_rows padded rows of row_len floats (pool.cpp sizes them for what the horizontal
// pass reads, whole vectors past the last window included), then for sw > 2 the sliding maxima
// of one row, (ow - 1) * sw + 1 + 2 * width floats.
struct PoolJob {
  const float* src;
  const float* lo;     // [lo, hi): the input tensor (a whole-vector load inside it is safe)
  const float* hi;
  float* dst;
  int64_t planes, h, w, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw;
  float* scratch;
  int64_t row_len, block_rows;
};

// A piece of local response normalisation (kernels/lrn.hpp): NCHW, positions [first, first +
// count) of every channel plane of image `image` (planes hw floats apart); channels-last,
// pixels [first, first + count) over all images, each c contiguous channels, with scratch of
// c + size - 1 + width floats.
struct LrnJob {
  const float* x;
  float* out;
  int64_t c, hw;
  bool channels_last;
  int64_t size;
  float scale, k, beta;  // scale = alpha / size
  int64_t image, first, count;
  float* scratch;
};

struct IsaKernels {
  const char* name;
  int width;     // floats per vector
  int max_acc;   // accumulator registers the conv micro-kernel may use
  void (*conv_tile)(const ConvTile&);
  void (*linear_tile)(const LinearTile&);
  void (*linear_dot)(const LinearTile&);  // batch 1: sparse dot products with gathers
  bool (*layout_channel)(const LayoutJob&);  // returns whether a NaN/Inf was read
  void (*lanes_tile)(const LaneTile&);
  bool (*lanes_layout)(const LaneLayoutJob&);  // returns whether a NaN/Inf was read
  void (*transpose)(const TransposeJob&);
  void (*max_pool)(const PoolJob&);
  void (*lrn)(const LrnJob&);
  // CSR column check (kernels/csr_check.hpp): the first row of [r0, r1) whose columns are not
  // strictly ascending inside [0, cols), or -1
  int64_t (*csr_first_bad_row)(const int32_t* row_ptr, const void* col, bool col16, int64_t cols, int64_t r0,
                               int64_t r1);
};

extern const IsaKernels kAvx512Kernels;
extern const IsaKernels kAvx2Kernels;
extern const IsaKernels kPortableKernels;

const IsaKernels& isa_kernels();  // the active variant (isa.cpp)

}  // namespace scnn
