// nnxp fused CUDA kernels: one source, one cupy.RawModule per (device, dtype), compiled on first use.
//
// Plain CUDA C++ that NVRTC accepts without any header (no <cmath>, no <cstdint>, no CuPy macros) and that
// `nvcc -ptx` compiles for sm_80 / sm_90. Every kernel is a template on T (float or double); CuPy instantiates
// the ones it needs through `name_expressions` ("nnxp_sgd<float>", ...); nvcc gets explicit instantiations
// with -DNNXP_EXPLICIT_INSTANTIATION (the compile test). The element math lives in NX_HD functions that the
// kernels call, so the same formulas also build as host C++ (-DNNXP_HOST_HARNESS, g++) for a CPU check.
//
// Numerics mirror the NumPy references in nnxp/ops/{dense,activation,loss,optim,dropout}.py operation by operation
// (same order, same constants, NaN-propagating max/min like np.maximum/np.minimum). The loader compiles with
// --fmad=false so no multiply-add is contracted. What that buys, and what it does not:
// - CuPy's RawModule always adds -ftz=true (cupy/cuda/compiler.py _compile_with_cache_cuda), so in float32
//   a subnormal input is read as +-0 and a subnormal result is flushed to +-0, where NumPy keeps both. CuPy
//   compiles its own ufuncs with the same flag, so on a GPU the fused kernel and the CuPy reference flush
//   alike; against NumPy on the host, float32 agrees only while every intermediate is 0 or normal.
// - +, -, *, / and sqrt round to nearest as IEEE requires (-prec-div and -prec-sqrt stay on; -ftz does not
//   change them), so with normal values each such step rounds exactly as the reference's ufunc does. float64
//   is not affected by -ftz at all.
// - exp, log, log1p, expm1 and tanh are CUDA's (documented as within 1-2 ulp), not the host libm's or CuPy's
//   exact choice of intrinsic, so any step that calls one may differ from the reference in its last bits.
// So the kernels match their references to a few ulps per step, not bit for bit; the tests compare with
// tolerances (tests/test_ops_cuda.py) and `nnxp selftest` measures the error on the user's own GPU.
//
// Reductions are deterministic (no floating-point atomics): the bias gradient is a two-stage column sum and
// the losses finish in the last block to retire (a ticket counter orders blocks, not sums). A launch with the
// same grid on the same GPU gives bitwise the same result every time (run to run, not GPU to host).

#ifdef NNXP_HOST_HARNESS
#include <math.h>
#define NX_HD static inline
#else
#define NX_HD static __device__ __forceinline__
#endif

// --- element math (shared by kernels and the host harness) ---------------------------------------------------

// Activation codes (nnxp/ops/_cuda.py reads ACT_CODES from this block, up to its blank line). Softmax is a
// row kernel, not a code.
#define NX_LINEAR 0
#define NX_RELU 1
#define NX_LEAKY_RELU 2
#define NX_ELU 3
#define NX_GELU 4
#define NX_SIGMOID 5
#define NX_TANH 6
#define NX_SOFTPLUS 7
#define NX_SILU 8

#define NX_LEAKY_SLOPE 0.01                  // LEAKY_RELU_SLOPE
#define NX_ELU_ALPHA 1.0                     // ELU_ALPHA
#define NX_GELU_C 0.7978845608028654         // sqrt(2 / pi), as math.sqrt(2.0 / math.pi)
#define NX_GELU_C1 0.035677408136300125      // 0.044715 * sqrt(2 / pi), folded in double as Python does
#define NX_GELU_C3 0.10703222440890037       // 3 * 0.044715 * sqrt(2 / pi)

NX_HD float nx_tanh(float x) { return tanhf(x); }
NX_HD double nx_tanh(double x) { return tanh(x); }
NX_HD float nx_exp(float x) { return expf(x); }
NX_HD double nx_exp(double x) { return exp(x); }
NX_HD float nx_expm1(float x) { return expm1f(x); }
NX_HD double nx_expm1(double x) { return expm1(x); }
NX_HD float nx_log1p(float x) { return log1pf(x); }
NX_HD double nx_log1p(double x) { return log1p(x); }
NX_HD float nx_log(float x) { return logf(x); }
NX_HD double nx_log(double x) { return log(x); }
NX_HD float nx_sqrt(float x) { return sqrtf(x); }
NX_HD double nx_sqrt(double x) { return sqrt(x); }
NX_HD float nx_abs(float x) { return fabsf(x); }
NX_HD double nx_abs(double x) { return fabs(x); }

// np.maximum / np.minimum: a NaN in either argument gives NaN (fmax/fmin would drop it).
template <typename T>
NX_HD T nx_max(T a, T b) { return (a != a || a > b) ? a : b; }
template <typename T>
NX_HD T nx_min(T a, T b) { return (a != a || a < b) ? a : b; }

