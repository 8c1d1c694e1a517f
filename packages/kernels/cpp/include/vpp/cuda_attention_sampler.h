// CUDA versions of vpp-kernels' sampler and attention kernels, as vpp/cuda_kernels.h: device
// pointers and a stream, launched asynchronously, returning the launch's error code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "vpp/attention_sampler.h"
#include "vpp/cuda_kernels.h"

namespace vpp::cuda {

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
