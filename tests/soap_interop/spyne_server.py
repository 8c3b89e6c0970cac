"""A SOAP 1.1 and a SOAP 1.2 server made with spyne, for tests/soap_interop.rs.

Listens on 127.0.0.1 (ephemeral ports), prints "<soap11 port> <soap12 port>"
on one line once ready, and serves until killed or stdin closes.
"""
import logging
import os
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from spyne import Application, Fault, Integer, Iterable, ServiceBase, Unicode, rpc
from spyne.protocol.soap import Soap11, Soap12
from spyne.server.wsgi import WsgiApplication

TNS = "urn:tower-mesh:calculator"
ERRORS = "urn:tower-mesh:errors"


class Calculator(ServiceBase):
    @rpc(Integer, Integer, _returns=Integer)
    def add(ctx, a, b):
        return a + b

    @rpc(Integer, Integer, _returns=Integer)
    def divide(ctx, a, b):
        if b == 0:
            raise Fault(faultcode="Client.DivideByZero", faultstring="division by zero")
        return a // b

    @rpc(Unicode, Integer, _returns=Iterable(Unicode))
    def say_hello(ctx, name, times):
        for _ in range(times):
            yield "Hello, %s" % name

    @rpc(_returns=Unicode)
    def crash(ctx):
        raise Fault(faultcode="Server", faultstring="backend unavailable")

    @rpc(Unicode, _returns=Unicode)
    def validate(ctx, value):
        # A client fault whose detail is an element in its own namespace.
        e = "{%s}" % ERRORS
        problem = {e + "problem": {e + "field": "value", e + "message": "must not be empty"}}
        raise Fault(faultcode="Client.Validation", faultstring="invalid input", detail=problem)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def serve(protocol):
    app = Application([Calculator], tns=TNS, in_protocol=protocol(validator="lxml"), out_protocol=protocol())
    server = make_server("127.0.0.1", 0, WsgiApplication(app), handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_port


def main():
    logging.basicConfig(level=logging.ERROR)
    # Faults are the expected answers here, not errors worth a traceback.
    # SPYNE_DEBUG=1 shows spyne's log, tracebacks included.
    logging.getLogger("spyne").setLevel(logging.DEBUG if os.environ.get("SPYNE_DEBUG") else logging.CRITICAL)
    ports = [serve(Soap11), serve(Soap12)]
    print("%d %d" % tuple(ports), flush=True)
    # Exit when the test closes our stdin (or kills us).
    sys.stdin.read()


if __name__ == "__main__":
    main()
