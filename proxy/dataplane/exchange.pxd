# Static types for Cython (issue 29), used only when the data plane is compiled (setup.py);
# exchange.py is the one source and runs as it is without them. Every attribute stays public:
# uncompiled modules (mirror, tracing, the tests) read them as before. Numbers and flags are C
# values (an attribute read is a struct access, not a dictionary or slot lookup); the rest are
# objects.
cimport cython

from proxy.dataplane cimport basics
from proxy.dataplane.basics cimport _RequestIds
from proxy.dataplane.server cimport ClientConnection, DataPlane
from proxy.dataplane.inventory cimport EndpointCounter, InventorySlot
from proxy.dataplane.recorder cimport Recorder, RecorderSlot
from proxy.dataplane.table cimport CompiledRoute, RouteState, RouteTable
from proxy.dataplane.upstream cimport UpstreamConnection, UpstreamPool


cdef _RequestIds new_request_id  # proxy.dataplane.basics' (its type: a C call per id)
cdef dict HOST_CACHE  # proxy.dataplane.headers' caches: `.get` is a C dict lookup
cdef dict TOKEN_CACHE
cdef list _STATUS_LINES
cdef frozenset IDEMPOTENT_METHODS, _CONN_KEEP, HOP_BY_HOP, FORWARDED_HEADERS, MARKS  # typed: C lookups
cdef Py_ssize_t BUCKETS  # proxy.dataplane.split's: a C number
cdef Py_ssize_t H_CONNECTION, H_CONTENT_LENGTH, H_UPGRADE  # basics' header codes
cdef int _ZERO, _SLASH, _QMARK, _QUOTE, _HASH  # byte values
cdef Py_ssize_t _HEAD_PIECES, _REASON_CACHED


@cython.locals(c=cython.uchar, prev=cython.uchar)
cpdef bint _plain_path(bytes path)
@cython.locals(c=cython.uchar)
cdef bint _json_plain(bytes path)
@cython.locals(buf="char*", lf="char*", minor=char)
cdef str _line_version(bytes start)
cdef bytes _join(list parts)
@cython.locals(slot=RecorderSlot)
cdef RecorderSlot _route_slot(CompiledRoute route, Recorder recorder, Py_ssize_t step, str backend)
@cython.locals(slot=InventorySlot)
cdef InventorySlot _inventory_slot(CompiledRoute route, EndpointCounter inventory, str backend)
@cython.locals(out=list, state=LineState)
cpdef bytes render_lines(log, list buf, str enc)
@cython.locals(n=Py_ssize_t)
cdef bytes _join_after(bytes first, list parts)
@cython.locals(n=Py_ssize_t)
cdef bytes _join_upto(list parts, Py_ssize_t limit)
@cython.locals(n=Py_ssize_t)
cdef Py_ssize_t _size(bytes first, list parts)
@cython.locals(p=Py_ssize_t, out=bytes, buf="char*")
cdef bytes _fill(bytes first, list parts, Py_ssize_t n)
@cython.locals(n=Py_ssize_t, p=Py_ssize_t, out=bytes, buf="char*")
cdef bytes _join_head(bytes method, bytes target, list headers)
@cython.locals(n=Py_ssize_t)
cdef inline Py_ssize_t _copy(char* buf, Py_ssize_t p, bytes value) noexcept
@cython.locals(n=Py_ssize_t)
cdef inline Py_ssize_t _put(char* buf, Py_ssize_t p, bytes literal, bytes value) noexcept
@cython.locals(n=cython.int)
cdef inline Py_ssize_t _put_int(char* buf, Py_ssize_t p, long long v, int width) noexcept
cdef inline Py_ssize_t _put_ms(char* buf, Py_ssize_t p, long long us) noexcept


@cython.final
cdef class LineState:
    cdef public tuple blines
    cdef public list buf
    cdef public bint json
    cdef public tuple literals
    cdef public Py_ssize_t literals_len
    cdef public bytes prefix_b
    cdef public dict quoted_b
    cdef public bint sample_all
    cdef public bint scheduled
    cdef public Py_ssize_t second
    cdef public double wall


