# Static types for Cython (issue 29): see exchange.pxd. mirror.py runs as it is without them.
# A mirror's job and legs are C structs (an attribute read is a struct access); every attribute
# stays public, and Mirror keeps a __dict__ (the serving code and the tests set others).
cimport cython

from proxy.dataplane.exchange cimport Exchange
from proxy.dataplane cimport basics
from proxy.dataplane.pipeline cimport PipelinedConnection, PipelineLeg, PipelinePool
from proxy.dataplane.recorder cimport Recorder, ShadowSlot
from proxy.dataplane.table cimport CompiledRoute
from proxy.dataplane.upstream cimport UpstreamPool


@cython.final
cdef class TokenBucket:
    cdef public double burst
    cdef public double rate
    cdef public double stamp
    cdef public double tokens

    @cython.locals(tokens=double)
    cpdef bint take(self, double now)


@cython.final
cdef class _Compiled:
    cdef public TokenBucket bucket
    cdef public tuple header_list
    cdef public frozenset header_names
    cdef public str legacy
    cdef public Py_ssize_t max_body
    cdef public frozenset methods
    cdef public object noise
    cdef public bint pipeline
    cdef public bint reverse
    cdef public double sample
    cdef public ShadowSlot slot
    cdef public str target
    cdef public bint unsafe_allowed


@cython.final
cdef class _Job:
    cdef public bytes body
    cdef public _Compiled compiled
    cdef public object host
    cdef public list legs
    cdef public bytes method
    cdef public Py_ssize_t pending
    cdef public bytes primary_body
    cdef public list primary_lines
    cdef public double primary_seconds
    cdef public int primary_status
    cdef public object req_headers
    cdef public object request_id
    cdef public object route
    cdef public bint served_by_target
    cdef public object step
    cdef public bytes target
    cdef public object trace


# not final: Cython takes a final subclass's overrides of its base's cpdef methods for errors
cdef class _Leg(PipelineLeg):  # attempt, done, head, sent_at: PipelineLeg's
    cdef public bint behind
    cdef public list chunks
    cdef public object conn
    cdef public double deadline
    cdef public object error
    cdef public bint got_bytes
    cdef public list headers
    cdef public _Job job
    cdef public Py_ssize_t limit
    cdef public Mirror mirror
    cdef public PipelinePool pipe
    cdef public UpstreamPool pool
    cdef public double seconds
    cdef public Py_ssize_t size
    cdef public object span
    cdef public double started
    cdef public int status
    cdef public bint truncated

    cpdef void start(self)
    cpdef void on_written(self, PipelinedConnection conn, double now)
    cpdef void on_pipelined_head(self, int status, list headers)
    cpdef void on_upstream_lost(self, exc)
    cpdef void send(self, conn)
    @cython.locals(room=Py_ssize_t)
    cpdef void on_upstream_body(self, bytes data)
    cpdef void on_upstream_done(self, bint reusable)
    cpdef void _release(self, bint reusable)
    @cython.locals(job=_Job)
    cpdef void finish(self, BaseException error)


@cython.final  # no subclass: its cpdef calls need no look-up for a Python override
cdef class Mirror:
    cdef public object config
    cdef public Recorder recorder
    cdef public object rand
    cdef public Py_ssize_t workers
    cdef public object link
    cdef public TokenBucket budget
    cdef public object budget_rate
    cdef public object backlog
    cdef public Py_ssize_t running
    cdef public set noise_down
    cdef public dict failing
    cdef public set in_flight
    cdef public dict pools
    cdef public dict pipes
    cdef public dict _specs
    cdef public dict _live
    cdef public object tls
    cdef public set tasks
    cdef public dict _compiled
    cdef public object _sweeper
    cdef public object _drained
    cdef public object now
    cdef dict __dict__

    @cython.locals(now=double, bucket=TokenBucket, budget=TokenBucket, c=_Compiled, link=object,
                   t=object)
    cpdef bint wants(self, CompiledRoute route, bytes method, bint served_by_target)
    @cython.locals(job=_Job, served_by_target=bint, legs=list, body=bytes, route=CompiledRoute,
                   c=_Compiled)
    cpdef void _offer(self, Exchange ex)
    @cython.locals(pool=UpstreamPool, pipe=PipelinePool, parts=list, leg=_Leg)
    cpdef _Leg _leg(self, _Job job, str upstream, bytes target, Py_ssize_t limit, bytes same_head,
                    UpstreamPool primary)
    @cython.locals(leg=_Leg)
    cpdef void _run(self, _Job job)
    cpdef void job_done(self, _Job job)
    cpdef void _next(self)
    @cython.locals(live=tuple)
    cpdef tuple _pools_for(self, str name)
    @cython.locals(mirrored=_Leg)
    cpdef void _result(self, _Job job)


cdef bint _COMPILED

@cython.locals(end=bytes, n=Py_ssize_t, k=Py_ssize_t, out=bytes, p="char*")
cpdef bytes _shadow_head(bytes head)
@cython.locals(leg=_Leg)
cpdef _Leg _new_leg(Mirror mirror, _Job job, UpstreamPool pool, bytes head, Py_ssize_t limit,
                    PipelinePool pipe)
@cython.locals(c=_Compiled, s=ShadowSlot)
cpdef ShadowSlot _slot(Recorder recorder, _Job job)
@cython.locals(name=bytes)
cpdef bint _traced(headers)
@cython.locals(body=bytes, c=_Compiled)
cpdef bint _identical(_Job job, _Leg leg)
@cython.locals(k=Py_ssize_t, m=Py_ssize_t, pair=tuple, n=bytes, size=Py_ssize_t, p="const char*",
               name=bytes, want=tuple, value=bytes, v="const char*", b=Py_ssize_t,
               e=Py_ssize_t, other=bytes)
cpdef bint _same_picked(list headers, tuple names, frozenset name_set, list picked)
@cython.locals(data=bytes, out=list, n=Py_ssize_t, p="const char*", i=Py_ssize_t,
               at="const void*", end=Py_ssize_t, colon=Py_ssize_t, name=bytes, k=Py_ssize_t,
               v=Py_ssize_t, e=Py_ssize_t)
cpdef list _picked(list lines, tuple names)
@cython.locals(q="const char*", j=Py_ssize_t, c="unsigned char")
cdef inline bint _same_lower(const char* p, bytes name, Py_ssize_t k) noexcept
cdef inline bint _blank(unsigned char c) noexcept
