# Static types for Cython (issue 29): see exchange.pxd. server.py runs as it is without them.
cimport cython

from proxy.dataplane cimport basics
from proxy.dataplane.exchange cimport Exchange, LineState
from proxy.dataplane.inventory cimport EndpointCounter
from proxy.dataplane.recorder cimport Recorder
from proxy.dataplane.table cimport RouteTable
from proxy.dataplane.upstream cimport UpstreamPool

cdef bint _COMPILED
cdef int _UNDERSCORE, _NUL  # byte values


@cython.final
cdef class DataPlane:
    cdef public object _exporter
    cdef public object _sweeper
    cdef public object access_log
    cdef public object config
    cdef public set connections
    cdef public UpstreamPool default_pool
    cdef public bint draining
    cdef public EndpointCounter endpoints
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public EndpointCounter inventory
    cdef public object limits
    cdef public object listener_tls
    cdef public object log_exchange
    cdef public LineState log_line
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_request_line
    cdef public object overrides
    cdef public dict pools
    cdef public object rand
    cdef public bint c_rand
    cdef public Recorder recorder
    cdef public frozenset req_special
    cdef public list servers
    cdef public object shadow
    cdef public RouteTable table
    cdef public set tasks
    cdef public object tls
    cdef public object tracer
    cdef public double trace_ratio
    cdef public object trace_rand
    cdef public bint trace_c_rand
    cdef public object trusted
    cdef public object xfp
    cdef dict __dict__

    cdef public double tick

    cpdef double now(self)
    cpdef double clock(self)


@cython.final
cdef class ClientConnection:
    cdef public bytes _data
    cdef public bint _fresh
    cdef public Py_ssize_t _hbytes
    cdef public list _headers
    cdef public bytes _url
    cdef public bint closing
    cdef public Exchange cur
    cdef public bytes head_start
    cdef public bytes host_ok
    cdef public double header_deadline
    cdef public double idle_deadline
    cdef public bint in_headers
    cdef public Py_ssize_t line_run
    cdef public object log_agent
    cdef public bytes log_who
    cdef public object log_backend
    cdef public object log_method
    cdef public bytes log_names
    cdef public object log_route
    cdef public object log_upstream
    cdef public object override_peer
    cdef public object parser
    cdef public object p_feed
    cdef public object p_keep_alive
    cdef public object p_method
    cdef public Exchange parsing
    cdef public object peer
    cdef public bytes peer_b
    cdef public bint peer_trusted
    cdef public DataPlane plane
    cdef public object queue
    cdef public object refusal
    cdef public double send_mark
    cdef public Py_ssize_t send_seen
    cdef public object t_is_closing
    cdef public object t_resume_reading
    cdef public object t_write
    cdef public object transport
    cdef public object tunnel
    cdef public bint upgraded
    cdef public bint write_paused
    cdef public double write_paused_at
    cdef public object xff
    cdef dict __dict__

    cpdef void exchange_finished(self, Exchange ex, double now)
    cpdef bint last_answer(self)
