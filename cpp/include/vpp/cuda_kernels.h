// CUDA versions of the runtime kernels. Every launcher takes device pointers and a stream,
// launches asynchronously, and returns the launch's error code (cudaSuccess when queued).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "vpp/kernels.h"

namespace vpp::cuda {

// See vpp::group_norm_silu: one thread block per (batch, group).
cudaError_t group_norm_silu(const float* x, const float* weight, const float* bias, float* y,
                            std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                            std::int64_t num_groups, float eps, bool apply_silu,
                            cudaStream_t stream);

// See vpp::geglu: out = value * gelu(gate), elementwise.
cudaError_t geglu(const float* value, const float* gate, float* out, std::int64_t count,
                  cudaStream_t stream);

// out = a * x + b * f elementwise; the sampler entry points below fold their scalars into a, b
// on the host exactly as the CPU kernels do. out may alias x.
cudaError_t edm_denoise(const float* x, const float* f, float* out, std::int64_t count,
                        double sigma, double sigma_data, Parameterisation param,
                        cudaStream_t stream);
cudaError_t ddim_step(const float* x, const float* f, float* out, std::int64_t count,
                      double sigma, double sigma_next, double sigma_data, Parameterisation param,
                      cudaStream_t stream);
cudaError_t euler_step(const float* x, const float* f, float* out, std::int64_t count,
                       double sigma, double sigma_next, double sigma_data, Parameterisation param,
                       cudaStream_t stream);

// See vpp::scaled_dot_product_attention: one warp per query row, keys visited in order with
// an online softmax; the mask pointer and strides refer to device memory.
cudaError_t scaled_dot_product_attention(const float* q, const float* k, const float* v,
                                         float* out, std::int64_t batch, std::int64_t heads,
                                         std::int64_t lq, std::int64_t lk, std::int64_t d,
                                         std::int64_t dv, float scale, const AttentionMask& mask,
                                         bool causal, cudaStream_t stream);

}  // namespace vpp::cuda
