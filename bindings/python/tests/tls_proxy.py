"""HTTPS for the binding tests: a private certificate authority made with the `openssl`
command, and a TLS-terminating proxy (Python's ssl module) in front of a real data server.

As a program (for the PHP tests): `python3 tls_proxy.py DIR UPSTREAM_URL` makes DIR/ca.pem
and DIR/other-ca.pem, prints the proxy's https URL, and serves until killed."""

import os
import socket
import ssl
import subprocess
import sys
import threading


def _openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    """An authority `name` in `directory` and a certificate for 127.0.0.1 it signed; returns
    (ca_pem, cert_pem, key_pem)."""
    d = str(directory)
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    with open(os.path.join(d, f"{name}-ext.cnf"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(d, "req", "-x509", "-days", "2", "-subj", f"/CN={name} test CA",
             "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", *ec)
    _openssl(d, "req", "-subj", "/CN=127.0.0.1", "-keyout", f"{name}-server.key",
             "-out", f"{name}-server.csr", *ec)
    _openssl(d, "x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}-ca.pem",
             "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", f"{name}-ext.cnf", "-out", f"{name}-server.pem")
    return tuple(os.path.join(d, f) for f in (f"{name}-ca.pem", f"{name}-server.pem",
                                              f"{name}-server.key"))


class TlsProxy:
    """Terminates TLS with `cert`/`key` on 127.0.0.1 and forwards bytes to `upstream`."""

    def __init__(self, cert, key, upstream):
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "https://127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()  # the client refused our certificate
            return
        try:
            up = socket.create_connection(self._upstream)
        except OSError:
            tls.close()
            return

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(up, tls), daemon=True).start()
        pump(tls, up)

    def stop(self):
        self._listener.close()


if __name__ == "__main__":
    directory, upstream = sys.argv[1], sys.argv[2]
    ca, cert, key = make_ca(directory, "farm")
    make_ca(directory, "other")
    proxy = TlsProxy(cert, key, upstream)
    print(proxy.url, flush=True)
    threading.Event().wait()
