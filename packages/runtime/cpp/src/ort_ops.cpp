// The runtime's fused kernels as ONNX Runtime custom ops, domain "vpp.fused".
//
// A plain shared library (no Python in it) that ORT loads by path:
//   SessionOptions.register_custom_ops_library(".../libvpp_ort_ops.so")      (Python)
//   Ort::SessionOptions::RegisterCustomOpsLibrary(...)                        (C++)
// It calls only the ORT C API handed to RegisterCustomOps, so it needs onnxruntime_c_api.h at
// build time and no ORT library to link against; it works with any ORT whose C API is at
// least the header's version (ORT_API_VERSION). Tensors are read and written in place: no
// copies, and the CPU op runs on ORT's intra-op thread pool (KernelContext_ParallelFor), so
// SessionOptions.intra_op_num_threads holds for it as for ORT's own kernels.
//
// Ops:
//   GroupNorm(X, scale, bias) -> Y        attributes num_groups (int), epsilon (float),
//                                          silu (int, 0 or 1: apply SiLU to the output)
//     X (N, C, D1, ..., Dk) float32, k >= 0; scale, bias (C). Statistics over the
//     (C / num_groups) x D1 x ... x Dk values of each (n, group), as torch.nn.GroupNorm.
//   GeGLU(value, gate) -> Y                 Y = value * gelu(gate), the exact (erf) GELU;
//     value and gate float32 of one shape (the GEGLU feed-forward's two half projections).
//   Both on CPU, and on CUDA when built with VPP_WITH_CUDA.

#include <onnxruntime_c_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "parallel.h"
#include "vpp/kernels.h"
#ifdef VPP_WITH_CUDA
#include "vpp/cuda_kernels.h"
#endif

namespace {

constexpr const char* kDomain = "vpp.fused";
const OrtApi* api = nullptr;

#define VPP_ORT_RETURN_IF_ERROR(expr)            \
    do {                                         \
        if (OrtStatus* status_ = (expr)) return status_; \
    } while (0)

OrtStatus* invalid(const std::string& message) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("vpp.fused." + message).c_str());
}

// The shape of a tensor value (an owned copy of its dimensions).
OrtStatus* tensor_shape(const OrtValue* value, std::vector<std::int64_t>& dims, ONNXTensorElementDataType* type) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    VPP_ORT_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
    size_t rank = 0;
    OrtStatus* status = api->GetDimensionsCount(info, &rank);
    if (!status) {
        dims.resize(rank);
        status = api->GetDimensions(info, dims.data(), rank);
    }
    if (!status) status = api->GetTensorElementType(info, type);
    api->ReleaseTensorTypeAndShapeInfo(info);
    return status;
}

std::int64_t element_count(const std::vector<std::int64_t>& dims, size_t first = 0) {
    std::int64_t count = 1;
    for (size_t i = first; i < dims.size(); ++i) count *= dims[i];
    return count;
}

// -- GroupNorm -------------------------------------------------------------------------------

struct GroupNormKernel {
    std::int64_t num_groups;
    float epsilon;
    bool silu;
    bool on_cuda;
};

struct GroupNormCall {
    const float* x;
    const float* scale;
    const float* bias;
    float* y;
    std::int64_t channels, spatial, num_groups;
    float epsilon;
    bool silu;
};

void group_norm_item(void* data, size_t item) {
    const auto& call = *static_cast<const GroupNormCall*>(data);
    const auto index = static_cast<std::int64_t>(item);
    vpp::group_norm_silu_items(call.x, call.scale, call.bias, call.y, call.channels, call.spatial,
                               call.num_groups, call.epsilon, call.silu, index, index + 1);
}

