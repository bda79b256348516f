"""Generated protobuf modules of Triton's ``inference`` gRPC package (``hack/gen-grpc.sh``; do not edit)."""
