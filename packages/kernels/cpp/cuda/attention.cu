#include <cstdint>

#include "vpp/cuda_attention_sampler.h"

namespace vpp::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxHeadDim = 256;  // per-lane accumulator slots: kMaxHeadDim / kWarpSize

__device__ float warp_sum(float value) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
}

// One warp per query row. Lane l owns the value channels l, l+32, ...; every score is a
// warp-wide dot product, so each lane sees the same running max and sum.
__global__ void attention_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                 const float* __restrict__ v, float* __restrict__ out,
                                 std::int64_t rows, std::int64_t heads, std::int64_t lq,
                                 std::int64_t lk, std::int64_t d, std::int64_t dv, float scale,
                                 AttentionMask mask, bool causal) {
    const std::int64_t row =
        static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
    if (row >= rows) return;
    const int lane = threadIdx.x % kWarpSize;
    const std::int64_t i = row % lq;
    const std::int64_t bh = row / lq;
    const float* q_row = q + row * d;
    const float* k_head = k + bh * lk * d;
    const float* v_head = v + bh * lk * dv;
    const bool* mask_row = mask.data ? mask.data + (bh / heads) * mask.stride_b +
                                           (bh % heads) * mask.stride_h + i * mask.stride_q
                                     : nullptr;
    const std::int64_t key_end = causal ? min(lk, i + 1) : lk;

    float accum[kMaxHeadDim / kWarpSize];
#pragma unroll
    for (int slot = 0; slot < kMaxHeadDim / kWarpSize; ++slot) accum[slot] = 0.0f;
    float running_max = -INFINITY;
    float running_sum = 0.0f;
    for (std::int64_t key = 0; key < key_end; ++key) {
        if (mask_row && !mask_row[key * mask.stride_k]) continue;
        float partial = 0.0f;
        for (std::int64_t c = lane; c < d; c += kWarpSize) partial += q_row[c] * k_head[key * d + c];
        const float score = warp_sum(partial) * scale;
        const float new_max = fmaxf(running_max, score);
        const float correction = __expf(running_max - new_max);
        const float weight = __expf(score - new_max);
        running_sum = running_sum * correction + weight;
#pragma unroll
        for (int slot = 0; slot < kMaxHeadDim / kWarpSize; ++slot) {
            const std::int64_t c = lane + slot * kWarpSize;
            if (c < dv) accum[slot] = accum[slot] * correction + weight * v_head[key * dv + c];
        }
        running_max = new_max;
    }
    const float inv_sum = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
#pragma unroll
    for (int slot = 0; slot < kMaxHeadDim / kWarpSize; ++slot) {
        const std::int64_t c = lane + slot * kWarpSize;
        if (c < dv) out[row * dv + c] = accum[slot] * inv_sum;
    }
}

}  // namespace

cudaError_t scaled_dot_product_attention(const float* q, const float* k, const float* v,
                                         float* out, std::int64_t batch, std::int64_t heads,
                                         std::int64_t lq, std::int64_t lk, std::int64_t d,
                                         std::int64_t dv, float scale, const AttentionMask& mask,
                                         bool causal, cudaStream_t stream) {
    if (dv > kMaxHeadDim) return cudaErrorInvalidValue;
    const std::int64_t rows = batch * heads * lq;
    if (rows == 0) return cudaSuccess;
    const std::int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    attention_kernel<<<static_cast<unsigned int>(blocks), kWarpsPerBlock * kWarpSize, 0, stream>>>(
        q, k, v, out, rows, heads, lq, lk, d, dv, scale, mask, causal);
    return cudaGetLastError();
}

}  // namespace vpp::cuda