OrtStatus* ORT_API_CALL create_group_norm(const OrtCustomOp* op, const OrtApi* ort, const OrtKernelInfo* info,
                                          void** kernel) noexcept {
    std::int64_t num_groups = 0, silu = 0;
    float epsilon = 0.0f;
    VPP_ORT_RETURN_IF_ERROR(ort->KernelInfoGetAttribute_int64(info, "num_groups", &num_groups));
    VPP_ORT_RETURN_IF_ERROR(ort->KernelInfoGetAttribute_float(info, "epsilon", &epsilon));
    VPP_ORT_RETURN_IF_ERROR(ort->KernelInfoGetAttribute_int64(info, "silu", &silu));
    if (num_groups <= 0) return invalid("GroupNorm: num_groups must be positive, got " + std::to_string(num_groups));
    if (!(epsilon >= 0.0f)) return invalid("GroupNorm: epsilon must be >= 0");
    if (silu != 0 && silu != 1) return invalid("GroupNorm: silu must be 0 or 1, got " + std::to_string(silu));
    const char* provider = op->GetExecutionProviderType(op);
    const bool on_cuda = provider != nullptr && std::string(provider) == "CUDAExecutionProvider";
    *kernel = new GroupNormKernel{num_groups, epsilon, silu == 1, on_cuda};
    return nullptr;
}

OrtStatus* ORT_API_CALL compute_group_norm(void* kernel_data, OrtKernelContext* context) noexcept {
    const auto& kernel = *static_cast<const GroupNormKernel*>(kernel_data);
    const OrtValue* inputs[3] = {};
    for (size_t i = 0; i < 3; ++i) VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));
    std::vector<std::int64_t> dims, scale_dims, bias_dims;
    ONNXTensorElementDataType type{}, scale_type{}, bias_type{};
    VPP_ORT_RETURN_IF_ERROR(tensor_shape(inputs[0], dims, &type));
    VPP_ORT_RETURN_IF_ERROR(tensor_shape(inputs[1], scale_dims, &scale_type));
    VPP_ORT_RETURN_IF_ERROR(tensor_shape(inputs[2], bias_dims, &bias_type));
    if (dims.size() < 2) return invalid("GroupNorm: X needs at least 2 dimensions (N, C, ...), got " + std::to_string(dims.size()));
    const std::int64_t batch = dims[0], channels = dims[1], spatial = element_count(dims, 2);
    if (channels % kernel.num_groups != 0)
        return invalid("GroupNorm: " + std::to_string(channels) + " channels do not split into " +
                       std::to_string(kernel.num_groups) + " groups");
    if (element_count(scale_dims) != channels || element_count(bias_dims) != channels)
        return invalid("GroupNorm: scale and bias need " + std::to_string(channels) + " values (one per channel)");

    OrtValue* output = nullptr;
    VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, dims.data(), dims.size(), &output));
    void* pointers[4] = {};
    for (size_t i = 0; i < 3; ++i) VPP_ORT_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(inputs[i]), &pointers[i]));
    VPP_ORT_RETURN_IF_ERROR(api->GetTensorMutableData(output, &pointers[3]));
    const GroupNormCall call{static_cast<const float*>(pointers[0]), static_cast<const float*>(pointers[1]),
                             static_cast<const float*>(pointers[2]), static_cast<float*>(pointers[3]),
                             channels, spatial, kernel.num_groups, kernel.epsilon, kernel.silu};
    const std::int64_t items = batch * kernel.num_groups;
    if (items == 0 || spatial == 0) return nullptr;
#ifdef VPP_WITH_CUDA
    if (kernel.on_cuda) {
        void* stream = nullptr;
        VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetGPUComputeStream(context, &stream));
        const cudaError_t error = vpp::cuda::group_norm_silu(call.x, call.scale, call.bias, call.y, batch, channels, spatial,
                                                             kernel.num_groups, kernel.epsilon, kernel.silu,
                                                             static_cast<cudaStream_t>(stream));
        if (error != cudaSuccess)
            return api->CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string("vpp.fused.GroupNorm: CUDA launch failed: ") + cudaGetErrorString(error)).c_str());
        return nullptr;
    }
#endif
    if (items * (channels / kernel.num_groups) * spatial < vpp::detail::kMinParallelWork || items == 1) {
        vpp::group_norm_silu_items(call.x, call.scale, call.bias, call.y, channels, spatial, kernel.num_groups,
                                   kernel.epsilon, kernel.silu, 0, items);
        return nullptr;
    }
    return api->KernelContext_ParallelFor(context, &group_norm_item, static_cast<size_t>(items), 0,
                                          const_cast<GroupNormCall*>(&call));
}