@cython.final
cdef class Exchange:
    cdef public object backend
    cdef public object blame
    cdef public double body_done_at
    cdef public Py_ssize_t body_mode
    cdef public bint client_done
    cdef public double client_wait
    cdef public ClientConnection conn
    cdef public object declared_length
    cdef public bint discarding
    cdef public bint done
    cdef public bint expect_continue
    cdef public object head
    cdef public double head_deadline
    cdef public bint head_only
    cdef public bint is_tunnel
    cdef public bint keep_alive
    cdef public double last_body_at
    cdef public object method
    cdef public object override
    cdef public object path
    cdef public object pending
    cdef public DataPlane plane
    cdef public UpstreamPool pool
    cdef public object query
    cdef public double read_mark
    cdef public Py_ssize_t read_seen
    cdef public object replay
    cdef public Py_ssize_t replay_size
    cdef public Py_ssize_t req_body_size
    cdef public object req_headers
    cdef public bytes req_host
    cdef public bint resendable
    cdef public object resp_body
    cdef public bint resp_chunked
    cdef public object resp_lines
    cdef public Py_ssize_t resp_size
    cdef public bint response_started
    cdef public bint retried
    cdef public object rid
    cdef public CompiledRoute route
    cdef public double shadow_sent
    cdef public bint shadow_wanted
    cdef public bint stale_retried
    cdef public Py_ssize_t status
    cdef public Py_ssize_t step
    cdef public object sticky_key
    cdef public double t0
    cdef public double t_end
    cdef public double t_head
    cdef public bint target_failed
    cdef public object trace
    cdef public object tunnel_pending
    cdef public UpstreamConnection up
    cdef public double up_paused_at
    cdef public object user_agent
    cdef public bint version_10
    cdef public object wbuf

    # The request path's own calls are C calls (cpdef on a final class); Python callers (the
    # tests, mirror, tracing) call them as before. The types match the .py's annotations.
    @cython.locals(plane=DataPlane)
    cpdef void read_head(self, ClientConnection conn, bytes method, bytes url, list raw)
    cpdef void _request_line(self, ClientConnection conn, bytes method)
    @cython.locals(name=bytes, value=bytes, lname=bytes, header=tuple, out=list,
                   special=frozenset, conn_tokens=frozenset, conn=ClientConnection)
    cpdef frozenset _headers(self, list raw, dict hdict)
    cpdef void _framing(self, bytes te, bytes cl, bytes host)
    @cython.locals(q=Py_ssize_t, path=bytes, query=bytes)
    cpdef void _target(self, bytes url, dict hdict)
    cpdef void _take_request_id(self, dict hdict)
    @cython.locals(table=RouteTable)
    cpdef CompiledRoute _route(self, bytes method, dict hdict)
    @cython.locals(state=RouteState, bp=Py_ssize_t, draw=double)
    cpdef bint _choose_backend(self, CompiledRoute route, bytes method, dict hdict,
                               frozenset conn_tokens)
    cpdef void _want_shadow(self, CompiledRoute route, bytes method, dict hdict, bint to_target)
    @cython.locals(out=list)
    cpdef void _upstream_request(self, CompiledRoute route, bytes method, dict hdict)
    cpdef bytes upstream_head(self)
    cpdef void dispatch(self)
    cpdef void attach(self, UpstreamConnection up)
    cpdef void _write_body(self, t, bytes chunk)
    @cython.locals(known=tuple, out=list, i=Py_ssize_t, line=bytes)
    cpdef void on_upstream_head(self, int status, bytes reason, list lines, list special,
                                bint chunked, length, frozenset named)
    cpdef void on_upstream_body(self, bytes data)
    cpdef void on_client_done(self)
    cpdef void on_upstream_done(self, bint reusable)
    cpdef void flush_out(self)
    cpdef void finish(self, bint aborted=*)
    @cython.locals(state=LineState, t0=double, t_head=double, t_end=double, now=double,
                   second=Py_ssize_t)
    cpdef bytes access_line(self, log, LineState state=*)
    cdef bytes _c_line(self, tuple literals, bytes names, bytes path, bytes who,
                       bytes fallback, bytes prefix, double fraction, Py_ssize_t fixed)
    cpdef double _backend_seconds(self, double now)
