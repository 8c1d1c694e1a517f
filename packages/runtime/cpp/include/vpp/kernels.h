// CPU kernels of the vpp runtime's ONNX Runtime custom ops (libvpp_ort_ops). Plain pointers to
// contiguous float32 buffers, so that the same functions also serve vpp-kernels' pybind11 module
// (packages/kernels, the parity tests and benchmarks) and C++ deployments.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vpp {

// y = silu(groupnorm(x) * weight[c] + bias[c]) for x of shape (batch, channels, spatial),
// where spatial is the product of all trailing dimensions (H*W, T, T*H*W...). Statistics are
// taken over (channels / num_groups) * spatial contiguous values per (batch, group).
// apply_silu = false gives a plain GroupNorm. weight/bias may be null (identity affine).
void group_norm_silu(const float* x, const float* weight, const float* bias, float* y,
                     std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                     std::int64_t num_groups, float eps, bool apply_silu);

// The same on the (batch, group) items [begin, end) only (item = b * num_groups + g), on the
// calling thread: for callers that bring their own threads, as the ONNX Runtime custom op does
// with ORT's intra-op pool.
void group_norm_silu_items(const float* x, const float* weight, const float* bias, float* y,
                           std::int64_t channels, std::int64_t spatial, std::int64_t num_groups,
                           float eps, bool apply_silu, std::int64_t begin, std::int64_t end);

// out = value * gelu(gate), the GEGLU feed-forward's activation (exact erf GELU), elementwise
// over count values; one pass instead of a GELU pass and a product pass.
void geglu(const float* value, const float* gate, float* out, std::int64_t count);
// The same on [begin, end) only, on the calling thread (for ORT's thread pool).
void geglu_range(const float* value, const float* gate, float* out, std::int64_t begin, std::int64_t end);

// Threads (the caller plus pooled helpers) the kernels use for large problems, at most the
// number of hardware threads; 0 restores the default (all of them).
void set_num_threads(int num_threads);
int num_threads();

}  // namespace vpp
