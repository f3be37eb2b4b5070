# Static types for Cython (issue 29): see exchange.pxd. upstream.py runs as it is without them.
cimport cython

from proxy.dataplane cimport basics
from proxy.dataplane.exchange cimport Exchange


cdef class UpstreamPool

cdef bint _COMPILED
cdef Py_ssize_t H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_CONNECTION, _FRAMING
cdef bytes _CONN_VALUE
cdef frozenset _CONN_DROPS, _CONN_KEEP

cpdef frozenset connection_drops(bytes value)
@cython.locals(n=Py_ssize_t, p="const char*", at="const void*", i=Py_ssize_t, run=Py_ssize_t,
               c=char, cr=Py_ssize_t, colon=Py_ssize_t, v=Py_ssize_t, code=int,
               reason=bytes)
cpdef object scan_head(bytes data, list lines, list special)


@cython.final
cdef class UpstreamConnection:
    cdef public bint _chunked
    cdef public object _first
    cdef public object _head
    cdef public Py_ssize_t _head_bytes
    cdef public bint _head_keep_alive
    cdef public bint _in_body
    cdef public Py_ssize_t _interims
    cdef public object _length
    cdef public object _more
    cdef public Py_ssize_t _status
    cdef public Exchange ex
    cdef public bint fresh
    cdef public bint got_bytes
    cdef public bint head_only
    cdef public object parser
    cdef public object p_feed
    cdef public object p_keep_alive
    cdef public object p_status
    cdef public UpstreamPool pool
    cdef public bint reused
    cdef public object sink
    cdef public object t_is_closing
    cdef public object t_write
    cdef public object tls_gen
    cdef public object transport
    cdef public object tunnel

    cpdef void send(self, sink, bytes head, bint head_only)


@cython.final
cdef class UpstreamPool:
    cdef public bytes base_path
    cdef public bint closed
    cdef public object dial
    cdef public object host_header
    cdef public list idle
    cdef public Py_ssize_t max_head
    cdef public set live
    cdef public object name
    cdef public object spec
    cdef public double timeout
    cdef public Py_ssize_t total
    cdef public object waiters
    cdef dict __dict__

    @cython.locals(conn=UpstreamConnection)
    cpdef UpstreamConnection acquire_nowait(self)
    cpdef void release(self, UpstreamConnection conn)
    cpdef void discard(self, UpstreamConnection conn)