// y = f(z) for one element (the reference's ufunc sequence in activation.py, step by step).
template <typename T>
NX_HD T act_forward(int code, T z) {
    switch (code) {
        case NX_RELU:
            return nx_max(z, T(0));
        case NX_LEAKY_RELU:
            return nx_max(z, z * T(NX_LEAKY_SLOPE));
        case NX_ELU: {
            T neg = nx_expm1(nx_min(z, T(0)));  // min first so expm1 never overflows
            neg = neg * T(NX_ELU_ALPHA);
            return nx_max(z, T(0)) + neg;
        }
        case NX_GELU: {
            T t = z * z;
            t = t * T(NX_GELU_C1);
            t = t + T(NX_GELU_C);
            t = t * z;
            t = nx_tanh(t);
            t = t + T(1);
            t = t * T(0.5);
            return z * t;
        }
        case NX_SIGMOID: {
            T t = nx_tanh(z * T(0.5));  // 0.5 (1 + tanh(z / 2)) cannot overflow
            t = t * T(0.5);
            return t + T(0.5);
        }
        case NX_TANH:
            return nx_tanh(z);
        case NX_SOFTPLUS: {
            T t = nx_log1p(nx_exp(-nx_abs(z)));  // max(z, 0) + log1p(e^-|z|)
            return nx_max(z, T(0)) + t;
        }
        case NX_SILU: {
            T s = nx_tanh(z * T(0.5));  // z sigmoid(z), the sigmoid as in NX_SIGMOID
            s = s * T(0.5);
            s = s + T(0.5);
            return z * s;
        }
        default:  // NX_LINEAR
            return z;
    }
}

// The activations whose backward reads z rather than y (needs_z in nnxp/ops/activation.py's ACTIVATION_OPS).
NX_HD bool act_needs_z(int code) { return code == NX_GELU || code == NX_SILU; }

// dz = dy * f'(.) for one element, from y = f(z) (and z, for GELU and SiLU: ACTIVATION_OPS' needs_z).
template <typename T>
NX_HD T act_backward(int code, T dy, T y, T z) {
    switch (code) {
        case NX_RELU:
            return dy * (y > T(0) ? T(1) : T(0));  // dy * (y > 0): inf * 0 is NaN, as in NumPy
        case NX_LEAKY_RELU:
            return dy * (y > T(0) ? T(1) : T(NX_LEAKY_SLOPE));
        case NX_ELU:
            return dy * (y > T(0) ? T(1) : y + T(NX_ELU_ALPHA));  // alpha e^z = y + alpha
        case NX_GELU: {
            T z2 = z * z;
            T u = z2 * T(NX_GELU_C1);
            u = u + T(NX_GELU_C);
            u = u * z;
            T th = nx_tanh(u);
            T du = z2 * T(NX_GELU_C3);
            du = du + T(NX_GELU_C);
            du = du * z;
            T sech2 = th * th;
            sech2 = T(1) - sech2;
            du = du * sech2;
            th = th + T(1);
            th = th + du;
            th = th * T(0.5);
            return dy * th;
        }
        case NX_SIGMOID: {
            T t = T(1) - y;
            t = t * y;
            return dy * t;
        }
        case NX_TANH: {
            T t = y * y;
            t = T(1) - t;
            return dy * t;
        }
        case NX_SOFTPLUS: {
            T t = nx_expm1(-y);  // sigmoid(z) = 1 - e^-y
            t = -t;
            return dy * t;
        }
        case NX_SILU: {
            T s = nx_tanh(z * T(0.5));  // f'(z) = s (1 + z (1 - s)), s = sigmoid(z): needs z, not y
            s = s * T(0.5);
            s = s + T(0.5);
            T t = T(1) - s;
            t = t * z;
            t = t + T(1);
            t = t * s;
            return dy * t;
        }
        default:  // NX_LINEAR
            return dy;
    }
}

// --- optimizer element updates (optim.py, step by step; `decay` = 1 - lr * weight_decay, applied first) --------

// mode 0: plain, 1: momentum, 2: Nesterov
template <typename T>
NX_HD void sgd_elem(T& p, T g, T& v, T lr, T momentum, T decay, int mode) {
    p = p * decay;
    T t = g * lr;
    if (mode == 0) {
        p = p - t;
        return;
    }
    v = v * momentum;
    v = v - t;
    if (mode == 2) {
        p = p - t;
        t = v * momentum;
        p = p + t;
    } else {
        p = p + v;
    }
}

template <typename T>
NX_HD void rmsprop_elem(T& p, T g, T& avg_sq, T& mom, T& avg_g, T lr, T rho, T one_minus_rho, T momentum, T eps,
                        T decay, int has_mom, int centered) {
    p = p * decay;
    avg_sq = avg_sq * rho;
    T t = g * g;
    t = t * one_minus_rho;
    avg_sq = avg_sq + t;
    if (centered) {
        avg_g = avg_g * rho;
        t = g * one_minus_rho;
        avg_g = avg_g + t;
        t = avg_g * avg_g;
        t = avg_sq - t;
        t = t + eps;
    } else {
        t = avg_sq + eps;
    }
    t = nx_sqrt(t);
    t = g / t;
    t = t * lr;
    if (has_mom) {
        mom = mom * momentum;
        mom = mom + t;
        p = p - mom;
    } else {
        p = p - t;
    }
}

