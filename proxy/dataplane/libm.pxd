# C's math functions under the names the data plane's .py files call (`math.log2(x)`,
# `math.ceil(x)`), for a compiled module whose .pxd has `from proxy.dataplane cimport libm as
# math`: those calls are then C calls on C doubles, the rest of `math` stays the Python module.
cdef extern from "<math.h>" nogil:
    double log2(double x)

# `ceil` gives an integer, as Python's does; one beyond 2**52 (or NaN), where Python's raises or
# gives a larger int, comes out as 2**52: callers clamp it to their top bucket.
cdef extern from *:
    """
    static inline Py_ssize_t strangler_ceil(double x) {
        return x < 4503599627370496.0 ? (Py_ssize_t)ceil(x) : (Py_ssize_t)4503599627370496LL;
    }
    """
    Py_ssize_t ceil "strangler_ceil"(double x) nogil

# `floor` likewise, for x >= 0 (as its callers give it).
cdef extern from *:
    """
    static inline Py_ssize_t strangler_floor(double x) {
        return x < 4503599627370496.0 ? (Py_ssize_t)floor(x) : (Py_ssize_t)4503599627370496LL;
    }
    """
    Py_ssize_t floor "strangler_floor"(double x) nogil
