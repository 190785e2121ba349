# A stand-in for python:3.11-slim-bookworm, for machines that reach no image registry (scripts/compose_e2e.sh
# builds it FROM a debootstrap'd Debian bookworm, tagged phasetune-standin/debian:bookworm). Debian's own
# Python 3.11 in a virtual environment on PATH, so that `python` and `pip` are what the official image offers
# (Debian's system Python refuses `pip install` outside a venv, PEP 668).
FROM phasetune-standin/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH \
    LANG=C.UTF-8
CMD ["python3"]