template <typename T>
NX_HD void adagrad_elem(T& p, T g, T& acc, T lr, T eps, T decay) {
    p = p * decay;
    T t = g * g;
    acc = acc + t;
    t = acc + eps;
    t = nx_sqrt(t);
    t = g / t;
    t = t * lr;
    p = p - t;
}

template <typename T>
NX_HD void adadelta_elem(T& p, T g, T& acc_g, T& acc_dx, T lr, T rho, T one_minus_rho, T eps, T decay) {
    p = p * decay;
    acc_g = acc_g * rho;
    T t = g * g;
    t = t * one_minus_rho;
    acc_g = acc_g + t;
    t = acc_g + eps;
    t = (acc_dx + eps) / t;
    t = nx_sqrt(t);
    t = t * g;  // -dx
    acc_dx = acc_dx * rho;
    acc_dx = acc_dx + one_minus_rho * (t * t);
    t = t * lr;
    p = p - t;
}

// inv_alpha = 1 / (lr sqrt(1 - b2^t) / (1 - b1^t)), computed in double on the host as the reference does
template <typename T>
NX_HD void adam_elem(T& p, T g, T& m, T& v, T one_minus_b1, T one_minus_b2, T eps, T inv_alpha, T decay) {
    p = p * decay;
    T t = g - m;
    t = t * one_minus_b1;
    m = m + t;
    t = g * g;
    t = t - v;
    t = t * one_minus_b2;
    v = v + t;
    t = nx_sqrt(v);
    t = t + eps;
    t = t * inv_alpha;
    t = m / t;
    p = p - t;
}

template <typename T>
NX_HD void adamax_elem(T& p, T g, T& m, T& u, T one_minus_b1, T b2, T eps, T inv_alpha, T decay) {
    p = p * decay;
    T t = g - m;
    t = t * one_minus_b1;
    m = m + t;
    u = u * b2;
    t = nx_abs(g);
    u = nx_max(u, t);
    t = u + eps;
    t = t * inv_alpha;
    t = m / t;
    p = p - t;
}

// sign(c) as np.sign: +-1, +0 for +-0, NaN for NaN
template <typename T>
NX_HD T nx_sign(T c) { return c > T(0) ? T(1) : (c < T(0) ? T(-1) : (c == c ? T(0) : c)); }

template <typename T>
NX_HD void lion_elem(T& p, T g, T& m, T lr, T one_minus_b1, T one_minus_b2, T decay) {
    p = p * decay;
    T t = g - m;
    t = t * one_minus_b1;
    t = t + m;
    t = nx_sign(t);
    t = t * lr;
    p = p - t;
    t = g - m;
    t = t * one_minus_b2;
    m = m + t;
}

// --- dropout: a counter-based mask, so backward regenerates it instead of storing it -------------------------

// splitmix64 output for state seed + (offset + 1) * golden gamma: a full-avalanche hash of (seed, offset)
NX_HD unsigned long long nx_hash(unsigned long long seed, unsigned long long offset) {
    unsigned long long z = seed + (offset + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// u in [0, 1) from the top 24 (float) or 53 (double) bits: exact (the smallest non-zero u, 2^-24, is a normal
// float, so -ftz=true never touches it), so the MASK matches the host reference bit for bit; x * mask can still
// differ from NumPy's where it is a float32 subnormal, which the GPU flushes to 0
NX_HD float nx_uniform(unsigned long long h, float) { return (float)(h >> 40) * 5.9604644775390625e-08f; }
NX_HD double nx_uniform(unsigned long long h, double) { return (double)(h >> 11) * 1.1102230246251565e-16; }

// mask value: scale where u >= rate (kept), else 0; as the layer's (u >= rate) * (1 / (1 - rate))
template <typename T>
NX_HD T dropout_mask(unsigned long long seed, unsigned long long offset, T rate, T scale) {
    return nx_uniform(nx_hash(seed, offset), T(0)) >= rate ? scale : T(0);
}

#ifndef NNXP_HOST_HARNESS

// --- reductions ---------------------------------------------------------------------------------------------

struct SumOp {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return nx_max(a, b); }
};

// Butterfly over the 32 lanes: every lane ends with the same value. Needs all 32 lanes present.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Whole-block reduction (blockDim.x a multiple of 32); every thread gets the result. `shm` holds 32 T.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* shm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // shm may still be read by a previous call
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    T r = shm[0];
    for (int w = 1; w < n_warps; ++w) r = op(r, shm[w]);  // fixed order: deterministic
    return r;
}