void ORT_API_CALL destroy_group_norm(void* kernel) noexcept { delete static_cast<GroupNormKernel*>(kernel); }

// -- GeGLU ------------------------------------------------------------------------------------

struct GegluKernel {
    bool on_cuda;
};

struct GegluCall {
    const float* value;
    const float* gate;
    float* y;
    std::int64_t count, chunk;
};

void geglu_chunk(void* data, size_t index) {
    const auto& call = *static_cast<const GegluCall*>(data);
    const std::int64_t begin = static_cast<std::int64_t>(index) * call.chunk;
    vpp::geglu_range(call.value, call.gate, call.y, begin, std::min(begin + call.chunk, call.count));
}

OrtStatus* ORT_API_CALL create_geglu(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo*, void** kernel) noexcept {
    const char* provider = op->GetExecutionProviderType(op);
    *kernel = new GegluKernel{provider != nullptr && std::string(provider) == "CUDAExecutionProvider"};
    return nullptr;
}

OrtStatus* ORT_API_CALL compute_geglu(void* kernel_data, OrtKernelContext* context) noexcept {
    const auto& kernel = *static_cast<const GegluKernel*>(kernel_data);
    const OrtValue* inputs[2] = {};
    for (size_t i = 0; i < 2; ++i) VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));
    std::vector<std::int64_t> dims, gate_dims;
    ONNXTensorElementDataType type{}, gate_type{};
    VPP_ORT_RETURN_IF_ERROR(tensor_shape(inputs[0], dims, &type));
    VPP_ORT_RETURN_IF_ERROR(tensor_shape(inputs[1], gate_dims, &gate_type));
    if (dims != gate_dims) return invalid("GeGLU: value and gate must have one shape");
    OrtValue* output = nullptr;
    VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, dims.data(), dims.size(), &output));
    void* pointers[3] = {};
    for (size_t i = 0; i < 2; ++i) VPP_ORT_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(inputs[i]), &pointers[i]));
    VPP_ORT_RETURN_IF_ERROR(api->GetTensorMutableData(output, &pointers[2]));
    const std::int64_t count = element_count(dims);
    if (count == 0) return nullptr;
    const auto* value = static_cast<const float*>(pointers[0]);
    const auto* gate = static_cast<const float*>(pointers[1]);
    auto* y = static_cast<float*>(pointers[2]);
#ifdef VPP_WITH_CUDA
    if (kernel.on_cuda) {
        void* stream = nullptr;
        VPP_ORT_RETURN_IF_ERROR(api->KernelContext_GetGPUComputeStream(context, &stream));
        const cudaError_t error = vpp::cuda::geglu(value, gate, y, count, static_cast<cudaStream_t>(stream));
        if (error != cudaSuccess)
            return api->CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string("vpp.fused.GeGLU: CUDA launch failed: ") + cudaGetErrorString(error)).c_str());
        return nullptr;
    }
#else
    (void)kernel;
#endif
    // Chunks of 16 k values: large enough to amortise a task, small enough to share out.
    constexpr std::int64_t kChunk = std::int64_t{1} << 14;
    if (count <= kChunk) {
        vpp::geglu_range(value, gate, y, 0, count);
        return nullptr;
    }
    GegluCall call{value, gate, y, count, kChunk};
    return api->KernelContext_ParallelFor(context, &geglu_chunk, static_cast<size_t>((count + kChunk - 1) / kChunk), 0, &call);
}

void ORT_API_CALL destroy_geglu(void* kernel) noexcept { delete static_cast<GegluKernel*>(kernel); }

