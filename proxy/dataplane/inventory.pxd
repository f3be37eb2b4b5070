# Static types for Cython (issue 29): see exchange.pxd. inventory.py runs as it is without them.
# `EndpointCounter` is a final class whose per-request method is a C call from a typed caller:
#     from proxy.dataplane.inventory cimport EndpointCounter
# (the rest of the module runs every ~200 ms and is compiled as it is).
cimport cython
from proxy.dataplane cimport libm as math

# C constants (when compiled they are not module attributes; no other module reads them)
cdef double LAT_BASE, _LOG_BASE
cdef Py_ssize_t LAT_PER_OCTAVE, LAT_TOP, MAX_RAW_PATH


@cython.final
cdef class EndpointCounter:
    cdef public dict admitted
    cdef public double aged_at
    cdef public dict cache
    cdef public frozenset declared
    cdef public dict hits
    cdef public Py_ssize_t inferred
    cdef public object match
    cdef public object max_templates
    cdef public dict names
    cdef public Py_ssize_t taken_rows

    @cython.locals(i=Py_ssize_t, key=tuple, c=list)
    cpdef void count(self, bytes method, bytes path, str route, str backend, Py_ssize_t status,
                     double seconds)
    cpdef bytes template(self, bytes path, bint cached=*)
