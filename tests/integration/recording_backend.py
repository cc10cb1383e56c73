"""A backend that records the exact bytes it receives (for the smuggling corpus).

It runs in the test process (a thread per connection). Every byte read from any connection is
appended to one log; ``received()`` returns it. Requests are delimited with h11 (the oracle), and
each complete one is answered ``200`` with body ``ok``; input h11 rejects is answered 400 and the
connection closed (still recorded: the test then sees what the proxy let through).
"""
import socket
import threading

import h11

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class RecordingBackend:
    def __init__(self, host="127.0.0.1"):
        self.host = host
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.log = bytearray()
        self.connections = 0
        self.requests = 0
        self.h11_errors = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def reset(self):
        with self.lock:
            self.log = bytearray()
            self.connections = 0
            self.requests = 0
            self.h11_errors = 0

    def received(self):
        with self.lock:
            return bytes(self.log)

    def stats(self):
        with self.lock:
            return {"connections": self.connections, "requests": self.requests,
                    "bytes": len(self.log), "h11_errors": self.h11_errors}

    def stop(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                data = c.recv(65536)
                with self.lock:
                    self.log += data
                conn.receive_data(data)
                if not data:
                    return
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        break
                    if isinstance(ev, h11.EndOfMessage):
                        with self.lock:
                            self.requests += 1
                        c.sendall(OK)
                        conn = h11.Connection(h11.SERVER)
                        # bytes already buffered for a pipelined request are not expected here
                        break
                    if isinstance(ev, h11.ConnectionClosed):
                        return
        except h11.RemoteProtocolError:
            with self.lock:
                self.h11_errors += 1
            try:
                c.sendall(BAD)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            c.close()
