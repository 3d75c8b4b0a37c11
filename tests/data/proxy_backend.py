"""A backend for the proxy tests (run inside a pod network namespace): on TCP it greets each
connection with its name and a newline, then echoes until the client half-closes, then closes;
on UDP it answers each datagram with `<name>:<datagram>`."""

import socket
import sys
import threading

name, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def echo(conn):
    with conn:
        conn.sendall((name + "\n").encode())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def serve_tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", tcp_port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve_udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", udp_port))
    while True:
        data, peer = u.recvfrom(65536)
        u.sendto(name.encode() + b":" + data, peer)


threading.Thread(target=serve_udp, daemon=True).start()
serve_tcp()
