"""tritium's own gRPC-over-HTTP/2 server (``--grpc-transport=native``)."""
