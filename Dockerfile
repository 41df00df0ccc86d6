# GPU server: CUDA runtime, torch (CUDA build), onnxruntime-gpu and TensorRT (the `gpu` extra).
#   make docker   # -> rerankrt:gpu
#   docker run --gpus all -p 30000:30000 -v "$PWD/engines:/engines" rerankrt:gpu --model-path /engines/bge-reranker-v2-m3
# On start, `rerankrt serve` builds the TensorRT engine for the GPU it finds when the artifact has none
# (written into the mounted folder, so the next start reuses it).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/root/.cache/huggingface \
    PATH=/opt/venv/bin:$PATH \
    RERANKRT_HOST=0.0.0.0 \
    RERANKRT_PORT=30000 \
    RERANKRT_MODEL_PATH=/engines/model

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# onnxruntime-gpu and the CPU onnxruntime share the `onnxruntime` module: keep only the GPU build.
# (DL3013: ".[gpu]" is this project, whose pyproject.toml pins every dependency.)
# EXTRAS=gpu,ray adds Ray Serve (`make docker-ray`: the image KubeRay runs, deploy/kuberay/).
ARG EXTRAS=gpu
# hadolint ignore=DL3013
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir ".[${EXTRAS}]" \
    && pip uninstall -y onnxruntime onnxruntime-gpu \
    && pip install --no-cache-dir --no-deps onnxruntime-gpu==1.31.1

VOLUME ["/engines"]
EXPOSE 30000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:30000/health')"]
# the model comes from RERANKRT_MODEL_PATH or a --model-path flag after the image name (a flag wins)
ENTRYPOINT ["rerankrt", "serve"]
