# Augmenting declarations for meshproxy/_core/http1conn.py (single source: meshproxy._py.http1conn
# is the same file uncompiled): the HTTP/1 codec as a final cdef class implementing stream.Codec.
cimport cython

from meshproxy._core.http1 cimport ChunkedFramer as CChunkedFramer
from meshproxy._core.http1 cimport RequestParser as CRequestParser
from meshproxy._core.http1 cimport ResponseParser as CResponseParser
from meshproxy._core.router cimport RequestView as CRequestView
from meshproxy._core.stream cimport Codec, ListenerContext, Stream
from meshproxy._core.pathnorm cimport needs_normalizing, normalize
from meshproxy._core.timers cimport Timer, TimerWheel

cdef int ST_HEAD, ST_BODY, ST_WAIT, ST_TUNNEL, ST_CLOSED
cdef int PAUSE_PIPELINE, PAUSE_WRITE
cdef int T_NONE, T_IDLE, T_HEAD, T_STREAM
cdef Py_ssize_t MAX_PIPELINED


@cython.final
cdef class Listener:
    cdef public ListenerContext ctx
    cdef public object loop
    cdef public set connections
    cdef public bint draining
    cdef public object server
    cdef public TimerWheel timers
    cdef public double head_timeout, idle_timeout, stream_idle_timeout
    cdef public Py_ssize_t buffer_limit, max_connections
    cdef public object tls_id


@cython.final
cdef class Http1Connection(Codec):
    cdef public Listener listener
    cdef public CRequestParser parser
    cdef public CRequestView view
    cdef public CChunkedFramer framer
    cdef public object transport
    cdef public object tx
    cdef public object buf
    cdef public Py_ssize_t pos
    cdef public int state
    cdef public int paused
    cdef public bint in_process, keep_alive
    cdef public long long req_remaining
    cdef public Stream stream
    cdef public object peer, sockname
    cdef public tuple addr_strs
    cdef public Timer timer
    cdef public int tkind

    cpdef _process(self)
    @cython.locals(state=int, pos=Py_ssize_t, end=Py_ssize_t, n=Py_ssize_t)
    cpdef _process_loop(self)
    @cython.locals(p=CRequestParser, listener=Listener, has_body=bint, s=Stream,
                   framer=CChunkedFramer, pre=bint, k=Py_ssize_t, pos=Py_ssize_t, mode=int,
                   path=bytes, norm=object)
    cpdef _on_head(self, Py_ssize_t n)
    @cython.locals(s=Stream, k=Py_ssize_t)
    cpdef _request_body(self, object buf, Py_ssize_t pos, Py_ssize_t end)
    @cython.locals(framer=CChunkedFramer, fwd=Py_ssize_t)
    cpdef _chunked_body(self, Stream s, object buf, Py_ssize_t pos, Py_ssize_t k)
    cpdef _close(self)
    cpdef _arm_head(self)
    cpdef _arm_stream(self)
    @cython.locals(timer=Timer)
    cpdef _touch(self)
    @cython.locals(timer=Timer, idle=double)
    cpdef _arm_idle(self)
    @cython.locals(kind=int, state=int, s=Stream)
    cpdef on_timer(self, double now)
