# Static types for Cython (issue 29): see exchange.pxd. server.py runs as it is without them.
from proxy.dataplane.exchange cimport Exchange


cdef class ClientConnection:
    cdef public Py_ssize_t _hbytes
    cdef public list _headers
    cdef public bytes _url
    cdef public bint closing
    cdef public Exchange cur
    cdef public double header_deadline
    cdef public double idle_deadline
    cdef public bint in_headers
    cdef public Py_ssize_t line_run
    cdef public object override_peer
    cdef public object parser
    cdef public Exchange parsing
    cdef public object peer
    cdef public bytes peer_b
    cdef public bint peer_trusted
    cdef public object plane
    cdef public object queue
    cdef public object refusal
    cdef public double send_mark
    cdef public Py_ssize_t send_seen
    cdef public object transport
    cdef public object tunnel
    cdef public bint upgraded
    cdef public bint write_paused
    cdef public double write_paused_at
    cdef public object xff
    cdef dict __dict__