// Grid-level finish of a mean: each block leaves its partial sum, the last block to retire adds them in
// block order and writes total / denom into loss[0]. `counter` is 0 when the launch starts and is never shared
// by two launches in flight: either made for this launch alone (cupy.zeros on its stream) or, when the caller
// owns the loss (loss_out), kept per stream and re-armed to 0 here by the last block, which the next launch on
// that stream (run after this one, in stream order) relies on.
template <typename T>
__device__ __forceinline__ void finish_mean(T block_total, T* partials, unsigned int* counter, T* loss, T denom,
                                            T* shm) {
    __shared__ int is_last;
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = block_total;
        __threadfence();  // the partial is visible device-wide before the ticket is taken
        const unsigned int ticket = atomicAdd(counter, 1u);
        is_last = (ticket == gridDim.x - 1);
    }
    __syncthreads();
    if (is_last) {
        __threadfence();
        const volatile T* parts = partials;
        T acc = T(0);
        for (unsigned int k = threadIdx.x; k < gridDim.x; k += blockDim.x) acc = acc + parts[k];
        acc = block_reduce(acc, SumOp(), shm);
        if (threadIdx.x == 0) {
            loss[0] = acc / denom;
            *counter = 0u;
        }
    }
}

// --- (a) bias + activation forward --------------------------------------------------------------------------

// y (rows, cols) row-major holds x @ w on entry; on exit y = f(y + b). With store_z, z = y + b also goes to zbuf
// (GELU's backward needs it). Flat grid-stride loop; the column index is carried along instead of divided.
template <typename T>
__global__ void nnxp_bias_act_forward(T* y, const T* b, T* zbuf, long long total, long long cols, int code,
                                      int has_bias, int store_z) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    if (i >= total) return;
    long long col = i % cols;
    const long long step = stride % cols;
    for (; i < total; i += stride) {
        T z = y[i];
        if (has_bias) z = z + b[col];
        if (store_z) zbuf[i] = z;
        y[i] = act_forward(code, z);
        col += step;
        if (col >= cols) col -= cols;
    }
}

// Softmax over each row of x (after adding b) into y: one block per row, three sweeps (max, sum of exp,
// write) that re-read the row rather than store exp, so each element is written once. y may be x (in place:
// the dense forward's epilogue); each element is read and then written by the same thread, after the two
// reductions. Blocks stride over rows.
template <typename T>
__global__ void nnxp_softmax_forward(const T* x, T* y, const T* b, long long rows, long long cols, int has_bias) {
    __shared__ T shm[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * cols;
        T* out = y + r * cols;
        // start from a real element (element 0 for idle threads): max is idempotent, and no -inf is needed
        long long j0 = threadIdx.x < cols ? threadIdx.x : 0;
        T m = has_bias ? row[j0] + b[j0] : row[j0];
        for (long long j = threadIdx.x + blockDim.x; j < cols; j += blockDim.x) {
            m = nx_max(m, has_bias ? row[j] + b[j] : row[j]);
        }
        m = block_reduce(m, MaxOp(), shm);  // subtract the row max so exp cannot overflow
        T s = T(0);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            s = s + nx_exp((has_bias ? row[j] + b[j] : row[j]) - m);
        }
        s = block_reduce(s, SumOp(), shm);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            out[j] = nx_exp((has_bias ? row[j] + b[j] : row[j]) - m) / s;
        }
    }
}

// --- (b) activation backward with the bias gradient ---------------------------------------------------------

// dy (rows, cols) becomes dz = dy * f'(.) in place, and the column sums of dz (the bias gradient) come out of
// the same pass. Block (bx, by), bx * by = 256, bx a power of two <= 32: threadIdx.x walks columns (coalesced),
// threadIdx.y and blockIdx.y stride over rows; each thread sums its rows in a register, the block folds its
// by partial sums in shared memory (fixed tree). mode 0: no bias; 1: write db[col] (gridDim.y == 1);
// 2: write out[blockIdx.y * cols + col] and let nnxp_column_sum finish (two-stage, no atomics).
template <typename T>
__global__ void nnxp_act_backward_bias(T* dy, const T* y, const T* z, T* out, long long rows, long long cols,
                                       int code, int write_dz, int mode) {
    __shared__ T shm[256];
    const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
    const long long col = (long long)blockIdx.x * bx + tx;
    const bool need_z = act_needs_z(code);  // the wrapper passes a valid z only for these
    const bool need_y = !(code == NX_LINEAR || need_z);
    T acc = T(0);
    if (col < cols) {
        for (long long r = (long long)blockIdx.y * by + ty; r < rows; r += (long long)gridDim.y * by) {
            const long long i = r * cols + col;
            const T d = act_backward(code, dy[i], need_y ? y[i] : T(0), need_z ? z[i] : T(0));
            if (write_dz) dy[i] = d;
            acc = acc + d;
        }
    }
    if (mode == 0) return;  // uniform across the block
    shm[ty * bx + tx] = acc;
    __syncthreads();
    for (int s = by >> 1; s > 0; s >>= 1) {
        if (ty < s) shm[ty * bx + tx] = shm[ty * bx + tx] + shm[(ty + s) * bx + tx];
        __syncthreads();
    }
    if (ty == 0 && col < cols) {
        if (mode == 1) {
            out[col] = shm[tx];
        } else {
            out[(long long)blockIdx.y * cols + col] = shm[tx];
        }
    }
}

