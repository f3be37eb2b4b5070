# Static types for Cython (issue 29): see exchange.pxd. recorder.py runs as it is without them.
# `Delta` stays a Python dataclass (the control plane builds and merges it); `Recorder` and
# `RecorderSlot` are final classes whose per-request methods are C calls from a typed caller:
#     from proxy.dataplane.recorder cimport Recorder, RecorderSlot
cimport cython
from proxy.dataplane cimport libm as math

# C constants (when compiled they are not module attributes; no other module reads them)
cdef double LAT_BASE, _LOG_BASE, DIFF_BASE
cdef Py_ssize_t LAT_PER_OCTAVE, LAT_OVERFLOW, CODES, LAT_SIZE, DIFF_PER_OCTAVE, DIFF_TOP, DIFF_HALF
cdef Py_ssize_t DIFF_SIZE

cdef inline void _bump(dict counts, tuple key)
@cython.locals(x=double, k=Py_ssize_t)
cpdef Py_ssize_t _difference_index(double d)


@cython.final
cdef class RecorderSlot:
    cdef public str backend
    cdef long long codes[1000]  # CODES
    cdef long long lat[326]  # LAT_SIZE: LATENCY.size (recorder.py checks it at import)
    cdef public dict other_codes
    cdef public Recorder recorder
    cdef public str route
    cdef public Py_ssize_t step
    cdef public double total
    cdef public bint touched

    @cython.locals(i=Py_ssize_t)
    cpdef void add(self, Py_ssize_t code, double seconds)
    @cython.locals(code=Py_ssize_t, i=Py_ssize_t, c="long long", key=tuple, key3=tuple, h=list,
                   counts=dict)
    cpdef void drain(self, dict requests, dict latency)


@cython.final
cdef class ShadowSlot:
    cdef public double down
    cdef public Py_ssize_t matches
    cdef long long paired[328]  # DIFF_SIZE: DIFFERENCE.size (recorder.py checks it at import)
    cdef public Recorder recorder
    cdef public object route
    cdef public object step
    cdef public bint touched
    cdef public double up

    cpdef void match(self)
    cpdef void pair(self, double difference)
    cpdef void _touch(self)
    @cython.locals(i=Py_ssize_t, c="long long", key=tuple, key2=tuple, h=list, counts=dict)
    cpdef void drain(self, dict shadow, dict paired)


@cython.final
cdef class Recorder:
    cdef public list active
    cdef public object delta
    cdef public list shadow_active
    cdef public dict shadow_slots
    cdef public dict slots

    @cython.locals(s=RecorderSlot, key=tuple)
    cpdef RecorderSlot slot(self, str route, Py_ssize_t step, str backend)
    @cython.locals(s=ShadowSlot, key=tuple)
    cpdef ShadowSlot shadow_slot(self, str route, step)
    cpdef void request(self, str route, Py_ssize_t step, str backend, Py_ssize_t code,
                       double seconds)
    # a mirror's counts (C calls from mirror.py; step stays the caller's int object)
    cpdef void shadow_result(self, str route, step, str result)
    cpdef void shadow_error(self, str route, step, str side, str kind)
    @cython.locals(key=tuple, h=list, i=Py_ssize_t, counts=dict)
    cpdef void paired_latency(self, str route, step, double difference)
    cpdef void shadow_skipped(self, str route, str reason)
