"""A real gRPC health server (grpcio) for the gRPC probe tests.

Usage: grpc_health_server.py PORT_FILE NOT_SERVING_FLAG
Listens on 127.0.0.1 (a free port, written to PORT_FILE). The services "" and "tinylet.test"
are SERVING while NOT_SERVING_FLAG does not exist, NOT_SERVING while it does.
"""
import os
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

port_file, flag = sys.argv[1], sys.argv[2]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
os.rename(port_file + ".tmp", port_file)
while True:
    status = (health_pb2.HealthCheckResponse.NOT_SERVING if os.path.exists(flag)
              else health_pb2.HealthCheckResponse.SERVING)
    for service in ("", "tinylet.test"):
        servicer.set(service, status)
    time.sleep(0.1)
