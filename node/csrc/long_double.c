/* INCRBYFLOAT's arithmetic as Redis 7 does it (util.c string2ld and ld2string's
 * LD_STR_HUMAN, t_string.c incrbyfloatCommand), in C because it is done in long double
 * (x87 80-bit on x86-64), which Rust has no type for: a float held as a string is read
 * with strtold, the increment added, and the sum printed "%.17Lf" with its trailing zeros
 * cut, so that every reply matches Redis's byte for byte (0.1 + 0.2 is "0.3", not
 * "0.30000000000000004"). Redis is BSD-3-Clause; these lines follow its code. */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LONG_DOUBLE_CHARS (5 * 1024)

/* Redis's string2ld: no leading space, the whole string read (up to a NUL), not NaN, no
 * overflow or underflow. Returns 1 and sets *dp, or 0. */
static int string2ld(const char *s, size_t slen, long double *dp) {
    char buf[MAX_LONG_DOUBLE_CHARS];
    long double value;
    char *eptr;

    if (slen == 0 || slen >= sizeof(buf)) return 0;
    memcpy(buf, s, slen);
    buf[slen] = '\0';

    errno = 0;
    value = strtold(buf, &eptr);
    if (isspace((unsigned char)buf[0]) || eptr[0] != '\0' ||
        ((errno == ERANGE) &&
         (value == HUGE_VAL || value == -HUGE_VAL || fpclassify(value) == FP_ZERO)) ||
        isnan(value))
        return 0;
    *dp = value;
    return 1;
}

/* Redis's ld2string in LD_STR_HUMAN mode; 0 when it does not fit. */
static size_t ld2string_human(char *buf, size_t len, long double value) {
    size_t l;
    if (isinf(value)) {
        if (len < 5) return 0;
        if (value > 0) {
            memcpy(buf, "inf", 3);
            l = 3;
        } else {
            memcpy(buf, "-inf", 4);
            l = 4;
        }
    } else {
        int n = snprintf(buf, len, "%.17Lf", value);
        if (n < 0 || (size_t)n + 1 > len) return 0;
        l = (size_t)n;
        if (strchr(buf, '.') != NULL) {
            char *p = buf + l - 1;
            while (*p == '0') {
                p--;
                l--;
            }
            if (*p == '.') l--;
        }
        if (l == 2 && buf[0] == '-' && buf[1] == '0') {
            buf[0] = '0';
            l = 1;
        }
    }
    buf[l] = '\0';
    return l;
}

/* old (has_old 0: the key is absent, read as 0) plus incr, printed into out (which must
 * hold MAX_LONG_DOUBLE_CHARS bytes). Returns the length written, -1 when either is not
 * a valid float, -2 when the sum is NaN or infinite. */
long hotshard_incrbyfloat(const char *old, size_t old_len, int has_old, const char *incr,
                          size_t incr_len, char *out, size_t out_len) {
    long double value = 0, by;
    if (has_old && !string2ld(old, old_len, &value)) return -1;
    if (!string2ld(incr, incr_len, &by)) return -1;
    value += by;
    if (isnan(value) || isinf(value)) return -2;
    return (long)ld2string_human(out, out_len, value);
}
