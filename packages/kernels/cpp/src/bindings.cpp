// The pybind11 module vpp.kernels._kernels. The Python wrappers in vpp.kernels check
// inputs first with friendlier messages; the checks here keep a direct caller from reading
// out of bounds all the same. Kernels run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vpp/attention_sampler.h"

#ifdef VPP_WITH_CUDA
#include "cuda_bindings.h"
#endif

namespace py = pybind11;

namespace {

std::string shape_string(const py::array& array) {
    std::string text = "(";
    for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
        if (axis) text += ", ";
        text += std::to_string(array.shape(axis));
    }
    return text + (array.ndim() == 1 ? ",)" : ")");
}

void require_float32_contiguous(const py::array& array, const char* name) {
    if (!array.dtype().is(py::dtype::of<float>())) {
        throw py::value_error(std::string(name) + " must be float32, got " +
                              std::string(py::str(array.dtype())));
    }
    if (!(array.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous");
    }
}

void require_same_shape(const py::array& array, const py::array& reference, const char* name,
                        const char* reference_name) {
    bool same = array.ndim() == reference.ndim();
    for (py::ssize_t axis = 0; same && axis < array.ndim(); ++axis) {
        same = array.shape(axis) == reference.shape(axis);
    }
    if (!same) {
        throw py::value_error(std::string(name) + " has shape " + shape_string(array) +
                              ", expected the shape of " + reference_name + " " +
                              shape_string(reference));
    }
}

const float* optional_affine(const std::optional<py::array>& param, std::int64_t channels,
                             const char* name) {
    if (!param) return nullptr;
    require_float32_contiguous(*param, name);
    if (param->ndim() != 1 || param->shape(0) != channels) {
        throw py::value_error(std::string(name) + " has shape " + shape_string(*param) +
                              ", expected (" + std::to_string(channels) + ",)");
    }
    return static_cast<const float*>(param->data());
}

vpp::Parameterisation parse_parameterisation(const std::string& name) {
    if (name == "edm") return vpp::Parameterisation::kEdm;
    if (name == "v") return vpp::Parameterisation::kV;
    throw py::value_error("parameterisation must be 'edm' or 'v', got '" + name + "'");
}

py::array_t<float> empty_like(const py::array& reference) {
    std::vector<py::ssize_t> shape(reference.shape(), reference.shape() + reference.ndim());
    return py::array_t<float>(shape);
}

py::array group_norm_silu(const py::array& x, const std::optional<py::array>& weight,
                          const std::optional<py::array>& bias, std::int64_t num_groups,
                          float eps, bool apply_silu) {
    require_float32_contiguous(x, "x");
    if (x.ndim() < 2) {
        throw py::value_error("x must have shape (N, C, ...), got " + shape_string(x));
    }
    const std::int64_t batch = x.shape(0);
    const std::int64_t channels = x.shape(1);
    if (num_groups <= 0 || channels % num_groups != 0) {
        throw py::value_error("channels (" + std::to_string(channels) +
                              ") must be divisible by num_groups (" + std::to_string(num_groups) +
                              ")");
    }
    if (!(eps > 0.0f)) throw py::value_error("eps must be > 0, got " + std::to_string(eps));
    std::int64_t spatial = 1;
    for (py::ssize_t axis = 2; axis < x.ndim(); ++axis) spatial *= x.shape(axis);
    const float* weight_ptr = optional_affine(weight, channels, "weight");
    const float* bias_ptr = optional_affine(bias, channels, "bias");
    py::array_t<float> y = empty_like(x);
    const float* x_ptr = static_cast<const float*>(x.data());
    float* y_ptr = y.mutable_data();
    {
        py::gil_scoped_release release;
        vpp::group_norm_silu(x_ptr, weight_ptr, bias_ptr, y_ptr, batch, channels, spatial,
                             num_groups, eps, apply_silu);
    }
    return y;
}

py::array geglu(const py::array& value, const py::array& gate) {
    require_float32_contiguous(value, "value");
    require_float32_contiguous(gate, "gate");
    require_same_shape(gate, value, "gate", "value");
    py::array_t<float> out = empty_like(value);
    const auto* value_ptr = static_cast<const float*>(value.data());
    const auto* gate_ptr = static_cast<const float*>(gate.data());
    float* out_ptr = out.mutable_data();
    const auto count = static_cast<std::int64_t>(value.size());
    {
        py::gil_scoped_release release;
        vpp::geglu(value_ptr, gate_ptr, out_ptr, count);
    }
    return out;
}

using SamplerKernel = void (*)(const float*, const float*, float*, std::int64_t, double, double,
                               double, vpp::Parameterisation);

py::array run_sampler_update(SamplerKernel kernel, const py::array& x, const py::array& f,
                             double sigma, double sigma_next, double sigma_data,
                             const std::string& parameterisation,
                             const std::optional<py::array>& out) {
    require_float32_contiguous(x, "x");
    require_float32_contiguous(f, "f");
    require_same_shape(f, x, "f", "x");
    if (!(sigma > 0.0) || !std::isfinite(sigma)) {
        throw py::value_error("sigma must be finite and > 0, got " + std::to_string(sigma));
    }
    if (!(sigma_next >= 0.0) || !std::isfinite(sigma_next)) {
        throw py::value_error("sigma_next must be finite and >= 0, got " +
                              std::to_string(sigma_next));
    }
    if (!(sigma_data > 0.0)) {
        throw py::value_error("sigma_data must be > 0, got " + std::to_string(sigma_data));
    }
    const vpp::Parameterisation param = parse_parameterisation(parameterisation);
    py::array result = out ? *out : py::array(empty_like(x));
    if (out) {
        require_float32_contiguous(result, "out");
        require_same_shape(result, x, "out", "x");
        if (!result.writeable()) throw py::value_error("out must be writeable");
    }
    const float* x_ptr = static_cast<const float*>(x.data());
    const float* f_ptr = static_cast<const float*>(f.data());
    float* out_ptr = static_cast<float*>(result.mutable_data());
    const std::int64_t count = x.size();
    {
        py::gil_scoped_release release;
        kernel(x_ptr, f_ptr, out_ptr, count, sigma, sigma_next, sigma_data, param);
    }
    return result;
}

void edm_denoise_kernel(const float* x, const float* f, float* out, std::int64_t count,
                        double sigma, double /*sigma_next*/, double sigma_data,
                        vpp::Parameterisation param) {
    vpp::edm_denoise(x, f, out, count, sigma, sigma_data, param);
}

py::array scaled_dot_product_attention(const py::array& q, const py::array& k, const py::array& v,
                                       const std::optional<py::array>& mask, bool causal,
                                       std::optional<double> scale) {
    require_float32_contiguous(q, "q");
    require_float32_contiguous(k, "k");
    require_float32_contiguous(v, "v");
    if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) {
        throw py::value_error("q, k, v must be 4-D (B, heads, L, d), got " + shape_string(q) +
                              ", " + shape_string(k) + ", " + shape_string(v));
    }
    const std::int64_t batch = q.shape(0), heads = q.shape(1), lq = q.shape(2), d = q.shape(3);
    const std::int64_t lk = k.shape(2), dv = v.shape(3);
    if (k.shape(0) != batch || k.shape(1) != heads || k.shape(3) != d) {
        throw py::value_error("k has shape " + shape_string(k) + ", expected (" +
                              std::to_string(batch) + ", " + std::to_string(heads) + ", Lk, " +
                              std::to_string(d) + ")");
    }
    if (v.shape(0) != batch || v.shape(1) != heads || v.shape(2) != lk) {
        throw py::value_error("v has shape " + shape_string(v) + ", expected (" +
                              std::to_string(batch) + ", " + std::to_string(heads) + ", " +
                              std::to_string(lk) + ", dv)");
    }
    vpp::AttentionMask attention_mask;
    if (mask) {
        if (!mask->dtype().is(py::dtype::of<bool>())) {
            throw py::value_error("mask must be bool, got " + std::string(py::str(mask->dtype())));
        }
        const std::vector<std::int64_t> expected{batch, heads, lq, lk};
        bool matches = mask->ndim() == 4;
        for (int axis = 0; matches && axis < 4; ++axis) matches = mask->shape(axis) == expected[axis];
        if (!matches) {
            throw py::value_error("mask has shape " + shape_string(*mask) + ", expected (" +
                                  std::to_string(batch) + ", " + std::to_string(heads) + ", " +
                                  std::to_string(lq) + ", " + std::to_string(lk) + ")");
        }
        for (int axis = 0; axis < 4; ++axis) {
            if (mask->strides(axis) < 0) throw py::value_error("mask must not have negative strides");
        }
        attention_mask.data = static_cast<const bool*>(mask->data());
        attention_mask.stride_b = mask->strides(0);
        attention_mask.stride_h = mask->strides(1);
        attention_mask.stride_q = mask->strides(2);
        attention_mask.stride_k = mask->strides(3);
    }
    const float softmax_scale =
        static_cast<float>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
    py::array_t<float> out({batch, heads, lq, dv});
    const float* q_ptr = static_cast<const float*>(q.data());
    const float* k_ptr = static_cast<const float*>(k.data());
    const float* v_ptr = static_cast<const float*>(v.data());
    float* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        vpp::scaled_dot_product_attention(q_ptr, k_ptr, v_ptr, out_ptr, batch, heads, lq, lk, d,
                                          dv, softmax_scale, attention_mask, causal);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, module) {
    module.doc() = "Fused CPU (and optionally CUDA) kernels of vpp, for tests and benchmarks";
    module.def("group_norm_silu", &group_norm_silu, py::arg("x"), py::arg("weight"),
               py::arg("bias"), py::arg("num_groups"), py::arg("eps"), py::arg("apply_silu"));
    module.def("geglu", &geglu, py::arg("value"), py::arg("gate"));
    module.def(
        "edm_denoise",
        [](const py::array& x, const py::array& f, double sigma, double sigma_data,
           const std::string& parameterisation, const std::optional<py::array>& out) {
            return run_sampler_update(&edm_denoise_kernel, x, f, sigma, 0.0, sigma_data,
                                      parameterisation, out);
        },
        py::arg("x"), py::arg("f"), py::arg("sigma"), py::arg("sigma_data"),
        py::arg("parameterisation"), py::arg("out") = py::none());
    module.def(
        "ddim_step",
        [](const py::array& x, const py::array& f, double sigma, double sigma_next,
           double sigma_data, const std::string& parameterisation,
           const std::optional<py::array>& out) {
            return run_sampler_update(&vpp::ddim_step, x, f, sigma, sigma_next, sigma_data,
                                      parameterisation, out);
        },
        py::arg("x"), py::arg("f"), py::arg("sigma"), py::arg("sigma_next"),
        py::arg("sigma_data"), py::arg("parameterisation"), py::arg("out") = py::none());
    module.def(
        "euler_step",
        [](const py::array& x, const py::array& f, double sigma, double sigma_next,
           double sigma_data, const std::string& parameterisation,
           const std::optional<py::array>& out) {
            return run_sampler_update(&vpp::euler_step, x, f, sigma, sigma_next, sigma_data,
                                      parameterisation, out);
        },
        py::arg("x"), py::arg("f"), py::arg("sigma"), py::arg("sigma_next"),
        py::arg("sigma_data"), py::arg("parameterisation"), py::arg("out") = py::none());
    module.def("scaled_dot_product_attention", &scaled_dot_product_attention, py::arg("q"),
               py::arg("k"), py::arg("v"), py::arg("mask") = py::none(),
               py::arg("causal") = false, py::arg("scale") = py::none());
    module.def("set_num_threads", &vpp::set_num_threads, py::arg("num_threads"));
    module.def("num_threads", &vpp::num_threads);
#ifdef VPP_WITH_CUDA
    module.attr("built_with_cuda") = true;
    vpp::bind_cuda_kernels(module);
#else
    module.attr("built_with_cuda") = false;
#endif
}
