"""HTTPS for the binding tests: private certificate authorities made with the `openssl`
command, each with a certificate for 127.0.0.1 that `lockstep serve --tls-cert/--tls-key`
serves itself.

As a program (for the PHP tests): `python3 pki.py DIR NAME...` makes DIR/NAME-ca.pem,
DIR/NAME-server.pem and DIR/NAME-server.key for each NAME."""

import os
import subprocess
import sys


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


if __name__ == "__main__":
    for authority in sys.argv[2:]:
        make_ca(sys.argv[1], authority)
