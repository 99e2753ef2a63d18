// A small C++ program that uses an installed libturboquant: it quantizes random vectors with the
// quantizer API, reconstructs them, and compares the measured normalised error with the exact
// expected value the library computes from its Lloyd–Max codebook.
//
// Usage: turboquant-consumer [n_vectors [dim [bits]]]   (default 1000 128 4)
// Exit status: 0 when the measured error is within 10% of the expected one, 1 when it is not or the
// header and library versions differ, 2 when a call fails.

#include <turboquant.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

// Tolerance on measured / expected MSE. With the default 1000 vectors of dim 128 at 4 bits the
// standard error of the mean (printed) is about 0.8% of the expected value, so 10% is more than ten
// standard errors, yet a wrong codebook (equal-probability quantiles cost 2x at 4 bits), rotation or
// scale is caught. Far fewer vectors make the mean noisier than this bound allows.
constexpr double kTolerance = 0.10;

struct QuantizerDeleter {
    void operator()(tq_quantizer* q) const { tq_quantizer_free(q); }
};
using Quantizer = std::unique_ptr<tq_quantizer, QuantizerDeleter>;

// Prints which call failed and the library's explanation; returns the exit status for a failure.
int report_failure(const char* call, tq_status status) {
    std::fprintf(stderr, "%s failed: %s: %s\n", call, tq_status_to_string(status), tq_last_error_message());
    return 2;
}

unsigned long parse_arg(int argc, char** argv, int index, unsigned long fallback) {
    if (argc <= index) return fallback;
    char* end = nullptr;
    unsigned long value = std::strtoul(argv[index], &end, 10);
    if (*end != '\0' || value == 0) {
        std::fprintf(stderr, "argument %d ('%s') must be a positive integer\n", index, argv[index]);
        std::exit(2);
    }
    return value;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string header_version = std::to_string(TQ_VERSION_MAJOR) + "." +
                                       std::to_string(TQ_VERSION_MINOR) + "." +
                                       std::to_string(TQ_VERSION_PATCH);
    const std::string library_version = tq_version();
    std::printf("libturboquant %s (header %s)\n", library_version.c_str(), header_version.c_str());
    if (library_version != header_version) {
        std::fprintf(stderr, "header version %s does not match library version %s\n", header_version.c_str(),
                     library_version.c_str());
        return 1;
    }

    const size_t n = parse_arg(argc, argv, 1, 1000);
    tq_quantizer_params params = tq_quantizer_default_params();
    params.dim = static_cast<uint32_t>(parse_arg(argc, argv, 2, 128));
    params.bits = static_cast<uint32_t>(parse_arg(argc, argv, 3, 4));
    params.kind = TQ_QUANTIZER_MSE;
    params.seed = 42;

    tq_quantizer* raw = nullptr;
    tq_status status = tq_quantizer_new(&params, &raw);
    if (status != TQ_STATUS_OK) return report_failure("tq_quantizer_new", status);
    Quantizer quantizer(raw);

    size_t code_bytes = 0, scale_count = 0;
    double expected_mse = 0.0;
    if ((status = tq_quantizer_code_bytes(quantizer.get(), &code_bytes)) != TQ_STATUS_OK)
        return report_failure("tq_quantizer_code_bytes", status);
    if ((status = tq_quantizer_scale_count(quantizer.get(), &scale_count)) != TQ_STATUS_OK)
        return report_failure("tq_quantizer_scale_count", status);
    if ((status = tq_quantizer_expected_mse(quantizer.get(), &expected_mse)) != TQ_STATUS_OK)
        return report_failure("tq_quantizer_expected_mse", status);

    const size_t dim = params.dim;
    std::mt19937_64 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(n * dim), reconstructed(n * dim);
    for (float& value : x) value = normal(rng);

    std::vector<uint8_t> codes(n * code_bytes);
    std::vector<uint16_t> scales(n * scale_count);
    if ((status = tq_quantize(quantizer.get(), x.data(), n, codes.data(), scales.data())) != TQ_STATUS_OK)
        return report_failure("tq_quantize", status);
    if ((status = tq_dequantize(quantizer.get(), codes.data(), scales.data(), n, reconstructed.data())) !=
        TQ_STATUS_OK)
        return report_failure("tq_dequantize", status);

    // Mean over vectors of ‖x − x̂‖² / ‖x‖², in double, and its standard error.
    double sum_normalised_error = 0.0, sum_squared_normalised_error = 0.0;
    for (size_t i = 0; i < n; ++i) {
        double error = 0.0, norm = 0.0;
        for (size_t j = 0; j < dim; ++j) {
            const double xi = x[i * dim + j];
            const double diff = xi - reconstructed[i * dim + j];
            error += diff * diff;
            norm += xi * xi;
        }
        sum_normalised_error += error / norm;
        sum_squared_normalised_error += (error / norm) * (error / norm);
    }
    const double measured_mse = sum_normalised_error / static_cast<double>(n);
    const double variance = sum_squared_normalised_error / static_cast<double>(n) - measured_mse * measured_mse;
    const double standard_error = std::sqrt(std::fmax(variance, 0.0) / static_cast<double>(n));
    const double ratio = measured_mse / expected_mse;
    const bool ok = std::isfinite(ratio) && std::fabs(ratio - 1.0) <= kTolerance;

    std::printf("%zu vectors, dim %zu, %u bits: %zu code bytes + %zu bf16 scale(s) per vector (%.1f%% of f32)\n", n,
                dim, params.bits, code_bytes, scale_count,
                100.0 * static_cast<double>(code_bytes + 2 * scale_count) / static_cast<double>(4 * dim));
    std::printf("normalised MSE: measured %.6f ± %.6f (standard error), expected %.6f, ratio %.4f "
                "(allowed %.2f..%.2f): %s\n",
                measured_mse, standard_error, expected_mse, ratio, 1.0 - kTolerance, 1.0 + kTolerance,
                ok ? "ok" : "OUT OF BOUNDS");
    return ok ? 0 : 1;
}
