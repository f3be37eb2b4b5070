# Static types for Cython (issue 29): see exchange.pxd. recorder.py runs as it is without them.
# `Delta` stays a Python dataclass (the control plane builds and merges it); `Recorder` is a
# final class whose per-request method is a C call from a typed caller:
#     from proxy.dataplane.recorder cimport Recorder
cimport cython
from proxy.dataplane cimport libm as math

# C constants (when compiled they are not module attributes; no other module reads them)
cdef double LAT_BASE, _LOG_BASE
cdef Py_ssize_t LAT_PER_OCTAVE, LAT_OVERFLOW


@cython.final
cdef class Recorder:
    cdef public object delta
    cdef public dict hits

    @cython.locals(i=Py_ssize_t, key=tuple, h=list)
    cpdef void request(self, str route, Py_ssize_t step, str backend, Py_ssize_t code,
                       double seconds)
