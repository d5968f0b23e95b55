"""Triton's gRPC service (``inference.GRPCInferenceService``) over ``grpc.aio``."""