// Y has X's shape and type. ORT hands the input's type as an info object that it owns, with
// -1 for a dimension it does not know; setting the output writes every dimension without a
// symbolic name as its number, so an unknown one would become a literal -1 that later clashes
// with the real size. Unknown dimensions therefore get a symbolic name of their own. Rank 0
// also stands for "no shape known" (neither op takes a scalar): the output is then left unset.
OrtStatus* ORT_API_CALL infer_same_shape(const OrtCustomOp*, OrtShapeInferContext* context) noexcept {
    static std::atomic<std::uint64_t> unknown_dims{0};
    OrtTensorTypeAndShapeInfo* input = nullptr;
    VPP_ORT_RETURN_IF_ERROR(api->ShapeInferContext_GetInputTypeShape(context, 0, &input));
    size_t rank = 0;
    VPP_ORT_RETURN_IF_ERROR(api->GetDimensionsCount(input, &rank));
    if (rank == 0) return nullptr;
    std::vector<std::int64_t> dims(rank);
    std::vector<const char*> symbols(rank);
    ONNXTensorElementDataType type{};
    VPP_ORT_RETURN_IF_ERROR(api->GetDimensions(input, dims.data(), rank));
    VPP_ORT_RETURN_IF_ERROR(api->GetSymbolicDimensions(input, symbols.data(), rank));
    VPP_ORT_RETURN_IF_ERROR(api->GetTensorElementType(input, &type));
    std::vector<std::string> names(rank);
    for (size_t i = 0; i < rank; ++i) {
        if (symbols[i] != nullptr && symbols[i][0] != '\0') {
            names[i] = symbols[i];
        } else if (dims[i] < 0) {
            names[i] = "vpp_fused_dim_" + std::to_string(unknown_dims.fetch_add(1));
        }
        symbols[i] = names[i].c_str();
    }
    OrtTensorTypeAndShapeInfo* output = nullptr;
    VPP_ORT_RETURN_IF_ERROR(api->CreateTensorTypeAndShapeInfo(&output));
    OrtStatus* status = api->SetTensorElementType(output, type);
    if (!status) status = api->SetDimensions(output, dims.data(), rank);
    if (!status) status = api->SetSymbolicDimensions(output, symbols.data(), rank);
    if (!status) status = api->ShapeInferContext_SetOutputTypeShape(context, 0, output);
    api->ReleaseTensorTypeAndShapeInfo(output);
    return status;
}

// -- the OrtCustomOp tables ------------------------------------------------------------------

template <const char* Provider>
const char* ORT_API_CALL provider_of(const OrtCustomOp*) noexcept { return Provider; }
const char* ORT_API_CALL group_norm_name(const OrtCustomOp*) noexcept { return "GroupNorm"; }
const char* ORT_API_CALL geglu_name(const OrtCustomOp*) noexcept { return "GeGLU"; }
ONNXTensorElementDataType ORT_API_CALL float_type(const OrtCustomOp*, size_t) noexcept { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
size_t ORT_API_CALL three(const OrtCustomOp*) noexcept { return 3; }
size_t ORT_API_CALL two(const OrtCustomOp*) noexcept { return 2; }
size_t ORT_API_CALL one(const OrtCustomOp*) noexcept { return 1; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) noexcept { return INPUT_OUTPUT_REQUIRED; }
OrtMemType ORT_API_CALL default_memory(const OrtCustomOp*, size_t) noexcept { return OrtMemTypeDefault; }
int ORT_API_CALL arity_one(const OrtCustomOp*) noexcept { return 1; }
int ORT_API_CALL homogeneous(const OrtCustomOp*) noexcept { return 1; }
int ORT_API_CALL start_version(const OrtCustomOp*) noexcept { return 1; }
int ORT_API_CALL end_version(const OrtCustomOp*) noexcept { return 2147483647; }
size_t ORT_API_CALL no_pairs(int** input_index, int** output_index) noexcept {
    *input_index = nullptr;
    *output_index = nullptr;
    return 0;
}
void ORT_API_CALL release_pairs(int*, int*) noexcept {}

char kCpuProvider[] = "CPUExecutionProvider";
#ifdef VPP_WITH_CUDA
char kCudaProvider[] = "CUDAExecutionProvider";
#endif

// One op's table: float32 inputs and one float32 output of the first input's shape.
template <const char* Provider>
OrtCustomOp float_op(const char*(ORT_API_CALL* name)(const OrtCustomOp*) noexcept,
                     size_t(ORT_API_CALL* input_count)(const OrtCustomOp*) noexcept,
                     OrtStatus*(ORT_API_CALL* create)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**) noexcept,
                     OrtStatus*(ORT_API_CALL* compute)(void*, OrtKernelContext*) noexcept,
                     void(ORT_API_CALL* destroy)(void*) noexcept) {
    OrtCustomOp op{};
    op.version = ORT_API_VERSION;
    op.GetName = name;
    op.GetExecutionProviderType = &provider_of<Provider>;
    op.GetInputType = &float_type;
    op.GetInputTypeCount = input_count;
    op.GetOutputType = &float_type;
    op.GetOutputTypeCount = &one;
    op.KernelDestroy = destroy;
    op.GetInputCharacteristic = &required;
    op.GetOutputCharacteristic = &required;
    op.GetInputMemoryType = &default_memory;
    op.GetVariadicInputMinArity = &arity_one;
    op.GetVariadicInputHomogeneity = &homogeneous;
    op.GetVariadicOutputMinArity = &arity_one;
    op.GetVariadicOutputHomogeneity = &homogeneous;
    op.CreateKernelV2 = create;
    op.KernelComputeV2 = compute;
    op.InferOutputShapeFn = &infer_same_shape;
    op.GetStartVersion = &start_version;
    op.GetEndVersion = &end_version;
    op.GetMayInplace = &no_pairs;
    op.ReleaseMayInplace = &release_pairs;
    op.GetAliasMap = &no_pairs;
    op.ReleaseAliasMap = &release_pairs;
    return op;
}

