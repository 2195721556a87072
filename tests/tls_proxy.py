"""A TLS-terminating proxy in front of a Kafka broker, for tests/kafka_tls.rs:
the server side of the Kafka TLS test is OpenSSL (through Python's ssl
module), a TLS implementation Weir did not write.

    tls_proxy.py LISTEN_PORT UPSTREAM_PORT CERT KEY CLIENT_CA

Listens on 127.0.0.1:LISTEN_PORT with CERT/KEY, requires a client
certificate signed by CLIENT_CA (mutual TLS), and relays every connection's
bytes to 127.0.0.1:UPSTREAM_PORT (the broker, which advertises this proxy's
port, so every connection a client makes goes through here). Prints
`ready` once listening, then a line per handshake: `ok <client subject CN>`
or `refused <reason>`. A handshake has 10 s; the proxy runs until killed.
"""
import socket
import ssl
import sys
import threading


def log(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(conn, ctx, upstream):
    conn.settimeout(10)
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError) as e:
        log(f"refused {e}")
        conn.close()
        return
    cert = tls.getpeercert() or {}
    cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "?")
    log(f"ok {cn}")
    tls.settimeout(None)
    up = socket.create_connection(("127.0.0.1", upstream), timeout=10)
    up.settimeout(None)
    threading.Thread(target=pump, args=(up, tls), daemon=True).start()
    pump(tls, up)


def main():
    port, upstream, cert, key, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    log("ready")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, ctx, upstream), daemon=True).start()


if __name__ == "__main__":
    main()
