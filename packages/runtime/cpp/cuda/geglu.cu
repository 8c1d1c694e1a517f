#include <algorithm>
#include <cstdint>

#include "vpp/cuda_kernels.h"

namespace vpp::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void geglu_kernel(const float* __restrict__ value, const float* __restrict__ gate,
                             float* __restrict__ out, std::int64_t count) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < count; i += stride) {
        const float g = gate[i];
        // erfcf(-x) = 1 + erf(x) without the cancellation for x << 0.
        out[i] = value[i] * 0.5f * g * erfcf(-g * 0.70710678118654752f);
    }
}

}  // namespace

cudaError_t geglu(const float* value, const float* gate, float* out, std::int64_t count,
                  cudaStream_t stream) {
    if (count == 0) return cudaSuccess;
    const std::int64_t blocks = std::min<std::int64_t>((count + kThreads - 1) / kThreads, 65535);
    geglu_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(value, gate, out, count);
    return cudaGetLastError();
}

}  // namespace vpp::cuda
