# Tuneboard image for the web server and the CPU worker (the GPU worker builds FROM a CUDA PyTorch image below).
# g++ and cmake: `make install` builds llama-cpp-python (the GGUF export's quantization) from its sdist.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ cmake postgresql-client redis-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile ./
COPY dashboard/__init__.py dashboard/__init__.py
COPY training/__init__.py training/__init__.py
COPY guidance/__init__.py guidance/__init__.py
# The CPU torch wheel (pip's default index serves the CUDA build on Linux).
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
RUN make install VENV=/app/.venv
ENV PATH=/app/.venv/bin:$PATH TUNEBOARD_VAR_DIR=/data
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "dashboard.asgi:application"]