// db[col] = sum over k of partials[k, col], in k order (stage two of the bias gradient).
template <typename T>
__global__ void nnxp_column_sum(const T* partials, T* db, long long parts, long long cols) {
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
         c += (long long)gridDim.x * blockDim.x) {
        T acc = T(0);
        for (long long k = 0; k < parts; ++k) acc = acc + partials[k * cols + c];
        db[c] = acc;
    }
}

// Softmax backward per row (full Jacobian-vector product): dz = y * (dy - sum(dy * y)), dy overwritten.
template <typename T>
__global__ void nnxp_softmax_backward(T* dy, const T* y, long long rows, long long cols) {
    __shared__ T shm[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        T* drow = dy + r * cols;
        const T* yrow = y + r * cols;
        T s = T(0);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) s = s + drow[j] * yrow[j];
        s = block_reduce(s, SumOp(), shm);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) drow[j] = (drow[j] - s) * yrow[j];
    }
}

// --- (c) losses: value and gradient in one pass -------------------------------------------------------------

// Softmax + cross-entropy on logits (rows, cols) and one-hot (or soft) targets: one warp per row, blocks of
// 8 warps striding over rows. grad = (softmax * sum(t) - t) / n; loss = mean of lse * sum(t) - sum(t * s).
// grad may alias logits (each lane rewrites only what it alone reads, after the row's reductions).
template <typename T>
__global__ void nnxp_softmax_xent(const T* logits, const T* target, T* grad, T* partials, unsigned int* counter,
                                  T* loss, long long rows, long long cols, T inv_n, T n) {
    __shared__ T shm[32];
    const int lane = threadIdx.x & 31;
    const long long warps = blockDim.x >> 5;
    T acc = T(0);  // this warp's sum of row losses (the same in every lane)
    for (long long r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += (long long)gridDim.x * warps) {
        const T* lr = logits + r * cols;
        const T* tr = target + r * cols;
        T* gr = grad + r * cols;
        T m = lr[lane < cols ? lane : 0];
        for (long long j = lane + 32; j < cols; j += 32) m = nx_max(m, lr[j]);
        m = warp_reduce(m, MaxOp());
        T t_dot_s = T(0), sum_e = T(0), t_sum = T(0);
        for (long long j = lane; j < cols; j += 32) {
            const T s = lr[j] - m;  // shifted logit
            const T t = tr[j];
            t_dot_s = t_dot_s + t * s;
            sum_e = sum_e + nx_exp(s);
            t_sum = t_sum + t;
        }
        t_dot_s = warp_reduce(t_dot_s, SumOp());
        sum_e = warp_reduce(sum_e, SumOp());
        t_sum = warp_reduce(t_sum, SumOp());
        for (long long j = lane; j < cols; j += 32) {
            T g = nx_exp(lr[j] - m) / sum_e;
            g = g * t_sum;
            g = g - tr[j];
            gr[j] = g * inv_n;
        }
        acc = acc + (nx_log(sum_e) * t_sum - t_dot_s);
    }
    const T total = block_reduce(lane == 0 ? acc : T(0), SumOp(), shm);
    finish_mean(total, partials, counter, loss, n, shm);
}

// Softmax + cross-entropy with integer labels (rows,) int64. A negative label wraps once (as NumPy indexing);
// a label still out of range makes that row's loss NaN (no host sync to raise; the model validates labels).
// grad may alias logits (see `picked`).
template <typename T>
__global__ void nnxp_sparse_softmax_xent(const T* logits, const long long* labels, T* grad, T* partials,
                                         unsigned int* counter, T* loss, long long rows, long long cols, T inv_n,
                                         T n) {
    __shared__ T shm[32];
    const int lane = threadIdx.x & 31;
    const long long warps = blockDim.x >> 5;
    T acc = T(0);
    for (long long r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += (long long)gridDim.x * warps) {
        const T* lr = logits + r * cols;
        T* gr = grad + r * cols;
        long long label = labels[r];
        if (label < 0) label += cols;
        const bool valid = label >= 0 && label < cols;
        T m = lr[lane < cols ? lane : 0];
        for (long long j = lane + 32; j < cols; j += 32) m = nx_max(m, lr[j]);
        m = warp_reduce(m, MaxOp());
        // Each lane reads only the columns it owns (j = lane mod 32), so grad may alias logits: the label's
        // shifted logit comes from its owning lane through the warp sum (x + 0 + ... + 0 is x exactly). Reading
        // lr[label] from every lane instead raced with the owner's gradient write below (lanes of a warp do
        // not run in lockstep since Volta).
        T sum_e = T(0), picked = T(0);
        for (long long j = lane; j < cols; j += 32) {
            const T s = lr[j] - m;
            sum_e = sum_e + nx_exp(s);
            if (j == label) picked = s;
        }
        sum_e = warp_reduce(sum_e, SumOp());
        picked = warp_reduce(picked, SumOp());
        if (!valid) picked = nx_log(T(-1));  // log(-1): a quiet NaN
        for (long long j = lane; j < cols; j += 32) {
            T g = nx_exp(lr[j] - m) / sum_e;
            if (j == label) g = g - T(1);
            gr[j] = g * inv_n;
        }
        acc = acc + (nx_log(sum_e) - picked);
    }
    const T total = block_reduce(lane == 0 ? acc : T(0), SumOp(), shm);
    finish_mean(total, partials, counter, loss, n, shm);
}

