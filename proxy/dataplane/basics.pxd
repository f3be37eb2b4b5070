# Static types for Cython (issue 29): see exchange.pxd. basics.py runs as it is without them.
cimport cython

cdef bint _COMPILED
cdef Py_ssize_t _MAX_CODED
cdef tuple _NAMES_BY_LEN, _CODES_BY_LEN
cdef unsigned long long _ID_MASK
cdef tuple _LOW_DIGITS
cdef unsigned long long _draw_state, _GOLDEN, _MIX1, _MIX2
cdef double _TWO_POW_M53


@cython.final
cdef class _RequestIds:
    cdef public bytes high
    cdef public unsigned long long n
    cdef public bytes prefix

    @cython.locals(n="unsigned long long", low=Py_ssize_t, out=bytes, p="char*")
    cpdef bytes next_b(self)


@cython.locals(start="char*", at="const void*")
cpdef Py_ssize_t find_byte(bytes data, int byte)
@cython.locals(n=Py_ssize_t, total="long long", c="unsigned char")
cpdef long long digits_value(bytes value)
cpdef int header_code(bytes name)
@cython.locals(k=Py_ssize_t, i=Py_ssize_t, c=char, q="const char*", end="const char*",
               names=bytes, codes=bytes)
cdef int code_at(const char* p, Py_ssize_t n) noexcept
cpdef double monotonic()
@cython.locals(z="unsigned long long")
cpdef double draw()
