# Static types for Cython (issue 29): see exchange.pxd. mirror.py runs as it is without them.
# A mirror's job and legs are C structs (an attribute read is a struct access); every attribute
# stays public, and Mirror keeps a __dict__ (the serving code and the tests set others).
cimport cython

from proxy.dataplane.exchange cimport Exchange
from proxy.dataplane.pipeline cimport PipelinePool, PipelinedConnection
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
cdef class _Job:
    cdef public bytes body
    cdef public object compiled
    cdef public object host
    cdef public list legs
    cdef public bytes method
    cdef public Py_ssize_t pending
    cdef public bytes primary_body
    cdef public object primary_headers
    cdef public double primary_seconds
    cdef public int primary_status
    cdef public object req_headers
    cdef public object request_id
    cdef public object route
    cdef public bint served_by_target
    cdef public object step
    cdef public bytes target
    cdef public object trace


@cython.final
cdef class _Leg:
    cdef public int attempt
    cdef public bint behind
    cdef public list chunks
    cdef public object conn
    cdef public double deadline
    cdef public bint done
    cdef public object error
    cdef public bint got_bytes
    cdef public bytes head
    cdef public list headers
    cdef public _Job job
    cdef public Py_ssize_t limit
    cdef public Mirror mirror
    cdef public PipelinePool pipe
    cdef public UpstreamPool pool
    cdef public double seconds
    cdef public double sent_at
    cdef public Py_ssize_t size
    cdef public object span
    cdef public double started
    cdef public int status
    cdef public bint truncated

    cpdef void start(self)
    cpdef void on_written(self, conn, double now)
    cpdef void send(self, conn)
    @cython.locals(room=Py_ssize_t)
    cpdef void on_upstream_body(self, bytes data)
    cpdef void on_upstream_done(self, bint reusable)
    cpdef void _release(self, bint reusable)
    @cython.locals(job=_Job)
    cpdef void finish(self, BaseException error)


cdef class Mirror:
    cdef public object config
    cdef public object recorder
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
    cdef public object tls
    cdef public set tasks
    cdef public dict _compiled
    cdef public object _sweeper
    cdef public object _idle
    cdef public object now
    cdef dict __dict__

    @cython.locals(now=double, bucket=TokenBucket, budget=TokenBucket)
    cpdef bint wants(self, CompiledRoute route, bytes method, bint served_by_target)
    @cython.locals(job=_Job, served_by_target=bint, legs=list, body=bytes, route=CompiledRoute)
    cpdef void _offer(self, Exchange ex)
    @cython.locals(pool=UpstreamPool, pipe=PipelinePool, parts=list, leg=_Leg)
    cpdef _Leg _leg(self, _Job job, str upstream, bytes target, Py_ssize_t limit, bytes same_head,
                    UpstreamPool primary)
    @cython.locals(leg=_Leg)
    cpdef void _run(self, _Job job)
    cpdef void job_done(self, _Job job)
    cpdef void _next(self)
    @cython.locals(mirrored=_Leg)
    cpdef void _result(self, _Job job)


@cython.locals(body=bytes)
cpdef bint _identical(_Job job, _Leg leg)
