/* Minimal check macros shared by the C tests in tests/c (run by tests/c_api.rs).
 *
 * Convention: a test program calls CHECK / CHECK_STATUS / CHECK_FAILS as often as it likes and ends
 * with `return check_summary("name");`, which prints "ok: N checks passed (name)" and returns 0, or
 * prints the failures ("FAIL ...") and returns 1. The harness requires exit status 0, an empty
 * stderr, a final summary line and no line starting with "FAIL". */
#ifndef TQ_TEST_CHECK_H
#define TQ_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "turboquant.h"

static int check_count = 0;
static int check_failures = 0;

static void check_report(int ok, const char *expr, const char *file, int line) {
    check_count++;
    if (!ok) {
        check_failures++;
        printf("FAIL %s:%d: %s\n", file, line, expr);
    }
}

#define CHECK(cond) check_report((cond) ? 1 : 0, #cond, __FILE__, __LINE__)

/* `call` returns `status`. */
#define CHECK_STATUS(call, status) do { \
    tq_status check_s_ = (call); \
    check_report(check_s_ == (status), #call " == " #status, __FILE__, __LINE__); \
    if (check_s_ != (status)) printf("     got %s: %s\n", tq_status_to_string((uint32_t)check_s_), tq_last_error_message()); \
} while (0)

/* `call` fails with `status`, and tq_last_error_message() mentions `needle` (e.g. the argument). */
#define CHECK_FAILS(call, status, needle) do { \
    tq_status check_s_ = (call); \
    const char *check_m_ = tq_last_error_message(); \
    check_report(check_s_ == (status), #call " == " #status, __FILE__, __LINE__); \
    check_report(check_m_ != NULL && strstr(check_m_, (needle)) != NULL, \
                 "message of " #call " mentions \"" needle "\"", __FILE__, __LINE__); \
    if (check_s_ != (status) || check_m_ == NULL || strstr(check_m_, (needle)) == NULL) \
        printf("     got %s: \"%s\"\n", tq_status_to_string((uint32_t)check_s_), check_m_ ? check_m_ : "(NULL)"); \
} while (0)

static int check_summary(const char *name) {
    if (check_failures != 0) {
        printf("FAILED: %d of %d checks (%s)\n", check_failures, check_count, name);
        return 1;
    }
    printf("ok: %d checks passed (%s)\n", check_count, name);
    return 0;
}

#endif /* TQ_TEST_CHECK_H */