// Sigmoid + binary cross-entropy, elementwise over all `total` entries, mean over all of them:
// loss = max(z, 0) - z t + log1p(e^-|z|); grad = (0.5 (1 + tanh(z / 2)) - t) / total. grad may alias logits.
template <typename T>
__global__ void nnxp_sigmoid_bce(const T* logits, const T* target, T* grad, T* partials, unsigned int* counter,
                                 T* loss, long long total, T inv_size, T size) {
    __shared__ T shm[32];
    T acc = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const T z = logits[i];
        const T t = target[i];
        const T a = nx_log1p(nx_exp(-nx_abs(z)));
        acc = acc + ((nx_max(z, T(0)) - z * t) + a);
        T s = nx_tanh(z * T(0.5));
        s = s * T(0.5);
        s = s + T(0.5);
        s = s - t;
        grad[i] = s * inv_size;
    }
    const T block_total = block_reduce(acc, SumOp(), shm);
    finish_mean(block_total, partials, counter, loss, size, shm);
}

// --- (d) optimizers: one elementwise pass over the flat buffers ---------------------------------------------
//
// The T scalars come by value, or, when `hp` is not null, from hp[0..k) in parameter order (the order of the
// floating-point entries of the *_scalars functions in nnxp/ops/optim.py, Update.device_scalars): a captured CUDA
// graph replays the same launch every step, so the step-dependent factors (learning rate schedules, Adam's
// bias correction) must live in device memory that the host rewrites before each replay.

#define NX_GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// v is read and written only with momentum (mode 1 or 2)
template <typename T>
__global__ void nnxp_sgd(T* p, const T* g, T* v, long long n, T lr, T momentum, T decay, int mode, const T* hp) {
    if (hp) {
        lr = hp[0];
        momentum = hp[1];
        decay = hp[2];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i];
        T vi = mode ? v[i] : T(0);
        sgd_elem(pi, g[i], vi, lr, momentum, decay, mode);
        p[i] = pi;
        if (mode) v[i] = vi;
    }
}

template <typename T>
__global__ void nnxp_rmsprop(T* p, const T* g, T* avg_sq, T* mom, T* avg_g, long long n, T lr, T rho,
                             T one_minus_rho, T momentum, T eps, T decay, int has_mom, int centered, const T* hp) {
    if (hp) {
        lr = hp[0];
        rho = hp[1];
        one_minus_rho = hp[2];
        momentum = hp[3];
        eps = hp[4];
        decay = hp[5];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], si = avg_sq[i];
        T mi = has_mom ? mom[i] : T(0);
        T ai = centered ? avg_g[i] : T(0);
        rmsprop_elem(pi, g[i], si, mi, ai, lr, rho, one_minus_rho, momentum, eps, decay, has_mom, centered);
        p[i] = pi;
        avg_sq[i] = si;
        if (has_mom) mom[i] = mi;
        if (centered) avg_g[i] = ai;
    }
}

template <typename T>
__global__ void nnxp_adagrad(T* p, const T* g, T* acc, long long n, T lr, T eps, T decay, const T* hp) {
    if (hp) {
        lr = hp[0];
        eps = hp[1];
        decay = hp[2];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], ai = acc[i];
        adagrad_elem(pi, g[i], ai, lr, eps, decay);
        p[i] = pi;
        acc[i] = ai;
    }
}

template <typename T>
__global__ void nnxp_adadelta(T* p, const T* g, T* acc_g, T* acc_dx, long long n, T lr, T rho, T one_minus_rho,
                              T eps, T decay, const T* hp) {
    if (hp) {
        lr = hp[0];
        rho = hp[1];
        one_minus_rho = hp[2];
        eps = hp[3];
        decay = hp[4];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], ag = acc_g[i], ad = acc_dx[i];
        adadelta_elem(pi, g[i], ag, ad, lr, rho, one_minus_rho, eps, decay);
        p[i] = pi;
        acc_g[i] = ag;
        acc_dx[i] = ad;
    }
}

