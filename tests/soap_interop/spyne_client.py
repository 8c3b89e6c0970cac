"""A spyne SOAP client for tests/soap_interop.rs: calls the project's
SoapServerLayer with a WS-Security UsernameToken (PasswordDigest) and reports
what spyne decoded, one JSON object per line.

Usage: spyne_client.py URL VERSION(11|12) USER PASSWORD

spyne has no WS-Security support: the UsernameToken header is a spyne model
filled here, its digest computed with hashlib as the UsernameToken Profile 1.0
says (Base64(SHA-1(nonce + created + password))). spyne's own HttpClient
posts with urllib's default `application/x-www-form-urlencoded`; this
transport sends the SOAP media type instead.
"""
import base64
import datetime
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request

from spyne import Application, ComplexModel, Fault, ServiceBase, Unicode, XmlAttribute, XmlData, rpc
from spyne.client import ClientBase, RemoteProcedureBase, RemoteService
from spyne.protocol.soap import Soap11, Soap12

TNS = "urn:tower-mesh:interop"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
DIGEST = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"


class Password(ComplexModel):
    __namespace__ = WSSE
    Type = XmlAttribute(Unicode)
    value = XmlData(Unicode)


class UsernameToken(ComplexModel):
    __namespace__ = WSSE
    _type_info = [("Username", Unicode), ("Password", Password), ("Nonce", Unicode), ("Created", Unicode)]


class Security(ComplexModel):
    __namespace__ = WSSE
    _type_info = [("UsernameToken", UsernameToken)]


class Remote(ServiceBase):
    """The operations of the Rust server, as spyne sees them."""

    @rpc(_in_header=(Security,), _returns=Unicode)
    def whoami(ctx):
        pass

    @rpc(Unicode, _in_header=(Security,), _returns=Unicode)
    def fail(ctx, value):
        pass


class _Procedure(RemoteProcedureBase):
    def __call__(self, *args, **kwargs):
        self.ctx, = self.contexts
        self.get_out_object(self.ctx, args, kwargs)
        self.get_out_string(self.ctx)
        data = b"".join(self.ctx.out_string)
        request = urllib.request.Request(self.url, data, {"Content-Type": CONTENT_TYPE})
        try:
            response = urllib.request.urlopen(request)
            status, self.ctx.in_string = response.status, [response.read()]
        except urllib.error.HTTPError as e:
            status, self.ctx.in_string = e.code, [e.read()]
        self.get_in_object(self.ctx)
        if self.ctx.in_error is not None:
            raise self.ctx.in_error
        return status, self.ctx.in_object


class Client(ClientBase):
    def __init__(self, url, app):
        super().__init__(url, app)
        self.service = RemoteService(_Procedure, url, app)


def token(user, password, nonce=None, created=None):
    nonce = nonce or os.urandom(16)
    created = created or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return Security(UsernameToken=UsernameToken(
        Username=user,
        Password=Password(Type=DIGEST, value=digest),
        Nonce=base64.b64encode(nonce).decode(),
        Created=created,
    ))


def report(case, call):
    try:
        status, result = call()
        out = {"case": case, "status": status, "result": result}
    except Fault as f:
        detail = None
        if f.detail is not None and len(f.detail):
            el = f.detail[0]
            detail = {"tag": el.tag, "children": {c.tag: c.text for c in el}}
        out = {"case": case, "faultcode": f.faultcode, "faultstring": f.faultstring, "detail": detail}
    print(json.dumps(out), flush=True)


CONTENT_TYPE = "text/xml; charset=utf-8"


def main():
    global CONTENT_TYPE
    url, version, user, password = sys.argv[1:5]
    protocol = Soap12 if version == "12" else Soap11
    CONTENT_TYPE = "application/soap+xml; charset=utf-8" if version == "12" else "text/xml; charset=utf-8"
    app = Application([Remote], tns=TNS, in_protocol=protocol(), out_protocol=protocol())
    client = Client(url, app)

    good = token(user, password)
    client.set_options(out_header=good)
    report("digest", lambda: client.service.whoami())
    # The very same token again: a replay.
    report("replay", lambda: client.service.whoami())
    client.set_options(out_header=token(user, password + "x"))
    report("wrong_password", lambda: client.service.whoami())
    client.set_options(out_header=token(user, password))
    report("fault_detail", lambda: client.service.fail("x"))


if __name__ == "__main__":
    main()
