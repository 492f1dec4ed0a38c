// kernels.cu built against emu.h into a shared library with a cuLaunchKernel-like entry point for ctypes.
//
// Build: g++ -std=c++17 -shared -fPIC -ffp-contract=off -DNX_SOURCE='"path/kernels.cu"'
//        -DNX_KERNELS="X(name) X(name) ..." launch.cpp
// (-ffp-contract=off mirrors NVRTC's --fmad=false; NX_KERNELS names the templates, nnxp.ops._cuda.KERNELS).

#include <map>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu.h"
#include NX_SOURCE

namespace {

// C spelling of a parameter type, as kernels.cu writes it (without const)
template <typename T>
struct CName;
template <typename T>
struct CName<const T> {
    static std::string get() { return CName<T>::get(); }
};
template <typename T>
struct CName<T*> {
    static std::string get() { return CName<T>::get() + "*"; }
};
template <>
struct CName<float> {
    static std::string get() { return "float"; }
};
template <>
struct CName<double> {
    static std::string get() { return "double"; }
};
template <>
struct CName<int> {
    static std::string get() { return "int"; }
};
template <>
struct CName<unsigned int> {
    static std::string get() { return "unsigned int"; }
};
template <>
struct CName<long long> {
    static std::string get() { return "long long"; }
};
template <>
struct CName<unsigned long long> {
    static std::string get() { return "unsigned long long"; }
};

struct Entry {
    std::string signature;                   // "float*,const float*,long long,..." without const
    std::function<void(void**)> invoke;      // calls the kernel with *args[i] as parameter i
};

template <typename... P, size_t... I>
void call_with(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_cv<P>::type*>(args[I])...);
}

template <typename... P>
Entry entry(void (*kernel)(P...)) {
    Entry e;
    std::string names[] = {CName<P>::get()...};
    for (size_t i = 0; i < sizeof...(P); ++i) e.signature += (i ? "," : "") + names[i];
    e.invoke = [kernel](void** args) { call_with(kernel, args, std::index_sequence_for<P...>{}); };
    return e;
}

std::map<std::string, Entry>& registry() {
#define X(name) {#name "<float>", entry(&name<float>)}, {#name "<double>", entry(&name<double>)},
    static std::map<std::string, Entry> kernels = {NX_KERNELS};
#undef X
    return kernels;
}

}  // namespace

// The parameter types of "name<float>" joined by commas, or nullptr when there is no such kernel.
extern "C" const char* nx_emu_signature(const char* expression) {
    auto it = registry().find(expression);
    return it == registry().end() ? nullptr : it->second.signature.c_str();
}

// Launches n kernels concurrently, as on n streams: expressions[i] over grids[3i..] x blocks[3i..] with args[i].
extern "C" const char* nx_emu_launch_many(int n, const char** expressions, const unsigned int* grids,
                                          const unsigned int* blocks, void*** args, int schedule,
                                          unsigned long long seed) {
    static std::string result;
    std::vector<std::function<void()>> bodies;
    bodies.reserve(n);
    for (int i = 0; i < n; ++i) {
        auto it = registry().find(expressions[i]);
        if (it == registry().end()) {
            result = std::string("no kernel ") + expressions[i];
            return result.c_str();
        }
        const Entry* e = &it->second;
        void** a = args[i];
        bodies.push_back([e, a]() { e->invoke(a); });
    }
    std::vector<nxemu::Launch> launches;
    for (int i = 0; i < n; ++i)
        launches.push_back({&bodies[i], {grids[3 * i], grids[3 * i + 1], grids[3 * i + 2]},
                            {blocks[3 * i], blocks[3 * i + 1], blocks[3 * i + 2]}});
    result = nxemu::launch_many(launches, schedule, seed);
    return result.c_str();
}

// Launches `expression` over grid[3] x block[3] with args[i] pointing at parameter i's value (as
// cuLaunchKernel's kernelParams). Returns "" on success, else the error; the text lives until the next call.
extern "C" const char* nx_emu_launch(const char* expression, const unsigned int* grid, const unsigned int* block,
                                     void** args, int schedule, unsigned long long seed) {
    static std::string result;
    auto it = registry().find(expression);
    if (it == registry().end()) {
        result = std::string("no kernel ") + expression;
        return result.c_str();
    }
    const Entry& e = it->second;
    const std::function<void()> body = [&e, args]() { e.invoke(args); };
    result = nxemu::launch(body, {grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, schedule, seed);
    return result.c_str();
}
