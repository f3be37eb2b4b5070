# Static types for Cython (issue 29): see exchange.pxd. pipeline.py runs as it is without them.
# Every attribute stays public: the tests and mirror.py read them as before.
cimport cython

from proxy.dataplane cimport basics

cdef Py_ssize_t H_CONTENT_LENGTH, H_TRANSFER_ENCODING  # basics' header codes
cdef Py_ssize_t INTERIM_MIN
cdef bint _COMPILED


@cython.final
cdef class PipelinedConnection:
    cdef public PipelinePool pool
    cdef public object transport
    cdef public object parser
    cdef public object waiting
    cdef public list unsent
    cdef public bint closed
    cdef public double last_done
    cdef public object tls_gen
    cdef public bint fresh
    cdef public list _headers
    cdef public bint _close_delimited
    cdef public bint _framed
    cdef public Py_ssize_t _head_lines
    cdef public Py_ssize_t _head_span
    cdef public bint _in_head
    cdef public Py_ssize_t _heads_read

    @cython.locals(heads=list, leg=PipelineLeg)
    cpdef void send(self, list legs, double now)


# A request on a pipelined connection: mirror's _Leg extends it (its calls here are C calls).
cdef class PipelineLeg:
    cdef public int attempt
    cdef public bint done
    cdef public bytes head
    cdef public double sent_at

    cpdef void on_written(self, PipelinedConnection conn, double now)
    cpdef void on_pipelined_head(self, int status, list headers)
    cpdef void on_upstream_body(self, bytes data)
    cpdef void on_upstream_done(self, bint reusable)
    cpdef void on_upstream_lost(self, exc)


@cython.final
cdef class PipelinePool:
    cdef public object spec
    cdef public object dial
    cdef public object name
    cdef public Py_ssize_t max_connections
    cdef public Py_ssize_t max_depth
    cdef public Py_ssize_t max_head
    cdef public double timeout
    cdef public list conns
    cdef public list queue
    cdef public bint scheduled
    cdef public double service
    cdef public double no_pipelining_until
    cdef public bint closed
    cdef public set tasks
    cdef public object now
    cdef public object _call_soon

    cpdef Py_ssize_t depth(self)
    cpdef void served(self, double seconds)
    cpdef void submit(self, PipelineLeg leg)
    cpdef void wake(self)
    @cython.locals(depth=Py_ssize_t, out=list, batch=list, leg=PipelineLeg)
    cpdef list _batches(self, list legs)
    @cython.locals(legs=list, batches=list, now=double, i=Py_ssize_t, n=Py_ssize_t,
                   conn=PipelinedConnection, leg=PipelineLeg)
    cpdef void _dispatch(self)


@cython.locals(n=Py_ssize_t, p="const char*", i=Py_ssize_t, out=bytes, q="char*", j=Py_ssize_t,
               c="unsigned char")
cdef bytes _lower(bytes name)
