# Static types for Cython (issue 29): see exchange.pxd. table.py runs as it is without them.
# What the request path reads per request is C data of final classes: a typed caller reads
# `route.state.weight_bp` or `route.sticky_header` as struct fields and calls `table.match` in C:
#     from proxy.dataplane.table cimport CompiledRoute, RouteState, RouteTable
cimport cython
from proxy.dataplane.inventory cimport InventorySlot
from proxy.dataplane.recorder cimport RecorderSlot


@cython.final
cdef class RouteState:
    cdef public bint rolled_back
    cdef public Py_ssize_t step
    cdef public Py_ssize_t weight_bp


@cython.final
cdef class CompiledRoute:
    cdef public dict extra
    cdef public bint fallback
    cdef public frozenset fallback_on
    cdef public object hasher
    cdef public tuple headers
    cdef public str legacy
    cdef public frozenset methods
    cdef public str name
    cdef public bytes name_bytes
    cdef public Py_ssize_t order
    cdef public bytes override
    cdef public InventorySlot inv_legacy
    cdef public InventorySlot inv_target
    cdef public RecorderSlot rec_legacy
    cdef public RecorderSlot rec_target
    cdef public object regex
    cdef public object spec
    cdef public RouteState state
    cdef public bytes sticky_cookie
    cdef public bytes sticky_header
    cdef public str target
    cdef public bint websocket

    cpdef bint accepts(self, bytes method, dict headers)


@cython.final
cdef class _Node:
    cdef public dict children
    cdef public list routes


@cython.final
cdef class RouteTable:
    cdef public bint _by_method
    cdef public dict _cache
    cdef public dict _exact
    cdef public list _general
    cdef public _Node _trie
    cdef public dict by_name
    cdef public object config
    cdef public object generation
    cdef public list routes

    @cython.locals(route=CompiledRoute)
    cpdef CompiledRoute match(self, bytes method, bytes path, dict headers)
    @cython.locals(best=CompiledRoute, route=CompiledRoute, node=_Node)
    cpdef CompiledRoute _match(self, bytes method, bytes path, dict headers)
