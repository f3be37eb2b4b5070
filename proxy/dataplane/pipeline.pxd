# Static types for Cython (issue 29): see exchange.pxd. pipeline.py runs as it is without them.
# Every attribute stays public: the tests and mirror.py read them as before.
cimport cython

cdef Py_ssize_t H_CONTENT_LENGTH, H_TRANSFER_ENCODING  # basics' header codes
cdef Py_ssize_t INTERIM_MIN


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

    @cython.locals(heads=list)
    cpdef void send(self, list legs, double now)


@cython.final
cdef class PipelinePool:
    cdef public object spec
    cdef public object dial
    cdef public object name
    cdef public Py_ssize_t max_connections
    cdef public Py_ssize_t max_depth
    cdef public Py_ssize_t max_head
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
    cpdef void submit(self, leg)
    cpdef void wake(self)
    @cython.locals(depth=Py_ssize_t, out=list, batch=list)
    cpdef list _batches(self, list legs)
    @cython.locals(legs=list, batches=list, now=double, i=Py_ssize_t, n=Py_ssize_t,
                   conn=PipelinedConnection)
    cpdef void _dispatch(self)
