#include <cmath>
#include <cstdint>

#include "cpu_dispatch.h"
#include "parallel.h"
#include "vpp/attention_sampler.h"

namespace vpp {
namespace {

// Every update here is out = a * x + b * f with per-step scalars, folded in double so that
// the single float multiply-add per element is the only rounding the fused pass adds.
VPP_CPU_CLONES void axpby_range(const float* x, const float* f, float* out, std::int64_t begin,
                                std::int64_t end, float a, float b) {
#pragma omp simd
    for (std::int64_t i = begin; i < end; ++i) out[i] = a * x[i] + b * f[i];
}

void axpby(const float* x, const float* f, float* out, std::int64_t count, double a, double b) {
    const float a_f = static_cast<float>(a);
    const float b_f = static_cast<float>(b);
    detail::parallel_for(count, count, [&](std::int64_t begin, std::int64_t end) {
        axpby_range(x, f, out, begin, end, a_f, b_f);
    });
}

}  // namespace

Preconditioning preconditioning(double sigma, double sigma_data, Parameterisation param) {
    const double total = sigma * sigma + sigma_data * sigma_data;
    const double c_skip = sigma_data * sigma_data / total;
    const double c_out_magnitude = sigma * sigma_data / std::sqrt(total);
    return {c_skip, param == Parameterisation::kV ? -c_out_magnitude : c_out_magnitude};
}

void edm_denoise(const float* x, const float* f, float* out, std::int64_t count, double sigma,
                 double sigma_data, Parameterisation param) {
    const Preconditioning pre = preconditioning(sigma, sigma_data, param);
    axpby(x, f, out, count, pre.c_skip, pre.c_out);
}

void ddim_step(const float* x, const float* f, float* out, std::int64_t count, double sigma,
               double sigma_next, double sigma_data, Parameterisation param) {
    const Preconditioning pre = preconditioning(sigma, sigma_data, param);
    const double ratio = sigma_next / sigma;
    axpby(x, f, out, count, ratio + (1.0 - ratio) * pre.c_skip, (1.0 - ratio) * pre.c_out);
}

void euler_step(const float* x, const float* f, float* out, std::int64_t count, double sigma,
                double sigma_next, double sigma_data, Parameterisation param) {
    const Preconditioning pre = preconditioning(sigma, sigma_data, param);
    const double step = (sigma_next - sigma) / sigma;
    axpby(x, f, out, count, 1.0 + step * (1.0 - pre.c_skip), -step * pre.c_out);
}

}  // namespace vpp
