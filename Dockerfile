# syntax=docker/dockerfile:1
# CPU image by default; the CUDA variant: docker build --build-arg VARIANT=cuda -t xaas:cuda .
ARG PYTHON_VERSION=3.11
ARG VARIANT=cpu
# Optional extras, e.g. --build-arg EXTRAS=ray for the Ray Serve image (deploy/ray/rayservice.yaml)
ARG EXTRAS=

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt pyproject.toml README.md ./
COPY service ./service
# The CPU variant takes torch/torchvision from PyTorch's CPU index (no CUDA libraries: ~5x smaller image);
# the CUDA variant takes the pinned PyPI builds from constraints.txt.
RUN if [ "$VARIANT" = "cpu" ]; then \
      grep -vE '^(torch|torchvision|nvidia-|triton|cuda-)' constraints.txt > /tmp/constraints.txt && \
      pip install --index-url https://download.pytorch.org/whl/cpu "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)" \
                  "torchvision==$(grep '^torchvision==' constraints.txt | cut -d= -f3)" && \
      pip install -c /tmp/constraints.txt ".${EXTRAS:+[$EXTRAS]}" ; \
    else \
      pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" ; \
    fi

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 XAAS_HOST=0.0.0.0 XAAS_PORT=8000
RUN useradd --create-home --uid 10001 xaas
COPY --from=build /opt/venv /opt/venv
USER xaas
WORKDIR /home/xaas
EXPOSE 8000
# Mount your own registry (models.yaml + weights) at /models and set XAAS_MODELS=/models/models.yaml.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["xaas", "serve"]