template <typename T>
__global__ void nnxp_adam(T* p, const T* g, T* m, T* v, long long n, T one_minus_b1, T one_minus_b2, T eps,
                          T inv_alpha, T decay, const T* hp) {
    if (hp) {
        one_minus_b1 = hp[0];
        one_minus_b2 = hp[1];
        eps = hp[2];
        inv_alpha = hp[3];
        decay = hp[4];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], mi = m[i], vi = v[i];
        adam_elem(pi, g[i], mi, vi, one_minus_b1, one_minus_b2, eps, inv_alpha, decay);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

template <typename T>
__global__ void nnxp_adamax(T* p, const T* g, T* m, T* u, long long n, T one_minus_b1, T b2, T eps, T inv_alpha,
                            T decay, const T* hp) {
    if (hp) {
        one_minus_b1 = hp[0];
        b2 = hp[1];
        eps = hp[2];
        inv_alpha = hp[3];
        decay = hp[4];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], mi = m[i], ui = u[i];
        adamax_elem(pi, g[i], mi, ui, one_minus_b1, b2, eps, inv_alpha, decay);
        p[i] = pi;
        m[i] = mi;
        u[i] = ui;
    }
}

template <typename T>
__global__ void nnxp_lion(T* p, const T* g, T* m, long long n, T lr, T one_minus_b1, T one_minus_b2, T decay,
                          const T* hp) {
    if (hp) {
        lr = hp[0];
        one_minus_b1 = hp[1];
        one_minus_b2 = hp[2];
        decay = hp[3];
    }
    NX_GRID_STRIDE(i, n) {
        T pi = p[i], mi = m[i];
        lion_elem(pi, g[i], mi, lr, one_minus_b1, one_minus_b2, decay);
        p[i] = pi;
        m[i] = mi;
    }
}

// --- (e) dropout --------------------------------------------------------------------------------------------

// y = x * mask with mask = scale where hash(seed, i) gives u >= rate, else 0; the mask is also stored when
// store_mask (for callers that keep it), otherwise backward regenerates it from (seed, i).
// With `state` (device memory: state[0] the layer's seed, state[1] its step counter), the mask's seed is
// nx_hash(state[0], state[1]) instead of `seed`: a replayed CUDA graph then draws a new mask every step, since
// the layer bumps state[1] on the device before each forward (step_seed in nnxp/ops/dropout.py is the host twin).
NX_HD unsigned long long nx_step_seed(unsigned long long seed, const unsigned long long* state) {
    return state ? nx_hash(state[0], state[1]) : seed;
}

template <typename T>
__global__ void nnxp_dropout_forward(const T* x, T* y, T* mask, long long n, unsigned long long seed, T rate,
                                     T scale, int store_mask, const unsigned long long* state) {
    seed = nx_step_seed(seed, state);
    NX_GRID_STRIDE(i, n) {
        const T mi = dropout_mask(seed, (unsigned long long)i, rate, scale);
        if (store_mask) mask[i] = mi;
        y[i] = x[i] * mi;
    }
}

template <typename T>
__global__ void nnxp_dropout_backward(const T* dy, T* dx, long long n, unsigned long long seed, T rate, T scale,
                                      const unsigned long long* state) {
    seed = nx_step_seed(seed, state);
    NX_GRID_STRIDE(i, n) { dx[i] = dy[i] * dropout_mask(seed, (unsigned long long)i, rate, scale); }
}

// --- (f) a replayed training step's bookkeeping (nnxp/ops/batch.py, nnxp/_graph.py) ------------------------
//
// A CUDA graph replays the same launches every step, so what differs between steps is read from device memory
// at a device step counter `cursor` (one long long, the batch's index in the epoch): which rows to gather, which
// row of the optimizer's per-step scalars to use, which column of the epoch's record to write. The host uploads
// the tables once per epoch; the step's last node advances the cursor.

// out (rows, cols) = src rows perm[first + r] for r < rows, first = starts[*cursor] (starts null: *cursor itself;
// perm null: the identity). A row index outside [0, src_rows) copies nothing (its out row keeps its value).
// Elements are copied as T, bit for bit: a caller copies other 4- or 8-byte types through a same-size view.
template <typename T>
__global__ void nnxp_gather_rows(const T* src, T* out, const long long* perm, const long long* starts,
                                 const long long* cursor, long long rows, long long cols, long long src_rows) {
    const long long c = *cursor;
    const long long first = starts ? starts[c] : c;
    NX_GRID_STRIDE(i, rows * cols) {
        const long long r = i / cols;
        const long long k = first + r;
        const long long row = perm ? perm[k] : k;
        if (row >= 0 && row < src_rows) out[i] = src[row * cols + (i - r * cols)];
    }
}

