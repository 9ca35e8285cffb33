# qdl's image from binaries built on a Debian bookworm host: no Rust and no registry needed.
# scripts/docker-images makes the context (bin/ with the stripped qdl-frontend, qdl-accelerator
# and qdl-gpu-check; onnxruntime/lib/, empty or ONNX Runtime's library) and the base, which is
# docker/Dockerfile's `runtime-base` target (Debian, the libraries, the qdl user, the lab
# configs), built FROM the debootstrapped qdl-base:bookworm. With a registry, the same works
# from debian:bookworm-slim:
#   docker build -f docker/Dockerfile --target runtime-base -t qdl-runtime-base:bookworm CONTEXT
#   docker build -f docker/prebuilt.Dockerfile -t qdl:latest CONTEXT
ARG RUNTIME_BASE=qdl-runtime-base:bookworm
FROM ${RUNTIME_BASE}
COPY bin/ /usr/local/bin/
COPY onnxruntime/ /opt/onnxruntime/