template <const char* Provider>
OrtCustomOp group_norm_op() {
    return float_op<Provider>(&group_norm_name, &three, &create_group_norm, &compute_group_norm, &destroy_group_norm);
}

template <const char* Provider>
OrtCustomOp geglu_op() {
    return float_op<Provider>(&geglu_name, &two, &create_geglu, &compute_geglu, &destroy_geglu);
}

// ORT keeps pointers to the ops and the domain for as long as sessions use them: they live
// for the whole process, created once.
OrtCustomOp cpu_ops[] = {group_norm_op<kCpuProvider>(), geglu_op<kCpuProvider>()};
#ifdef VPP_WITH_CUDA
OrtCustomOp cuda_ops[] = {group_norm_op<kCudaProvider>(), geglu_op<kCudaProvider>()};
#endif
OrtCustomOpDomain* domain = nullptr;
std::mutex domain_mutex;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
    std::lock_guard<std::mutex> lock(domain_mutex);
    if (api == nullptr) {
        // GetApi returns null when this ORT is older than the header the library was built
        // with; version 1 of the API, which every ORT has, still reports that.
        api = api_base->GetApi(ORT_API_VERSION);
        if (api == nullptr) {
            const std::string message = "vpp.fused ops need ONNX Runtime with C API version >= " +
                                        std::to_string(ORT_API_VERSION) + "; this is ONNX Runtime " +
                                        api_base->GetVersionString();
            return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
        }
    }
    if (domain == nullptr) {
        OrtCustomOpDomain* created = nullptr;
        VPP_ORT_RETURN_IF_ERROR(api->CreateCustomOpDomain(kDomain, &created));
        OrtStatus* status = nullptr;
        for (OrtCustomOp& op : cpu_ops)
            if (!status) status = api->CustomOpDomain_Add(created, &op);
#ifdef VPP_WITH_CUDA
        for (OrtCustomOp& op : cuda_ops)
            if (!status) status = api->CustomOpDomain_Add(created, &op);
#endif
        if (status) {
            api->ReleaseCustomOpDomain(created);
            return status;
        }
        domain = created;
    }
    return api->AddCustomOpDomain(options, domain);
}

// Which ops and providers this build holds, for the Python side's checks
// ("Op:Provider,Provider;Op:Provider").
extern "C" __attribute__((visibility("default"))) const char* vpp_fused_ops() {
#ifdef VPP_WITH_CUDA
    return "GroupNorm:CPUExecutionProvider,CUDAExecutionProvider;GeGLU:CPUExecutionProvider,CUDAExecutionProvider";
#else
    return "GroupNorm:CPUExecutionProvider;GeGLU:CPUExecutionProvider";
#endif
}
