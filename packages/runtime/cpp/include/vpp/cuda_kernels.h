// CUDA versions of the runtime's custom-op kernels. Every launcher takes device pointers and a stream,
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

}  // namespace vpp::cuda
