// CPU kernels that live only in vpp-kernels (the development package): the fused sampler steps
// and online-softmax attention. The exported graphs run neither; ONNX Runtime's own nodes were
// measured faster or equal (packages/kernels/README.md). They share the runtime's thread pool.
#pragma once

#include <cstdint>

#include "vpp/kernels.h"

namespace vpp {

// How the network output F turns into the denoised estimate D = c_skip * x + c_out * F.
enum class Parameterisation {
    kEdm,  // Karras et al. F-prediction: c_out = +s*sd/sqrt(s^2+sd^2)
    kV,    // v-prediction as in SVD: c_out = -s*sd/sqrt(s^2+sd^2)
};

struct Preconditioning {
    double c_skip;
    double c_out;
};

Preconditioning preconditioning(double sigma, double sigma_data, Parameterisation param);

// out = c_skip * x + c_out * f (the denoiser's output preconditioning alone).
void edm_denoise(const float* x, const float* f, float* out, std::int64_t count, double sigma,
                 double sigma_data, Parameterisation param);

// DDIM / DPM-Solver-1 in sigma: out = r * x + (1 - r) * D with r = sigma_next / sigma.
// out may alias x (in-place update of the sample).
void ddim_step(const float* x, const float* f, float* out, std::int64_t count, double sigma,
               double sigma_next, double sigma_data, Parameterisation param);

// Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma:
// out = x + (sigma_next - sigma) * (x - D) / sigma. out may alias x.
void euler_step(const float* x, const float* f, float* out, std::int64_t count, double sigma,
                double sigma_next, double sigma_data, Parameterisation param);

// softmax(q k^T * scale + mask) v for q (batch_heads, lq, d), k (batch_heads, lk, d),
// v (batch_heads, lk, dv), out (batch_heads, lq, dv), batch_heads = batch * heads.
// mask (optional) is read as mask[b*mask_stride_b + h*mask_stride_h + i*mask_stride_q +
// j*mask_stride_k] (element strides, 0 for broadcast dimensions); true = may attend.
// causal keeps key j <= query i (top-left aligned, as torch's is_causal). A query that may
// attend to no key gets a zero output row.
struct AttentionMask {
    const bool* data = nullptr;
    std::int64_t stride_b = 0, stride_h = 0, stride_q = 0, stride_k = 0;
};

void scaled_dot_product_attention(const float* q, const float* k, const float* v, float* out,
                                  std::int64_t batch, std::int64_t heads, std::int64_t lq,
                                  std::int64_t lk, std::int64_t d, std::int64_t dv, float scale,
                                  const AttentionMask& mask, bool causal);

}  // namespace vpp
