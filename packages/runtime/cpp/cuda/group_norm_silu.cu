#include <cstdint>

#include "vpp/cuda_kernels.h"

namespace vpp::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarpSize = 32;

// Welford moments; merging (Chan et al.) keeps float accuracy for groups of ~1e5 values where
// a float sum of squares would cancel.
struct Moments {
    float count;
    float mean;
    float m2;
};

__device__ Moments merge(Moments a, Moments b) {
    const float count = a.count + b.count;
    if (count == 0.0f) return a;
    const float delta = b.mean - a.mean;
    const float b_share = b.count / count;
    return {count, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * a.count * b_share};
}

__device__ Moments warp_merge(Moments m) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        const Moments other{__shfl_down_sync(0xffffffffu, m.count, offset),
                            __shfl_down_sync(0xffffffffu, m.mean, offset),
                            __shfl_down_sync(0xffffffffu, m.m2, offset)};
        m = merge(m, other);
    }
    return m;
}

__device__ float silu(float v) { return v / (1.0f + __expf(-v)); }

__global__ void group_norm_silu_kernel(const float* __restrict__ x,
                                       const float* __restrict__ weight,
                                       const float* __restrict__ bias, float* __restrict__ y,
                                       std::int64_t num_groups, std::int64_t channels_per_group,
                                       std::int64_t spatial, float eps, bool apply_silu) {
    __shared__ Moments warp_moments[kThreads / kWarpSize];
    __shared__ float group_mean;
    __shared__ float group_inv_std;
    const std::int64_t item = blockIdx.x;
    const std::int64_t group = item % num_groups;
    const std::int64_t group_size = channels_per_group * spatial;
    const float* group_x = x + item * group_size;
    float* group_y = y + item * group_size;

    Moments local{0.0f, 0.0f, 0.0f};
    for (std::int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const float value = group_x[i];
        local.count += 1.0f;
        const float delta = value - local.mean;
        local.mean += delta / local.count;
        local.m2 += delta * (value - local.mean);
    }
    local = warp_merge(local);
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    if (lane == 0) warp_moments[warp] = local;
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / kWarpSize;
        Moments m = lane < warps ? warp_moments[lane] : Moments{0.0f, 0.0f, 0.0f};
        m = warp_merge(m);
        if (lane == 0) {
            group_mean = m.mean;
            group_inv_std = rsqrtf(fmaxf(m.m2 / m.count, 0.0f) + eps);
        }
    }
    __syncthreads();

    for (std::int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const std::int64_t channel = group * channels_per_group + i / spatial;
        const float gamma = weight ? weight[channel] : 1.0f;
        const float beta = bias ? bias[channel] : 0.0f;
        const float normalised = (group_x[i] - group_mean) * group_inv_std * gamma + beta;
        group_y[i] = apply_silu ? silu(normalised) : normalised;
    }
}

}  // namespace

cudaError_t group_norm_silu(const float* x, const float* weight, const float* bias, float* y,
                            std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                            std::int64_t num_groups, float eps, bool apply_silu,
                            cudaStream_t stream) {
    const std::int64_t items = batch * num_groups;
    if (items == 0 || channels == 0 || spatial == 0) return cudaSuccess;
    group_norm_silu_kernel<<<static_cast<unsigned int>(items), kThreads, 0, stream>>>(
        x, weight, bias, y, num_groups, channels / num_groups, spatial, eps, apply_silu);
    return cudaGetLastError();
}

}  // namespace vpp::cuda