// The step's entry in the epoch's record (float64, 1 + n_sums rows of `cols` columns): record[0, c] = *loss,
// record[1 + k, c] = sums[k] at c = *cursor, then *cursor = c + 1 (the step's last node). One thread: a few values.
template <typename T>
__global__ void nnxp_record_step(const T* loss, const double* sums, long long n_sums, double* record, long long cols,
                                 long long* cursor) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const long long c = *cursor;
        record[c] = (double)*loss;
        for (long long k = 0; k < n_sums; ++k) record[(k + 1) * cols + c] = sums[k];
        *cursor = c + 1;
    }
}

// Accuracy's count for a batch: out[0] = how many rows r have argmax(pred[r, :]) == their label, the label being
// labels[r] (sparse) or argmax(onehot[r, :]). argmax is NumPy's and CuPy's (my_argmax_float,
// cupy/_core/_routines_statistics.pyx): the first maximum, a NaN counting as the maximum (the first NaN).
// One block (the wrapper launches 1 x 256): each thread counts its rows, then a tree sum in shared memory, in a
// fixed order, written as a double (exact: a count below 2^53).
template <typename T>
__device__ long long row_argmax(const T* row, long long cols) {
    long long best = 0;
    T top = row[0];
    for (long long j = 1; j < cols; ++j) {
        const T v = row[j];
        if (top == top && (v != v || v > top)) {  // (x != x: x is NaN)
            top = v;
            best = j;
        }
    }
    return best;
}

template <typename T>
__global__ void nnxp_count_correct(const T* pred, const long long* labels, const T* onehot, long long rows,
                                   long long cols, int sparse, double* out) {
    __shared__ long long counts[256];
    const int t = threadIdx.x;
    long long n = 0;
    for (long long r = t; r < rows; r += blockDim.x) {
        const long long truth = sparse ? labels[r] : row_argmax(onehot + r * cols, cols);
        n += row_argmax(pred + r * cols, cols) == truth;
    }
    counts[t] = n;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) counts[t] += counts[t + s];
        __syncthreads();
    }
    if (t == 0) out[0] = (double)counts[0];
}

// --- explicit instantiations for nvcc (NVRTC instantiates through name_expressions instead) -----------------

#ifdef NNXP_EXPLICIT_INSTANTIATION
#define NNXP_INSTANTIATE(T)                                                                                        \
    template __global__ void nnxp_bias_act_forward<T>(T*, const T*, T*, long long, long long, int, int, int);      \
    template __global__ void nnxp_softmax_forward<T>(const T*, T*, const T*, long long, long long, int);           \
    template __global__ void nnxp_act_backward_bias<T>(T*, const T*, const T*, T*, long long, long long, int, int, \
                                                       int);                                                       \
    template __global__ void nnxp_column_sum<T>(const T*, T*, long long, long long);                               \
    template __global__ void nnxp_softmax_backward<T>(T*, const T*, long long, long long);                         \
    template __global__ void nnxp_softmax_xent<T>(const T*, const T*, T*, T*, unsigned int*, T*, long long,        \
                                                  long long, T, T);                                                \
    template __global__ void nnxp_sparse_softmax_xent<T>(const T*, const long long*, T*, T*, unsigned int*, T*,    \
                                                         long long, long long, T, T);                              \
    template __global__ void nnxp_sigmoid_bce<T>(const T*, const T*, T*, T*, unsigned int*, T*, long long, T, T);  \
    template __global__ void nnxp_sgd<T>(T*, const T*, T*, long long, T, T, T, int, const T*);                     \
    template __global__ void nnxp_rmsprop<T>(T*, const T*, T*, T*, T*, long long, T, T, T, T, T, T, int, int,      \
                                             const T*);                                                            \
    template __global__ void nnxp_adagrad<T>(T*, const T*, T*, long long, T, T, T, const T*);                      \
    template __global__ void nnxp_adadelta<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, const T*);           \
    template __global__ void nnxp_adam<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, const T*);               \
    template __global__ void nnxp_adamax<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, const T*);             \
    template __global__ void nnxp_lion<T>(T*, const T*, T*, long long, T, T, T, T, const T*);                     \
    template __global__ void nnxp_dropout_forward<T>(const T*, T*, T*, long long, unsigned long long, T, T, int,   \
                                                     const unsigned long long*);                                 \
    template __global__ void nnxp_dropout_backward<T>(const T*, T*, long long, unsigned long long, T, T,           \
                                                      const unsigned long long*);                                 \
    template __global__ void nnxp_gather_rows<T>(const T*, T*, const long long*, const long long*,               \
                                                 const long long*, long long, long long, long long);             \
    template __global__ void nnxp_record_step<T>(const T*, const double*, long long, double*, long long,         \
                                                 long long*);                                                   \
    template __global__ void nnxp_count_correct<T>(const T*, const long long*, const T*, long long, long long,   \
                                                   int, double*);
NNXP_INSTANTIATE(float)
NNXP_INSTANTIATE(double)
#endif

#endif  // NNXP_HOST_HARNESS
