# Static types for Cython (issue 29): see exchange.pxd. inventory.py runs as it is without them.
# `EndpointCounter`, `InventorySlot` and `PathCell` are final classes whose per-request methods
# are C calls from a typed caller:
#     from proxy.dataplane.inventory cimport EndpointCounter, InventorySlot
# (the rest of the module runs every ~200 ms and is compiled as it is).
cimport cython
from proxy.dataplane cimport libm as math

# C constants (when compiled they are not module attributes; no other module reads them)
cdef double LAT_BASE, _LOG_BASE
cdef Py_ssize_t LAT_PER_OCTAVE, LAT_TOP, MAX_RAW_PATH


@cython.final
cdef class PathCell:
    cdef public Py_ssize_t hi
    cdef unsigned int lat[89]  # LAT_TOP + 1 (inventory.py checks it at import)
    cdef public Py_ssize_t lo
    cdef public bytes method
    cdef public dict other
    cdef public Py_ssize_t status

    cpdef void add(self, bytes method, Py_ssize_t status, Py_ssize_t i)
    @cython.locals(i=Py_ssize_t, n="unsigned int", base=Py_ssize_t, key=tuple, c=list)
    cpdef void drain(self, bytes path, str route, str backend, dict hits)


@cython.final
cdef class InventorySlot:
    cdef public str backend
    cdef public EndpointCounter counter
    cdef public dict paths
    cdef public str route
    cdef public bint touched

    @cython.locals(i=Py_ssize_t, cell=PathCell)
    cpdef void count(self, bytes method, bytes path, Py_ssize_t status, double seconds)
    @cython.locals(cell=PathCell)
    cpdef void drain(self, dict hits)


@cython.final
cdef class EndpointCounter:
    cdef public list active
    cdef public dict admitted
    cdef public double aged_at
    cdef public dict cache
    cdef public frozenset declared
    cdef public dict hits
    cdef public Py_ssize_t inferred
    cdef public object match
    cdef public object max_templates
    cdef public dict names
    cdef public dict slots
    cdef public Py_ssize_t taken_rows

    cpdef void count(self, bytes method, bytes path, str route, str backend, Py_ssize_t status,
                     double seconds)
    @cython.locals(s=InventorySlot, key=tuple)
    cpdef InventorySlot slot(self, str route, str backend)
    cpdef bytes template(self, bytes path, bint cached=*)
